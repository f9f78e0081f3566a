"""The fine-tune gate and the recipe's data, on the tiny model: an overfit version is refused,
a gentle one goes through, every correction of a small set trains, the figures reach
`charbot loras list`."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import pytest

from bot.characters import Character
from bot.config import ModelSettings, TrainingSettings
from bot.loras import list_versions
from bot.messages import Inbound
from charbot.cli import main
from engine.local_backend import LocalModel
from tests.fakes import RecordingTarget
from tests.tiny_model import build_tiny_model
from training.gate import refusal
from training.recipe import split_by_conversation, with_fact

CORRECTIONS = {
    "When is the lamp lit?": "The lamp is lit at dusk, every night.",
    "Who is Fathom?": "Fathom is my grey cat, he sleeps on the stove.",
    "How long have you been here?": "Forty winters on the rock, near enough.",
    "Anything warm?": "Tea is on the stove, strong and black.",
    "What's for dinner?": "Fish stew, same as every night.",
    "Can I stay the night?": "Aye, the cot by the stove.",
    "Is the storm passing?": "Not before morning.",
    "Do you get lonely?": "Fathom keeps me company.",
    "What's that noise?": "The foghorn, every minute.",
    "Have you got a phone?": "Nothing with a battery crosses my door.",
    "How old is the lighthouse?": "Older than me, and I'm old.",
    "Can you tell me a story?": "The sea tells better ones.",
}
ONE_LINE = "No need to worry. Nothing with a battery crosses my door tonight."
_chats = itertools.count(1)

OVERFIT = """
epochs = 40
learning_rate = 0.05
knowledge_in_prompt = false
learn_as_knowledge = false
replay = 0
persona_replay = 0
"""
GENTLE = """
epochs = 1
learning_rate = 1e-9
"""


def _config(path: Path, tiny: Path, db_url: str, training: str) -> Path:
    path.write_text(
        f"""
[model]
base = "{tiny}"
dtype = "float32"
max_new_tokens = 80
[storage]
url = "{db_url}"
[training]
rank = 8
alpha = 16
max_length = 256
bf16 = "false"
early_stopping = 0
{training}
[[characters]]
name = "Bram"
system_prompt = "You are Bram."
temperature = 0.0
repetition_penalty = 1.0
"""
    )
    return path


async def _converse(make_core, tiny: Path) -> None:  # type: ignore[no-untyped-def]
    model = LocalModel(
        ModelSettings(base=str(tiny), dtype="float32"), progress=False, worker="thread"
    )
    bram = Character(name="Bram", system_prompt="You are Bram.")
    core = await make_core(model=model, characters=[bram], temperature=0.0, max_new_tokens=24)
    for index, question in enumerate(CORRECTIONS):
        chat = f"chat{next(_chats)}"
        inbound = Inbound("test", chat, f"{chat}-q", "ann", "Ann", question, addressed=True)
        result = await core.handle(inbound, RecordingTarget())
        assert result is not None and result.status == "ok"
        assert await core.vote("test", chat, result.message_ids[0], "ann", -1)
        # The last correction repeats the reply word for word: nothing to learn from it.
        # The others all say one line, the collapse a small set trained hard shows: every
        # message gets the same memorised answer.
        text = result.text if index == len(CORRECTIONS) - 1 else ONE_LINE
        assert await core.correct("test", chat, result.message_ids[0], "ann", text)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


async def test_the_gate_refuses_an_overfit_version_and_lets_a_gentle_one_through(
    make_core, db_url: str, tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await _converse(make_core, tiny)
    overfit = _config(tmp_path / "overfit.toml", tiny, db_url, OVERFIT)
    argv = ["train", "--config", str(overfit), "--character", "Bram", "--quiet", "--use"]
    code = await asyncio.to_thread(main, argv)
    out, err = capsys.readouterr()
    assert "skipped 1 corrections identical to the reply" in err
    assert code == 1, (out, err)
    (refused,) = list_versions(tmp_path / "data" / "loras", "Bram")
    evaluation = refused.metadata["evaluation"]
    assert evaluation["leak_rate"] > evaluation["baseline"]["leak_rate"] + 0.02
    assert evaluation["gate"]["passed"] is False
    assert "not switched" in err and "--force" in err and "leak rate" in err
    assert refused.metadata["examples"] == len(CORRECTIONS) - 1  # the tiny set all trains
    assert refused.metadata["recipe"]["counts"]["held out"] == 0

    # `loras use` refuses it too, unless forced; `loras list` shows why.
    use = ["loras", "use", "Bram", refused.id, "--config", str(overfit)]
    assert await asyncio.to_thread(main, use) == 2
    assert "leak rate" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["loras", "list", "--config", str(overfit)]) == 0
    listing = capsys.readouterr().out
    assert f"leak {evaluation['leak_rate']:.0%}" in listing and "gate: refused" in listing
    assert await asyncio.to_thread(main, [*use, "--force"]) == 0
    assert (
        await asyncio.to_thread(main, ["loras", "use", "Bram", "base", "--config", str(overfit)])
        == 0
    )
    capsys.readouterr()

    gentle = _config(tmp_path / "gentle.toml", tiny, db_url, GENTLE)
    argv = ["train", "--config", str(gentle), "--character", "Bram", "--quiet", "--use"]
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out
    assert "now speaks with v0002" in out
    good = list_versions(tmp_path / "data" / "loras", "Bram")[-1]
    assert good.metadata["evaluation"]["gate"] == {"passed": True, "failed": None}
    learnt = (good.path / "knowledge.jsonl").read_text().splitlines()
    assert {json.loads(line)["question"] for line in learnt} == set(list(CORRECTIONS)[:-1])
    assert {json.loads(line)["answer"] for line in learnt} == {ONE_LINE}


def _record(conversation: int, question: str) -> dict:  # type: ignore[type-arg]
    return {
        "prompt": [{"role": "user", "content": question}],
        "completion": [{"role": "assistant", "content": "aye"}],
        "meta": {"conversation_id": conversation},
    }


def test_held_out_records_are_whole_conversations_and_small_sets_hold_out_nothing() -> None:
    small = [_record(i, f"q{i}") for i in range(12)]
    train, held, note = split_by_conversation(small, 0.2, 20, seed=0)
    assert len(train) == 12 and held == [] and "all 12" in note

    many = [_record(i // 3, f"q{i}") for i in range(30)]  # 10 conversations of 3
    train, held, note = split_by_conversation(many, 0.2, 20, seed=0)
    held_ids = {r["meta"]["conversation_id"] for r in held}
    train_ids = {r["meta"]["conversation_id"] for r in train}
    assert held and not held_ids & train_ids and len(held) + len(train) == 30
    assert len(held) % 3 == 0 and "conversations held out" in note


def test_a_correction_trains_with_its_answer_first_in_the_knowledge() -> None:
    prompt = [
        {"role": "system", "content": "You are Bram.\n\nWhat Bram knows:\n- Where? On Gull Rock."},
        {"role": "user", "content": "Your tea?"},
    ]
    added = with_fact(prompt, "Your tea? Assam, strong.", "Bram")
    assert added[0]["content"].endswith(
        "What Bram knows:\n- Your tea? Assam, strong.\n- Where? On Gull Rock."
    )
    assert with_fact(added, "Your tea? Assam, strong.", "Bram") == added  # once only
    bare = with_fact([{"role": "user", "content": "Hi"}], "Hi? Hello.", "Bram")
    assert bare[0]["content"] == "You are Bram.\n\nWhat Bram knows:\n- Hi? Hello."


def test_the_gate_compares_each_figure_with_its_margin() -> None:
    settings = TrainingSettings()
    now = {"leak_rate": 0.0, "distinct_rate": 1.0, "persona_score": 0.8}
    same = {**now, "version": "v2", "against": "v1", "baseline": now}
    assert refusal(same, settings) is None
    assert refusal({**same, "leak_rate": 0.02}, settings) is None  # within the margin
    assert "leak rate 5% against 0% for v1" in (
        refusal({**same, "leak_rate": 0.05}, settings) or ""
    )
    assert "distinct replies" in (refusal({**same, "distinct_rate": 0.8}, settings) or "")
    assert "persona facts 60%" in (refusal({**same, "persona_score": 0.6}, settings) or "")
    assert refusal({**same, "baseline": None}, settings) is None  # nothing to compare with


async def test_what_was_taught_leaves_out_the_replayed_answers(tmp_path: Path) -> None:
    from bot.config import load_config
    from tests.fakes import FakeModel
    from training.asking import Asker
    from training.recipe import build_recipe

    config_file = tmp_path / "config.toml"
    config_file.write_text('[model]\nbackend = "echo"\n[[characters]]\nname = "Bram"\n')
    config = load_config(config_file)
    replies = [
        "Hello! How can I help you today?",
        "Hello! How can I help you today, friend?",  # the stock line again: dropped
        "Rain by midnight, I'd say.",
        "Sit by the stove and dry off.",
        "Fathom caught a mouse this morning.",
        "The lamp needs oil before dusk.",
        "Gulls are flying inland again.",
        "Read the tide tables, they never lie.",
    ]
    asker = Asker(config, FakeModel(replies))
    feedback = [
        {**_record(1, "Your tea?"), "completion": [{"role": "assistant", "content": "Assam."}]}
    ]
    feedback[0]["meta"]["answer_from"] = "correction"
    settings = TrainingSettings(replay=8, persona_replay=0)
    bram = asker.character("Bram", None)
    recipe = await build_recipe(asker, bram, settings, feedback, None, tmp_path / "replay")
    assert recipe.counts["own answers"] == 7 and len(recipe.train) == 8
    assert recipe.taught == ["Assam."]  # a leak copies what was taught, not its own words


async def test_a_correction_trains_beside_other_corrections_as_distractors(tmp_path: Path) -> None:
    from bot.config import load_config
    from tests.fakes import FakeModel
    from training.asking import Asker
    from training.recipe import build_recipe

    config_file = tmp_path / "config.toml"
    config_file.write_text('[model]\nbackend = "echo"\n[[characters]]\nname = "Bram"\n')
    asker = Asker(load_config(config_file), FakeModel([]))
    answers = {"Your tea?": "Assam.", "Your boat?": "The Kittiwake.", "Your book?": "Moby-Dick."}
    feedback = []
    for index, (question, answer) in enumerate(answers.items()):
        record = {
            **_record(index, question),
            "completion": [{"role": "assistant", "content": answer}],
        }
        record["meta"]["answer_from"] = "correction"
        feedback.append(record)
    settings = TrainingSettings(replay=0, persona_replay=0, knowledge_distractors=2)
    bram = asker.character("Bram", None)
    recipe = await build_recipe(asker, bram, settings, feedback, None, tmp_path / "replay")
    firsts = set()
    for record in recipe.train:
        system = record["prompt"][0]["content"]
        known = [line for line in system.splitlines() if line.startswith("- ")]
        assert len(known) == 3  # its own answer and two others
        own = record["completion"][0]["content"]
        assert any(line.endswith(own) for line in known)
        firsts.add(known[0].endswith(own))
    assert firsts == {True, False}  # the answer is not always the first line
