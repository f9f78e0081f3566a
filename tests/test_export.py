"""Export: records parsed back and checked field by field, for every format."""

from __future__ import annotations

import io
import json

from bot.messages import Inbound
from storage.export import export
from tests.conftest import MakeCore
from tests.fakes import FakeModel, RecordingTarget


def msg(text: str, n: int) -> Inbound:
    return Inbound("test", "c1", f"in{n}", "42", "Sam", text)


async def exported(core, fmt: str, character: str | None = None) -> list[dict]:  # type: ignore[no-untyped-def]
    out = io.StringIO()
    count = await export(core.store, fmt, out, character)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(records) == count
    return records


async def test_every_format(make_core: MakeCore) -> None:
    model = FakeModel(["bad answer", "good sibling", "liked answer", "plain"])
    core = await make_core(model=model)
    bad = await core.handle(msg("Q1 ✨", 1), RecordingTarget())
    sibling = await core.regenerate("test", "c1", bad.message_ids[0], RecordingTarget())
    liked = await core.handle(msg("Q2", 2), RecordingTarget())
    await core.handle(msg("Q3 unrated", 3), RecordingTarget())
    await core.rate("test", "c1", bad.message_ids[0], "u1", -1)
    await core.rate("test", "c1", bad.message_ids[0], "u2", -1)
    await core.rate("test", "c1", sibling.message_ids[0], "u1", 1)
    await core.rate("test", "c1", liked.message_ids[0], "u1", 1)
    await core.correct("test", "c1", bad.message_ids[0], "u3", "first fix")
    await core.correct("test", "c1", bad.message_ids[0], "u3", "corrected answer")
    prompt_bad = model.requests[0].messages
    prompt_liked = model.requests[2].messages

    sft = await exported(core, "sft")
    assert sft == [
        {"messages": [*prompt_bad, {"role": "assistant", "content": "corrected answer"}]},
        {"messages": [*prompt_bad, {"role": "assistant", "content": "good sibling"}]},
        {"messages": [*prompt_liked, {"role": "assistant", "content": "liked answer"}]},
    ]
    dpo = await exported(core, "dpo")
    assert dpo == [
        {
            "prompt": prompt_bad,
            "chosen": [{"role": "assistant", "content": "corrected answer"}],
            "rejected": [{"role": "assistant", "content": "bad answer"}],
        }
    ]
    kto = await exported(core, "kto")
    assert [(r["completion"][0]["content"], r["label"]) for r in kto] == [
        ("bad answer", False),
        ("good sibling", True),
        ("liked answer", True),
    ]
    assert all(r["prompt"][0]["role"] == "system" for r in kto)
    review = await exported(core, "review")
    first = review[0]
    assert (first["id"], first["character"], first["reply"]) == (bad.reply_id, "Aria", "bad answer")
    assert (first["score"], first["up"], first["down"]) == (-2, 0, 2)
    assert first["corrections"] == ["first fix", "corrected answer"]
    assert first["better"] == "" and first["model"] == "fake"
    assert first["prompt"] == prompt_bad
    assert await exported(core, "sft", character="Bram") == []


async def test_dpo_uses_a_liked_sibling_when_there_is_no_correction(make_core: MakeCore) -> None:
    core = await make_core(model=FakeModel(["meh", "great"]))
    bad = await core.handle(msg("Q", 1), RecordingTarget())
    good = await core.regenerate("test", "c1", bad.message_ids[0], RecordingTarget())
    await core.rate("test", "c1", bad.message_ids[0], "u1", -1)
    await core.rate("test", "c1", good.message_ids[0], "u1", 1)
    (record,) = await exported(core, "dpo")
    assert record["chosen"][0]["content"] == "great"
    assert record["rejected"][0]["content"] == "meh"
