"""Training speed of `charbot train` on the default model, against a bare PyTorch loop.

    nice -n 10 .venv/bin/python benchmarks/training_speed.py [--rounds 3] [--full] [--json out.json]

The same LoRA (the configured [training] defaults: r=16, all linear layers, batch 4) and
the same batches — the ones TRL's own data loader makes from prompt–completion records —
are trained alternately by TRL's SFTTrainer, as `charbot train` runs it (checkpoint per
epoch included), and by a bare forward + backward + AdamW step loop with the same
autocast, round after round, so both see the same machine load. Tokens are the batches'
non-padding tokens. Target: TRL ≥ 80% of the bare loop's tokens/s. Then the time for 500
pairs × 3 epochs: estimated from the measured step time, or measured with --full.
Target < 15 minutes here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import loop_persona as persona  # noqa: E402
from bot.config import ModelSettings, TrainingSettings  # noqa: E402


def records(count: int) -> list[dict]:  # type: ignore[type-arg]
    pairs = persona.CORRECTED + persona.HELDOUT
    system = persona.SYSTEM_PROMPT.replace("{{user}}", "Alex")
    return [
        {
            "prompt": [
                {"role": "system", "content": f"{system}\n{persona.DESCRIPTION}"},
                {"role": "user", "content": pairs[i % len(pairs)][0]},
            ],
            "completion": [{"role": "assistant", "content": pairs[i % len(pairs)][1]}],
        }
        for i in range(count)
    ]


def main() -> None:
    import torch

    from engine import load_training_model
    from training.train import TrainPlan, _trainer, train, use_bf16, wrap_lora
    from training.train_data import Stage
    from training.versions import new_run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64, help="pairs per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="really train 500 pairs × 3 epochs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    settings = TrainingSettings()
    model_settings = ModelSettings(cache_dir=ROOT / "data" / "models")
    bf16 = use_bf16(settings.bf16, "cpu")
    tmp = Path(tempfile.mkdtemp(prefix="charbot-train-bench-"))
    model, tokenizer, _ = load_training_model(model_settings, progress=False)
    peft_model = wrap_lora(model, settings, None)
    data = records(args.pairs)
    plan = TrainPlan("Odile", "sft", [Stage("bench", data, 1)], [], settings, model_settings)
    trl_rates, bare_rates, step_seconds = [], [], []
    for round_index in range(args.rounds):
        trainer = _trainer(
            plan, peft_model, tokenizer, plan.stages[0], tmp / f"r{round_index}", False
        )
        batches = list(trainer.get_train_dataloader())
        tokens = sum(int(b["attention_mask"].sum()) for b in batches)

        started = time.perf_counter()
        trainer.train()
        trl_seconds = time.perf_counter() - started
        trl_rates.append(tokens / trl_seconds)
        step_seconds.append(trl_seconds / len(batches))

        params = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=settings.learning_rate)
        peft_model.train()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        started = time.perf_counter()
        for batch in batches:
            with autocast:
                loss = peft_model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    labels=batch["labels"],
                ).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        bare_rates.append(tokens / (time.perf_counter() - started))
        print(
            f"round {round_index + 1}: TRL {trl_rates[-1]:.0f} tokens/s, "
            f"bare {bare_rates[-1]:.0f} tokens/s ({len(batches)} steps, {tokens} tokens)",
            flush=True,
        )
    trl, bare = statistics.median(trl_rates), statistics.median(bare_rates)
    ratios = [t / b for t, b in zip(trl_rates, bare_rates, strict=True)]  # same round, same load
    steps_500x3 = 3 * -(-500 // settings.batch_size)
    estimate = steps_500x3 * statistics.median(step_seconds)
    figures = {
        "bf16": bf16,
        "trl_tokens_per_s": trl,
        "bare_tokens_per_s": bare,
        "ratio": trl / bare,
        "ratios_per_round": ratios,
        "estimated_500x3_s": estimate,
    }
    if args.full:
        model, tokenizer, path = load_training_model(model_settings, progress=False)
        full = TrainPlan(
            "Odile", "sft", [Stage("full", records(500), 3)], [], settings, model_settings
        )
        started = time.perf_counter()
        train(full, new_run(tmp / "loras", "Odile"), progress=True, loaded=(model, tokenizer, path))
        figures["measured_500x3_s"] = time.perf_counter() - started
    print()
    print("| figure | measured | target |")
    print("|---|---|---|")
    print(
        f"| TRL SFTTrainer ({'bf16' if bf16 else 'fp32'}) vs bare loop, median of "
        f"{args.rounds} | {trl:.0f} vs {bare:.0f} tokens/s = {trl / bare:.0%} "
        f"(per round {', '.join(f'{r:.0%}' for r in ratios)}) | ≥ 80% |"
    )
    measured = figures.get("measured_500x3_s")
    label = (
        f"{measured / 60:.1f} min measured" if measured else f"{estimate / 60:.1f} min estimated"
    )
    print(f"| 500 pairs × 3 epochs | {label} | < 15 min |")
    load = os.getloadavg()
    print(f"\nload average at the end (1, 5, 15 min): {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
