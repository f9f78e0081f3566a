"""The serving workload of benchmarks/serving.py against an OpenAI-compatible server.

    # a server you started (vLLM: LoRA modules char0..char3; llama-server: adapter ids 0..3)
    .venv/bin/python benchmarks/serving.py --backend openai --base-url http://127.0.0.1:8000/v1 \
        --model smollm2 --loras char0,char1,char2,char3
    .venv/bin/python benchmarks/serving.py --backend openai --base-url ... --loras 0,1,2,3
    # or let the benchmark start llama-server with the same four adapters as the local run
    .venv/bin/python benchmarks/serving.py --backend openai --llama-server PATH --threads 1

The same requests as the local engine's run: one stream (greedy, ``--tokens`` new tokens)
without and with an adapter, then 1/4/16/32 conversations over 4 characters, each with its
own LoRA, against the same requests one at a time.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.workload import QUESTIONS, make_loras, one_stream, timed_reply  # noqa: E402
from engine import (  # noqa: E402  # noqa: E402
    EngineSettings,
    GenerationRequest,
    Sampling,
    ServedLora,
    bundled_base,
    bundled_gguf,
    create_model,
    lora_to_gguf,
)


def served_loras(loras: list[str]) -> list[ServedLora]:
    """char0..charN, each on its LoRA: an integer is a llama-server adapter id, else a
    served model name (a vLLM LoRA module)."""
    return [
        ServedLora(f"char{i}", server_id=int(lora))
        if lora.isdigit()
        else ServedLora(f"char{i}", model=lora)
        for i, lora in enumerate(loras)
    ]


def server_settings(base_url: str, model: str) -> EngineSettings:
    """The openai backend on ``base_url``, with room for every benchmark request at once."""
    return EngineSettings(
        backend="openai",
        base_url=base_url,
        model=model,
        timeout_s=300.0,
        max_concurrency=64,
        max_queue=256,
    )


def start_llama_server(binary: str, threads: int, root: Path, gguf: Path | None = None):  # type: ignore[no-untyped-def]
    """llama-server on ``gguf`` (default: the bundled one) with the local run's four
    adapters, converted."""
    from tests.llama_server import LlamaServer

    base_dir = bundled_base(ROOT / "data" / "models")
    files = []
    for path in make_loras(str(base_dir), root, 4, distinct=4):
        files.append(root / f"{path.parent.name}.gguf")
        lora_to_gguf(path, base_dir, files[-1])
    log = root / "server.log"
    server = LlamaServer(Path(binary), gguf or bundled_gguf(), files, log, parallel=32)
    server.threads = threads
    server.start()
    print(f"llama-server healthy {server.started_in:.1f} s after start")
    return server


async def run_openai(args) -> dict:  # type: ignore[no-untyped-def]
    tmp = Path(tempfile.mkdtemp(prefix="charbot-bench-openai-"))
    server = None
    try:
        base_url, loras = args.base_url, args.loras.split(",")
        if args.llama_server:
            server = start_llama_server(args.llama_server, args.threads, tmp)
            base_url, loras = server.base_url, ["0", "1", "2", "3"]
        if not base_url:
            raise SystemExit("--backend openai needs --base-url URL or --llama-server BINARY")
        # Other work on the same cores moves every figure: the load is recorded with them.
        result: dict = {
            "backend": "openai",
            "base_url": base_url,
            "load_average": os.getloadavg()[0],
        }
        if server is not None:
            result["server_start_s"] = round(server.started_in, 2)
        model = create_model(server_settings(base_url, args.model), served=served_loras(loras))
        await model.start()
        greedy = Sampling(max_new_tokens=args.tokens, temperature=0, repetition_penalty=1.0)
        warm = GenerationRequest([{"role": "user", "content": "Hi"}], greedy)
        await timed_reply(model, warm)
        one = [{"role": "user", "content": QUESTIONS[2]}]
        rate, ttft, _ = await one_stream(model, GenerationRequest(one, greedy))
        result["one_stream_tok_s"], result["one_stream_ttft_s"] = rate, ttft
        adapter = GenerationRequest(one, greedy, lora_name="char0")
        result["one_stream_adapter_tok_s"], _, _ = await one_stream(model, adapter)
        print(
            f"one stream: {rate} tok/s, ttft {ttft * 1e3:.0f} ms; with an adapter: "
            f"{result['one_stream_adapter_tok_s']} tok/s"
        )
        requests = [
            GenerationRequest(
                [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                greedy,
                lora_name=f"char{i % len(loras)}",
            )
            for i in range(max(args.concurrency))
        ]
        sequential = [await timed_reply(model, r) for r in requests]
        result["concurrency"] = []
        for n in args.concurrency:
            start = time.perf_counter()
            done = await asyncio.gather(*(timed_reply(model, r) for r in requests[:n]))
            wall = time.perf_counter() - start
            latencies = sorted(s for _, _, s in done)
            row = {
                "conversations": n,
                "aggregate_tok_s": round(sum(t for t, _, _ in done) / wall, 1),
                "sequential_tok_s": round(
                    sum(t for t, _, _ in sequential[:n]) / sum(s for _, _, s in sequential[:n]),
                    1,
                ),
                "p50_s": round(statistics.median(latencies), 2),
                "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2),
            }
            result["concurrency"].append(row)
            print(row)
        result["load_average_after"] = os.getloadavg()[0]
        print(
            f"load average: {result['load_average']:.1f} before, "
            f"{result['load_average_after']:.1f} after"
        )
        await model.close()
    finally:
        if server is not None:
            server.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return result
