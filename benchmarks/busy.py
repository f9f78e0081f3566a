"""Decode speed on a quiet and on a busy machine, for each thread policy.

    .venv/bin/python benchmarks/busy.py [--policies auto 1 2] [--json busy.json]

For each ``[model] threads`` value: start the model (process worker, default model), then
measure one stream (64 greedy tokens, best of 3) and 16 concurrent conversations, first
with nothing else running, then with one competing CPU-bound process (a Python busy loop at
normal priority) started on the same cores. Prints tok/s and busy ÷ quiet for each policy,
and the thread count auto mode chose. Run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.workload import QUESTIONS, timed_reply  # noqa: E402
from engine import EngineSettings, GenerationRequest, Sampling, create_model  # noqa: E402

HOG = "while True: pass"


async def measure(model, tokens: int) -> dict:
    greedy = Sampling(max_new_tokens=tokens, temperature=0)
    one = GenerationRequest([{"role": "user", "content": QUESTIONS[2]}], greedy)
    runs = [await timed_reply(model, one) for _ in range(3)]
    count, ttft, total = min(runs, key=lambda r: r[2])
    one_tok_s = (count - 1) / (total - ttft)
    requests = [
        GenerationRequest([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], greedy)
        for i in range(16)
    ]
    start = time.perf_counter()
    done = await asyncio.gather(*(timed_reply(model, r) for r in requests))
    rows_tok_s = sum(t for t, _, _ in done) / (time.perf_counter() - start)
    return {
        "one_stream_tok_s": round(one_tok_s, 1),
        "16_chats_tok_s": round(rows_tok_s, 1),
        "threads": model.scheduler.thread_count,
    }


async def run_policy(policy: str, tokens: int) -> dict:
    settings = EngineSettings(
        cache_dir=ROOT / "data" / "models", max_batch_size=32, max_queue=256, threads=policy
    )
    model = create_model(settings, progress=False)
    await model.start()
    try:
        warm = GenerationRequest([{"role": "user", "content": "Hi"}], Sampling(8, 0))
        await timed_reply(model, warm)
        quiet = await measure(model, tokens)
        hog = subprocess.Popen([sys.executable, "-c", HOG])
        try:
            await asyncio.sleep(1.5)  # long enough for auto mode to have seen it
            busy = await measure(model, tokens)
        finally:
            hog.kill()
            hog.wait()
        return {"quiet": quiet, "busy": busy, "changes": model.scheduler.thread_changes}
    finally:
        await model.close()


async def run(args) -> dict:
    result = {"load_average_before": os.getloadavg()[0], "cores": os.cpu_count(), "policies": {}}
    for policy in args.policies:
        value = int(policy) if policy.isdigit() else policy
        row = await run_policy(value, args.tokens)
        result["policies"][policy] = row
        print(policy, json.dumps(row), flush=True)
    return result


def print_table(result: dict) -> None:
    print(
        "\n| threads | quiet: one stream | busy: one stream | busy ÷ quiet "
        "| quiet: 16 chats | busy: 16 chats | busy ÷ quiet | threads chosen (quiet / busy) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for policy, row in result["policies"].items():
        q, b = row["quiet"], row["busy"]
        one = b["one_stream_tok_s"] / q["one_stream_tok_s"]
        many = b["16_chats_tok_s"] / q["16_chats_tok_s"]
        print(
            f"| {policy} | {q['one_stream_tok_s']} | {b['one_stream_tok_s']} | {one:.0%} "
            f"| {q['16_chats_tok_s']} | {b['16_chats_tok_s']} | {many:.0%} "
            f"| {q['threads']} / {b['threads']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", nargs="+", default=["auto", "1", str(os.cpu_count())])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per reply")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
