"""The 4-bit output layer with bf16 rescoring (engine/rescored_head.py):
how far its logits are from the bf16 layer's, and what it saves.

    .venv/bin/python -m engine.bench.int4_head [--states 320] [--threads 1]

Runs the default model over a fixed English text (teacher_text.txt) to collect real final hidden
states, then prints for the plain 4-bit layer: the largest logit error and the lowest
4-bit rank of the bf16 argmax; for the rescored layer: greedy agreement with bf16 and the
total-variation distance of the shipped sampling distribution (temperature 0.5, top-p 0.9)
from bf16's; and the time of each layer for one row.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A fixed English text to decode over: this project's README as it stood in 2026-12
# (kept as it was, so that the figures in docs/performance.md can be repeated exactly).
TEACHER_TEXT = Path(__file__).with_name("teacher_text.txt")


def sampling_distribution(logits, temperature: float = 0.5, top_p: float = 0.9):
    """The probabilities the scheduler samples from (top-p over softmax(logits / T))."""
    import torch

    probs = torch.softmax(logits / temperature, -1)
    ordered, order = probs.sort(descending=True)
    keep = ordered.cumsum(-1) - ordered < top_p
    out = torch.zeros_like(probs).scatter_(-1, order, ordered * keep)
    return out / out.sum(-1, keepdim=True)


def decode_windows(lean, ids: list[int]):
    """Teacher-forced decoding over ``ids`` in windows (60 prompt tokens, then 20 one-row
    decode steps); yields each decode step's logits."""
    import torch

    from engine.batch_cache import BatchKV
    from engine.multi_lora import MultiLora

    multi = MultiLora()
    for start in range(0, len(ids) - 79, 100):
        kv = BatchKV(len(lean.layers), 1, transformers=False)
        inputs, mask, positions = kv.prefill_inputs([ids[start : start + 60]], 0)
        lean.forward(inputs, mask, positions, kv, multi)
        for token in ids[start + 60 : start + 80]:
            mask, positions = kv.decode_inputs()
            yield lean.forward(torch.tensor([[token]]), mask, positions, kv, multi)


def collect_states(lean, ids: list[int], count: int):
    """Final normed hidden states ``[count, hidden]`` from decoding ``ids`` in windows."""
    import torch

    states = []
    original = lean._norm

    def norm(x, weight):  # the final norm is the one applied to the model's final weight
        out = original(x, weight)
        if weight is lean.final_norm.weight:
            states.append(out.clone())
        return out

    lean._norm = norm
    try:
        for _ in decode_windows(lean, ids):
            if len(states) >= count:
                break
    finally:
        lean._norm = original
    return torch.cat(states[:count])


def timed(fn, repeat: int = 200) -> float:
    for _ in range(10):
        fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", type=int, default=320, help="hidden states to compare")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    from tokenizers import Tokenizer

    from engine import int4
    from engine.loading import build_scheduler, load_standalone
    from engine.local_files import resolve_base
    from engine.rescored_head import rescored_head
    from engine.settings import EngineSettings

    torch.set_num_threads(args.threads)
    settings = EngineSettings(dtype="int4", threads=args.threads, cache_dir=ROOT / "data/models")
    source = resolve_base(settings.base, settings.cache_dir)
    loaded = load_standalone(source, settings)
    lean = build_scheduler(loaded, settings).lean
    tokenizer = Tokenizer.from_file(str(Path(source.path) / "tokenizer.json"))
    ids = tokenizer.encode(TEACHER_TEXT.read_text(encoding="utf-8")).ids
    with torch.no_grad():
        states = collect_states(lean, ids, args.states)
        errors, ranks, same, distances = [], [], 0, []
        for x in states.split(1):
            exact = F.linear(x, lean.head_weight).float()
            four = int4.linear(x, lean.head_int4).float()
            errors.append((exact - four).abs().max().item())
            order = four.argsort(-1, descending=True)[0]
            ranks.append(int((order == exact.argmax()).nonzero()))
            got = rescored_head(x, lean.head_int4, lean.head_weight)
            same += int(got.argmax() == exact.argmax())
            diff = sampling_distribution(exact) - sampling_distribution(got)
            distances.append(0.5 * diff.abs().sum().item())
        x = states[:1]
        bf16_ms = timed(lambda: lean.lm_head(x))
        rescored_ms = timed(lambda: rescored_head(x, lean.head_int4, lean.head_weight))
    count = len(errors)
    print(f"{count} hidden states of the default model, {args.threads} thread(s)")
    print(
        f"plain 4-bit layer: largest logit error {max(errors):.2f} "
        f"(mean of rows' largest {sum(errors) / count:.2f}); the bf16 argmax was at 4-bit "
        f"rank {max(ranks)} at worst (rescoring covers the top 64)"
    )
    print(
        f"rescored: greedy pick equal to bf16's in {same}/{count}; sampling distribution "
        f"(T 0.5, top-p 0.9) total-variation distance from bf16's: mean "
        f"{sum(distances) / count:.4f}, largest {max(distances):.4f}"
    )
    print(f"one row: bf16 layer {bf16_ms:.2f} ms, 4-bit + rescoring {rescored_ms:.2f} ms")


if __name__ == "__main__":
    main()
