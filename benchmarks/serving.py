"""Serving benchmark for the local backend on the default model.

    .venv/bin/python benchmarks/serving.py --json serving.json

Measures, in one run: one-stream decode speed and time to first token (without an adapter
on the fresh model, with 100 adapters loaded for others, after unloading them — the reply
must be identical in all three — and with an adapter); the memory-bandwidth
limit (the bytes one one-row step reads — the 4-bit copies with the default dtype — ÷ the
measured read bandwidth of a plain buffer); aggregate throughput and latency for 1, 4,
16, 32 concurrent conversations over 4 characters with distinct LoRA adapters, against the
same requests served one at a time; resident memory with 0, 1, 20, 100 adapters (r=8 on
q,k,v,o); cold start to first token (first with conversion, then cached) in fresh processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.workload import QUESTIONS, make_loras, one_stream, timed_reply  # noqa: E402
from engine import EngineSettings, GenerationRequest, LoraSpec, Sampling, create_model  # noqa: E402

COLD_START = """
import asyncio, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
from pathlib import Path
from engine import EngineSettings, GenerationRequest, Sampling, create_model
async def main():
    m = create_model(EngineSettings(cache_dir=Path({cache!r})), progress=False)
    await m.start()
    async for _ in m.stream(GenerationRequest([{{"role": "user", "content": "Hi"}}],
                                              Sampling(1, 0))):
        break
    print(time.perf_counter() - t0)
    await m.close()
asyncio.run(main())
"""


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of ``pid`` (the model process) or of this process."""
    for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def read_bandwidth_gbs() -> float:
    """Best-of-5 sum over a 512 MB buffer: the rate weights can be streamed from memory."""
    import torch

    buf = torch.ones(128 * 1024 * 1024, dtype=torch.float32)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - start)
    return buf.numel() * 4 / best / 1e9


def cold_start(cache: Path) -> float:
    code = COLD_START.format(root=str(ROOT), cache=str(cache))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return float(out.strip().splitlines()[-1])


async def run(args) -> dict:
    result: dict = {"load_average": os.getloadavg()[0]}
    tmp = Path(tempfile.mkdtemp(prefix="charbot-bench-"))
    try:
        if not args.skip_cold:
            first = cold_start(tmp / "models")
            cached = cold_start(tmp / "models")
            result["cold_start_s"] = {"first": round(first, 2), "cached": round(cached, 2)}
            print(f"cold start: first {first:.1f}s (converting), cached {cached:.1f}s")

        settings = EngineSettings(
            cache_dir=ROOT / "data" / "models",
            dtype=args.dtype,
            max_batch_size=32,
            max_queue=256,
        )
        model = create_model(settings, progress=False, worker=args.worker)
        await model.start()

        result["dtype"] = str(model.dtype).removeprefix("torch.")
        greedy = Sampling(max_new_tokens=args.tokens, temperature=0)
        await timed_reply(model, GenerationRequest([{"role": "user", "content": "Hi"}], greedy))
        one = GenerationRequest([{"role": "user", "content": QUESTIONS[2]}], greedy)
        # One stream without an adapter, measured in three states of the same model: a base
        # row must neither slow down nor change once LoRAs were loaded for others.
        base_runs = {"fresh": await one_stream(model, one)}
        model_pid = getattr(model.scheduler, "pid", None)
        rss_base = rss_mb(model_pid)
        # Memory first, on the fresh model: later batches leave KV-cache pages behind.
        many = make_loras(model.source_path, tmp / "many", 100, distinct=1)
        result["rss_mb"] = {"0": round(rss_base)}
        loaded = 0
        for target in (1, 20, 100):
            for path in many[loaded:target]:
                await model.load_lora(path.parent.name, str(path))
            loaded = target
            result["rss_mb"][str(target)] = round(rss_mb(model_pid))
        if model_pid is not None:
            result["parent_rss_mb"] = round(rss_mb())  # tokenizer side of the bot
        print("rss:", result["rss_mb"])
        base_runs["100 adapters loaded"] = await one_stream(model, one)
        for path in many:
            await model.unload_lora(path.parent.name)
        base_runs["after unloading"] = await one_stream(model, one)

        bandwidth = read_bandwidth_gbs()
        result["weight_mb"] = round(model.weight_bytes / 1e6)
        result["step_mb"] = round(model.step_bytes / 1e6)  # what one one-row step reads
        result["read_bandwidth_gbs"] = round(bandwidth, 1)
        result["bandwidth_limit_tok_s"] = round(bandwidth * 1e9 / model.step_bytes, 1)

        result["one_stream_no_adapter"] = {
            state: {"tok_s": tok_s, "ttft_s": ttft} for state, (tok_s, ttft, _) in base_runs.items()
        }
        texts = {text for _, _, text in base_runs.values()}
        result["base_reply_identical"] = len(texts) == 1
        result["one_stream_tok_s"], result["one_stream_ttft_s"], _ = base_runs["fresh"]
        for state, (tok_s, ttft, _) in base_runs.items():
            print(
                f"one stream, no adapter, {state}: {tok_s} tok/s decode, ttft {ttft * 1e3:.0f} ms"
            )
        print(f"base reply identical in every state: {result['base_reply_identical']}")

        adapters = make_loras(model.source_path, tmp, 4, distinct=4)
        spec = LoraSpec("char0", str(adapters[0]))
        one_lora = GenerationRequest(one.messages, greedy, spec)
        result["one_stream_adapter_tok_s"], _, _ = await one_stream(model, one_lora)
        print(f"one stream with an adapter: {result['one_stream_adapter_tok_s']} tok/s")
        requests = [
            GenerationRequest(
                [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                greedy,
                LoraSpec(f"char{i % 4}", str(adapters[i % 4])),
            )
            for i in range(max(args.concurrency))
        ]
        for spec_path in adapters:  # loaded up front: the benchmark is about serving
            await model.load_lora(spec_path.parent.name, str(spec_path))
        sequential = [await timed_reply(model, r) for r in requests]
        result["concurrency"] = []
        for n in args.concurrency:
            start = time.perf_counter()
            done = await asyncio.gather(*(timed_reply(model, r) for r in requests[:n]))
            wall = time.perf_counter() - start
            seq_tokens = sum(t for t, _, _ in sequential[:n])
            seq_time = sum(s for _, _, s in sequential[:n])
            latencies = sorted(s for _, _, s in done)
            row = {
                "conversations": n,
                "aggregate_tok_s": round(sum(t for t, _, _ in done) / wall, 1),
                "sequential_tok_s": round(seq_tokens / seq_time, 1),
                "p50_s": round(statistics.median(latencies), 2),
                "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2),
            }
            result["concurrency"].append(row)
            print(row)

        for spec_path in adapters:
            await model.unload_lora(spec_path.parent.name)
        await model.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def print_table(result: dict) -> None:
    print("\n| metric | value |\n|---|---|")
    keys = ("dtype", "one_stream_tok_s", "one_stream_adapter_tok_s", "one_stream_ttft_s")
    for key in (*keys, "base_reply_identical", "bandwidth_limit_tok_s", "parent_rss_mb"):
        print(f"| {key} | {result.get(key)} |")
    for key in ("one_stream_no_adapter", "cold_start_s", "rss_mb"):
        if key in result:
            print(f"| {key} | {json.dumps(result[key])} |")
    print("\n| conversations | aggregate tok/s | one-at-a-time tok/s | speed-up | p50 s | p95 s |")
    print("|---|---|---|---|---|---|")
    for row in result.get("concurrency", []):
        speedup = row["aggregate_tok_s"] / row["sequential_tok_s"]
        print(
            f"| {row['conversations']} | {row['aggregate_tok_s']} | {row['sequential_tok_s']} "
            f"| {speedup:.1f}× | {row['p50_s']} | {row['p95_s']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per reply")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--worker", default="process", choices=["process", "thread"])
    parser.add_argument("--skip-cold", action="store_true", help="skip the cold-start runs")
    # The same workload against an OpenAI-compatible server: see benchmarks/serving_openai.py.
    parser.add_argument("--backend", default="local", choices=["local", "openai"])
    parser.add_argument("--base-url", help="openai: the server's API root, e.g. .../v1")
    parser.add_argument("--model", default="smollm2", help="openai: the served base model")
    parser.add_argument(
        "--loras", default="0,1,2,3", help="openai: 4 LoRA module names, or llama-server ids"
    )
    parser.add_argument("--llama-server", help="openai: start this llama-server binary")
    parser.add_argument("--threads", type=int, default=1, help="openai: llama-server threads")
    args = parser.parse_args()
    if args.backend == "openai":
        from benchmarks.serving_openai import run_openai

        result = asyncio.run(run_openai(args))
    else:
        result = asyncio.run(run(args))
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
