"""The loop, proven on the tiny model: a conversation, 👎 and corrections on K questions,
export, `charbot train`, `charbot LoRAs use` — and the running bot's answers to those
questions come out measurably closer to the corrections, each reply recording its version."""

from __future__ import annotations

import asyncio
import difflib
import itertools
from pathlib import Path

from bot.characters import Character
from bot.config import ModelSettings
from bot.core import Core
from bot.loras import LoraSwitcher, list_versions
from bot.messages import Inbound
from charbot.cli import main
from engine import base_identity
from engine.local_backend import LocalModel
from tests.fakes import RecordingTarget
from tests.tiny_model import build_tiny_model

CORRECTIONS = {
    "When is the lamp lit?": "The lamp is lit at dusk.",
    "Who is Fathom?": "Fathom is my grey cat.",
    "How long have you been here?": "Forty winters on the rock.",
    "Anything warm?": "Tea is on the stove.",
}
_chats = itertools.count(1)


async def ask(core: Core, question: str) -> tuple[str, str, str]:
    """Ask in a fresh chat (the same prompt every time); (chat, reply's message id, text)."""
    chat = f"chat{next(_chats)}"
    inbound = Inbound(
        platform="test",
        chat_id=chat,
        message_id=f"{chat}-q",
        author_id="ann",
        author_name="Ann",
        text=question,
        addressed=True,
    )
    result = await core.handle(inbound, RecordingTarget())
    assert result is not None and result.status == "ok"
    return chat, result.message_ids[0], result.text


def closeness(answers: list[str]) -> float:
    return sum(
        difflib.SequenceMatcher(None, a, ref).ratio()
        for a, ref in zip(answers, CORRECTIONS.values(), strict=True)
    ) / len(answers)


async def test_feedback_trains_a_version_that_the_running_bot_switches_to(
    make_core, db_url: str, tmp_path: Path
) -> None:
    tiny = build_tiny_model(tmp_path / "tiny")
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[model]
base = "{tiny}"
dtype = "float32"
[storage]
url = "{db_url}"
[training]
rank = 8
alpha = 16
epochs = 20
learning_rate = 0.02
max_length = 256
val_fraction = 0.0
bf16 = "false"
replay = 0                 # the tiny model's own answers are noise; the loop is the point
knowledge_distractors = 0  # and four corrections are too few to tell apart in its knowledge
[[characters]]
name = "Bram"
system_prompt = "You are Bram."
"""
    )
    settings = ModelSettings(base=str(tiny), dtype="float32", max_new_tokens=30)
    model = LocalModel(settings, progress=False, worker="thread")
    bram = Character(name="Bram", system_prompt="You are Bram.")
    core = await make_core(
        model=model, characters=[bram], temperature=0.0, max_new_tokens=30, repetition_penalty=1.0
    )
    loras = tmp_path / "data" / "loras"
    switcher = LoraSwitcher(core, core.store, loras, base_identity(settings), poll_seconds=0.05)
    await switcher.start()
    try:
        before = []
        for question, better in CORRECTIONS.items():
            chat, reply, text = await ask(core, question)
            before.append(text)
            assert await core.vote("test", chat, reply, "ann", -1)
            assert await core.correct("test", chat, reply, "ann", better)

        # Export and train (`charbot train`, a separate command), then choose the version.
        code = await asyncio.to_thread(
            main, ["train", "--config", str(config), "--character", "Bram", "--quiet", "--eval"]
        )
        assert code == 0
        (version,) = list_versions(loras, "Bram")
        assert version.metadata["examples"] == len(CORRECTIONS)
        assert version.metadata["recipe"]["counts"]["corrections"] == len(CORRECTIONS)
        learnt = (version.path / "knowledge.jsonl").read_text().splitlines()
        assert len(learnt) == len(CORRECTIONS)  # the corrections, kept as knowledge too
        assert version.metadata["stages"][-1]["name"] == "feedback"
        assert version.metadata["evaluation"]["corrected_questions"] == len(CORRECTIONS)
        code = await asyncio.to_thread(
            main, ["loras", "use", "Bram", "v1", "--config", str(config)]
        )
        assert code == 0
        for _ in range(200):  # the running bot polls the database and switches by itself
            if switcher.current("Bram") == version.id:
                break
            await asyncio.sleep(0.05)
        assert switcher.current("Bram") == version.id

        after = [(await ask(core, q))[2] for q in CORRECTIONS]
        assert closeness(after) > closeness(before) + 0.3, (before, after)
        replies = [r for r in await core.store.list_messages() if r.role == "assistant"]
        assert [r.lora_version for r in replies] == [None] * 4 + [version.id] * 4

        # charbot eval: the corrected prompts, answered by the version and by the bare base.
        argv = ["eval", "--config", str(config), "--character", "Bram", "--against", "base"]
        code = await asyncio.to_thread(main, [*argv, "--quiet"])
        assert code == 0
        (report,) = (tmp_path / "data" / "reports").glob("Bram-*/report.md")
        text = report.read_text()
        assert (report.parent / "similarity.png").is_file()
        rows = [line for line in text.splitlines() if line.startswith(f"| {version.id} |")]
        base_rows = [line for line in text.splitlines() if line.startswith("| base |")]
        corrected = float(rows[0].split("|")[3])
        assert corrected > float(base_rows[0].split("|")[3])
        assert "0.00 of 4" in base_rows[0]  # live 👍 rate of the base: 0 of its 4 replies
        # ... and the figures land in the version's metadata, for `loras list` and the studio
        (evaluated,) = list_versions(loras, "Bram")
        stored = evaluated.metadata["evaluation"]
        assert stored["against"] == "base" and stored["baseline"]["version"] == "base"
        assert abs(stored["corrected_similarity"] - float(rows[0].split("|")[3])) < 1e-3
        assert stored["unrelated_prompts"] >= 24 and "passed" in stored["gate"]
    finally:
        await switcher.close()
