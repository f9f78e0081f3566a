"""The feedback loop on the real default model: answers, 👎 and corrections, export, train,
switch — and how much closer the new version's answers come to the corrections.

    nice -n 10 .venv/bin/python benchmarks/feedback_loop.py [--json out.json]

A throwaway database and LoRA folder; the converted default model is reused from
data/models. The bot runs as `charbot run` would (the model in its own process, the LoRA
choice polled from the database). Odile (benchmarks/loop_persona.py) is asked 30 questions
that users then rate 👎 and correct, and 30 held-out questions; `charbot train` makes a
version from the exported feedback (the held-out pairs are its validation set), `charbot
adapters use` chooses it, the running bot switches by itself, and every question is asked
again. Similarity is the cosine of all-MiniLM-L6-v2 embeddings of answer and reference.
Targets: corrected similarity up by ≥ 0.3, held-out down by no more than 0.02, the loop
(export, train, switch, answer again) under 10 minutes on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import loop_persona as persona  # noqa: E402
from bot.characters import Character  # noqa: E402
from bot.config import load_config  # noqa: E402
from bot.core import Core  # noqa: E402
from bot.messages import Inbound  # noqa: E402
from bot.reply import ReplyTarget  # noqa: E402
from charbot.wiring import open_core  # noqa: E402

_ids = itertools.count(1)


class Collect(ReplyTarget):
    """Keeps what a platform would show, with ids unique like a platform's."""

    max_chars: ClassVar[int] = 1_000_000
    edit_interval: ClassVar[float] = 0.0

    async def send(self, text: str, *, character: Character) -> str:
        return f"b{next(_ids)}"

    async def edit(self, message_id: str, text: str, *, character: Character) -> None:
        pass

    async def notice(self, text: str) -> str | None:
        return None


CONFIG = """
default_character = "{name}"
[model]
base = "smollm2"
cache_dir = "{cache}"
max_new_tokens = 48
repetition_penalty = 1.2
[storage]
url = "sqlite:///{tmp}/loop.db"
[training]
loras_dir = "{tmp}/loras"
datasets_dir = "{tmp}/datasets"
reports_dir = "{tmp}/reports"
val_fraction = 0.0
poll_seconds = 1
[[characters]]
name = "{name}"
description = "{description}"
personality = "{personality}"
system_prompt = "{system}"
temperature = 0.0
"""


async def ask(core: Core, question: str) -> tuple[str, str, str, int]:
    """Ask in a chat of its own: (chat, reply's platform id, text, reply row id)."""
    chat = f"c{next(_ids)}"
    inbound = Inbound(
        platform="bench",
        chat_id=chat,
        message_id=f"q{next(_ids)}",
        author_id="alex",
        author_name="Alex",
        text=question,
        addressed=True,
    )
    result = await core.handle(inbound, Collect())
    assert result is not None and result.message_ids, result
    return chat, result.message_ids[0], result.text, result.reply_id


async def ask_all(core: Core, questions: list[str]) -> list[tuple[str, str, str, int]]:
    """Every question at once: the serving scheduler batches them, as with many chats."""
    return list(await asyncio.gather(*(ask(core, q) for q in questions)))


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


async def run(args: argparse.Namespace) -> dict[str, float]:
    from storage.lora_choices import current_choices
    from training.commands_train import loras_command
    from training.evaluate import Embedder
    from training.train_plan import build_plan, run_training

    tmp = Path(tempfile.mkdtemp(prefix="charbot-loop-"))
    path = tmp / "config.toml"
    path.write_text(
        CONFIG.format(
            name=persona.NAME,
            cache=ROOT / "data" / "models",
            tmp=tmp,
            description=persona.DESCRIPTION,
            personality=persona.PERSONALITY,
            system=persona.SYSTEM_PROMPT,
        )
    )
    config = load_config(path)
    name = persona.NAME
    corrected_q = [q for q, _ in persona.CORRECTED]
    heldout_q = [q for q, _ in persona.HELDOUT]
    figures: dict[str, float] = {}
    async with open_core(config) as core:
        started = time.perf_counter()
        before_c = await ask_all(core, corrected_q)
        before_h = await ask_all(core, heldout_q)
        figures["ask_60_before_s"] = time.perf_counter() - started
        for (chat, reply, _text, _row), (_q, better) in zip(
            before_c, persona.CORRECTED, strict=True
        ):
            assert await core.vote("bench", chat, reply, "alex", -1)
            assert await core.correct("bench", chat, reply, "alex", better)
        # The held-out pairs, with the exact prompts the bot built, validate the training.
        folder = tmp / "datasets" / name
        folder.mkdir(parents=True)
        with (folder / "val.jsonl").open("w") as out:
            for (_c, _r, _t, row_id), (_q, answer) in zip(before_h, persona.HELDOUT, strict=True):
                prompt = json.loads((await core.store.get_message(row_id)).prompt_json)
                completion = [{"role": "assistant", "content": answer}]
                out.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")

        loop_started = time.perf_counter()
        train_args = argparse.Namespace(
            character=name,
            data=None,
            stage=[],
            method=None,
            epochs=args.epochs,
            resume=False,
            eval=False,
            use=False,
            device="cpu",
            quiet=False,
        )
        prepared, _note = await build_plan(config, name, train_args)
        figures["export_s"] = time.perf_counter() - loop_started
        version = await run_training(config, prepared, train_args)
        figures["train_s"] = time.perf_counter() - loop_started - figures["export_s"]
        figures["train_tokens_per_s"] = version.metadata["timing"]["tokens_per_second"]
        figures["train_tokens"] = version.metadata["timing"]["tokens"]
        figures["best_val_loss"] = version.metadata["validation"]["best_loss"]

        switch_started = time.perf_counter()
        use = argparse.Namespace(action="use", name=name, version=version.id)
        await loras_command(config, use)
        while core.loras.current(name) != version.id:  # the running bot polls and switches
            await asyncio.sleep(0.1)
        figures["switch_s"] = time.perf_counter() - switch_started
        assert (await current_choices(core.store))[name.lower()].version == version.id

        answer_started = time.perf_counter()
        after_c = await ask_all(core, corrected_q)
        after_h = await ask_all(core, heldout_q)
        figures["ask_60_after_s"] = time.perf_counter() - answer_started
        figures["loop_s"] = time.perf_counter() - loop_started
        rows = [await core.store.get_message(r[3]) for r in after_c]
        assert {r.lora_version for r in rows} == {version.id}

    # The collapse figures (docs/training.md, "Evaluation"): `charbot eval --against base`.
    from charbot.cli import main as charbot

    argv = ["eval", "--config", str(path), "--character", name, "--against", "base", "--quiet"]
    assert await asyncio.to_thread(charbot, argv) == 0
    meta = json.loads((version.path / "metadata.json").read_text())
    for side, summary in (
        ("after", meta["evaluation"]),
        ("before", meta["evaluation"]["baseline"]),
    ):
        for key in ("paraphrase_recall", "leak_rate", "distinct_rate", "persona_score"):
            figures[f"{key}_{side}"] = summary[key]
    embedder = Embedder()
    ref_c = [a for _, a in persona.CORRECTED]
    ref_h = [a for _, a in persona.HELDOUT]
    for label, answers, refs in (
        ("corrected_before", before_c, ref_c),
        ("corrected_after", after_c, ref_c),
        ("heldout_before", before_h, ref_h),
        ("heldout_after", after_h, ref_h),
    ):
        figures[label] = mean(embedder.similarity([a[2] for a in answers], refs))
    if args.show:
        for (q, ref), b, a in zip(persona.HELDOUT[:10], before_h, after_h, strict=False):
            print(f"- {q}\n  ref:    {ref}\n  before: {b[2][:100]}\n  after:  {a[2][:100]}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--epochs", type=int, help="override [training] epochs")
    parser.add_argument("--show", action="store_true", help="print some held-out answers")
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    c_up = figures["corrected_after"] - figures["corrected_before"]
    h_change = figures["heldout_after"] - figures["heldout_before"]
    print()
    print("| figure | measured | target |")
    print("|---|---|---|")
    print(
        f"| corrected similarity (30) | {figures['corrected_before']:.2f} → "
        f"{figures['corrected_after']:.2f} ({c_up:+.2f}) | up ≥ 0.30 |"
    )
    print(
        f"| held-out similarity (30) | {figures['heldout_before']:.2f} → "
        f"{figures['heldout_after']:.2f} ({h_change:+.2f}) | down ≤ 0.02 |"
    )
    print(
        f"| loop: export {figures['export_s']:.1f} s, train {figures['train_s']:.0f} s, switch "
        f"{figures['switch_s']:.1f} s, answer 60 {figures['ask_60_after_s']:.0f} s | "
        f"{figures['loop_s']:.0f} s | < 600 s |"
    )
    for key, label, target in (
        ("paraphrase_recall", "paraphrased corrections (generated rewordings)", "≥ 70%"),
        ("leak_rate", "leak rate on unrelated prompts", "≤ 2%"),
        ("distinct_rate", "distinct replies to unrelated prompts", "≥ 95%"),
        ("persona_score", "persona facts", "not lower"),
    ):
        before, after = figures[f"{key}_before"], figures[f"{key}_after"]
        shown = [f"{v:.0%}" if v is not None else "–" for v in (before, after)]
        print(f"| {label} | {shown[0]} → {shown[1]} | {target} |")
    print(
        f"| training | {figures['train_tokens_per_s']:.0f} tokens/s "
        f"({figures['train_tokens']} tokens) | — |"
    )
    load = os.getloadavg()
    print(f"\nload average at the end (1, 5, 15 min): {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
