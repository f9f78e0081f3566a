"""charbot's own CPU kernels (engine/native.py) against torch's, on the default model:
the matmuls of one decode step, and how far the logits move.

    .venv/bin/python -m engine.bench.kernel_speed [--threads 1] [--steps 200]

Speed: all of one decode step's matmuls (30 layers' q/k/v, o, gate/up, down and the
output layer; the real weights, which do not fit in cache) for 1 to 8 rows, in ms, best
of 5: torch's bf16 (oneDNN, prepacked) and 4-bit kernels, and charbot's bf16 and 4-bit;
the last three again with their weights on transparent huge pages, as loading places them
(engine/huge_pages.py; oneDNN's packed weights cannot be moved).

Quality: teacher-forced decoding over a fixed English text (engine/bench/teacher_text.txt;
windows of 60 prompt tokens, then 20 one-row decode steps), each way of computing against
plain bf16: how often
the greedy pick is the same, the largest and mean logit difference, and the
total-variation distance of the shipped sampling distribution (temperature 0.5, top-p 0.9).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from engine.bench.int4_head import TEACHER_TEXT, decode_windows, sampling_distribution

ROOT = Path(__file__).resolve().parents[2]

ROWS = (1, 2, 3, 4, 6, 8)


def load_default():
    """The default model in bf16 on charbot's own loader, not yet fused or packed."""
    import torch

    from engine import standalone
    from engine.local_files import resolve_base
    from engine.settings import EngineSettings

    settings = EngineSettings(cache_dir=ROOT / "data/models")
    source = resolve_base(settings.base, settings.cache_dir)
    directory = standalone.find_checkpoint(source.path)
    config = json.loads((directory / "config.json").read_text())
    return standalone.load(directory, config, torch.bfloat16), source


def step_matmuls(model, kernels) -> dict[str, dict[int, float]]:
    """ms for one step's matmuls, per way and row count."""
    import torch

    from engine import huge_pages, int4, native

    weights = []
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        weights += [
            torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
            attn.o_proj.weight,
            torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
            mlp.down_proj.weight,
        ]
    weights.append(model.lm_head.weight)
    weights = [w.detach() for w in weights]
    ways = {
        "torch bf16": [torch.ops.mkldnn._reorder_linear_weight(w, 16) for w in weights],
        "torch 4-bit": [int4.quantize(w) for w in weights],
    }
    if kernels is not None:
        ways["charbot bf16"] = [native.block_bf16(w, kernels) for w in weights]
        ways["charbot 4-bit"] = [int4.quantize(w, kernels) for w in weights]
    if huge_pages.available():  # the same copies again, moved as loading moves them
        for name in [name for name in ways if name != "torch bf16"]:
            copies = [_copy(copy) for copy in ways[name]]
            huge_pages.settle(t for copy in copies for t in copy.tensors)
            ways[f"{name}, huge pages"] = copies
    inputs = {size: {} for size in {w.shape[1] for w in weights}}
    result: dict[str, dict[int, float]] = {name: {} for name in ways}
    for rows in ROWS:
        xs = {size: torch.randn(rows, size).to(torch.bfloat16) for size in inputs}
        for name, copies in ways.items():

            def run(name=name, copies=copies, xs=xs):
                for weight, copy in zip(weights, copies, strict=True):
                    x = xs[weight.shape[1]]
                    if name == "torch bf16":
                        torch.ops.mkldnn._linear_pointwise(x, copy, None, "none", [], "")
                    elif "4-bit" in name:
                        int4.linear(x, copy)
                    else:
                        copy.linear(x)

            run()
            best = float("inf")
            for _ in range(5):
                start = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - start)
            result[name][rows] = best * 1000
    return result


def _copy(copy):
    """``copy`` (a 4-bit or blocked weight) with tensors of its own."""
    import dataclasses

    import torch

    values = {f.name: getattr(copy, f.name) for f in dataclasses.fields(copy)}
    clones = {name: v.clone() for name, v in values.items() if isinstance(v, torch.Tensor)}
    return dataclasses.replace(copy, **clones)


def teacher_forced(model, ids: list[int], steps: int, **build) -> torch.Tensor:
    """float32 logits of ``steps`` one-row decode steps over ``ids`` on a lean path built
    with ``build``."""
    import itertools

    import torch

    from engine.lean_llama import LeanLlama

    lean = LeanLlama.build(model, **build)
    return torch.cat(list(itertools.islice(decode_windows(lean, ids), steps)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200, help="decode steps to compare")
    args = parser.parse_args()

    import torch
    from tokenizers import Tokenizer

    from engine import int4, native

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    kernels = native.load(ROOT / "data/models")
    if kernels is None:
        print("charbot's kernels cannot be built here (see the log line): torch's only")
    model, source = load_default()
    print(f"one decode step's matmuls, ms ({args.threads} thread(s), best of 5):")
    timings = step_matmuls(model, kernels)
    print(f"{'rows':>26} " + " ".join(f"{rows:>6}" for rows in ROWS))
    for name, row in timings.items():
        print(f"{name:>26} " + " ".join(f"{row[rows]:6.1f}" for rows in ROWS))

    tokenizer = Tokenizer.from_file(str(Path(source.path) / "tokenizer.json"))
    ids = tokenizer.encode(TEACHER_TEXT.read_text(encoding="utf-8")).ids
    ways = {"torch 4-bit": dict(int4=True, quantize=lambda name, w: int4.quantize(w))}
    if kernels is not None:
        ways["charbot bf16"] = dict(kernels=kernels)
        ways["charbot 4-bit"] = dict(
            int4=True, quantize=lambda name, w: int4.quantize(w, kernels), kernels=kernels
        )
    exact = teacher_forced(model, ids, args.steps)
    print(f"\n{len(exact)} teacher-forced decode steps against plain bf16:")
    for name, build in ways.items():
        got = teacher_forced(model, ids, args.steps, **build)
        same = int((got.argmax(-1) == exact.argmax(-1)).sum())
        diff = (got - exact).abs()
        distance = 0.5 * (sampling_distribution(got) - sampling_distribution(exact)).abs().sum(-1)
        print(
            f"{name:>14}: greedy pick the same {same}/{len(exact)}; logits off by "
            f"{diff.max():.2f} at most, {diff.mean():.3f} on average; sampling distribution "
            f"TV distance mean {distance.mean():.4f}, largest {distance.max():.4f}"
        )


if __name__ == "__main__":
    main()
