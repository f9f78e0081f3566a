"""Quick decode-speed check through the real local backend (model process).

    PYTHONPATH=. .venv/bin/python benchmarks/decode_quick.py [--repeat 3]

Prints one-stream decode tok/s (best of N, 64 greedy tokens) and 16-row aggregate tok/s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.workload import QUESTIONS, timed_reply  # noqa: E402
from engine import EngineSettings, GenerationRequest, Sampling, create_model  # noqa: E402


async def run(args) -> None:
    settings = EngineSettings(
        cache_dir=ROOT / "data" / "models",
        max_batch_size=32,
        max_queue=256,
        threads=args.threads,
        dtype=args.dtype,
    )
    model = create_model(settings, progress=False, worker=args.worker)
    await model.start()
    greedy = Sampling(max_new_tokens=args.tokens, temperature=0)
    await timed_reply(model, GenerationRequest([{"role": "user", "content": "Hi"}], greedy))
    one = GenerationRequest([{"role": "user", "content": QUESTIONS[2]}], greedy)
    requests = [
        GenerationRequest([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], greedy)
        for i in range(16)
    ]
    for _ in range(args.repeat):
        runs = [await timed_reply(model, one) for _ in range(3)]
        tokens, ttft, total = min(runs, key=lambda r: r[2])
        one_tok_s = (tokens - 1) / (total - ttft)
        start = time.perf_counter()
        done = await asyncio.gather(*(timed_reply(model, r) for r in requests))
        agg = sum(t for t, _, _ in done) / (time.perf_counter() - start)
        sched = model.scheduler
        print(
            f"one stream {one_tok_s:.1f} tok/s   16 rows {agg:.1f} tok/s   "
            f"threads {sched.thread_count} (changed {sched.thread_changes}×)",
            flush=True,
        )
    await model.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--dtype", default="auto", help="[model] dtype")
    parser.add_argument("--threads", default="auto", help='[model] threads: "auto" or N')
    parser.add_argument("--worker", default="process", choices=["process", "thread"])
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
