"""The workload the serving benchmarks share: everyday questions, random LoRAs for four
characters, and timing a reply as a person feels it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

QUESTIONS = [
    "Tell me about your day.",
    "What is the best way to learn to cook?",
    "Describe the sea at night.",
    "Why do cats purr?",
    "Give me three tips for a job interview.",
    "What would you pack for a trip to the mountains?",
    "Explain what a rainbow is.",
    "Write two lines about autumn.",
]


def make_loras(base_dir: str, root: Path, count: int, *, distinct: int) -> list[Path]:
    """``distinct`` random r=8 LoRAs (q,k,v,o), copied to ``count`` directories."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    made = []
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    peft_model = get_peft_model(base, config)
    for i in range(distinct):
        torch.manual_seed(i)
        with torch.no_grad():  # small random B: distinct LoRAs that keep the text sane
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.002)
        out = root / f"char{i}" / "v1"
        peft_model.save_pretrained(out)
        made.append(out)
    for i in range(distinct, count):
        out = root / f"char{i}" / "v1"
        shutil.copytree(made[i % distinct], out)
        made.append(out)
    return made


async def timed_reply(model, request) -> tuple[int, float, float]:
    """(completion tokens, time to first text, total seconds)."""
    start = time.perf_counter()
    first = None
    usage = None
    async for chunk in model.stream(request):
        if first is None and chunk.text:
            first = time.perf_counter() - start
        usage = chunk.usage or usage
    return usage.completion_tokens, first or 0.0, time.perf_counter() - start


async def one_stream(model, request, runs: int = 3) -> tuple[float, float, str]:
    """Best of ``runs``: (decode tok/s after the first token, time to first token, text)."""
    best = None
    for _ in range(runs):
        start, first, text = time.perf_counter(), None, ""
        async for chunk in model.stream(request):
            if first is None and chunk.text:
                first = time.perf_counter() - start
            text += chunk.text
            tokens = chunk.usage.completion_tokens if chunk.usage else 0
        total = time.perf_counter() - start
        rate = (tokens - 1) / (total - (first or 0.0))
        if best is None or rate > best[0]:
            best = (round(rate, 1), round(first or 0.0, 3), text)
    return best
