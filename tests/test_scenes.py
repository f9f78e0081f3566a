"""Scenes: the next-speaker policies on fixed seeds, and the core answering as several
characters — in order, chained by names up to max_chain, each seeing only its own part."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

from bot.characters import Character
from bot.config import SceneSettings
from bot.messages import Inbound
from bot.scenes import Turn, answering_back, named_in, next_speakers
from engine import Chunk, GenerationRequest
from tests.conftest import MakeCore
from tests.fakes import FakeModel, RecordingTarget
from tests.polling import until

MARA, BRAM = Character(name="Mara"), Character(name="Bram")
IRIS = Character(name="Iris", extensions={"talkativeness": "0.0"})
CAST = [MARA, BRAM, IRIS]


def msg(text: str, n: int, **kw: object) -> Inbound:
    return Inbound(
        platform="test",
        chat_id="c1",
        message_id=f"u{n}",
        author_id="u",
        author_name="Sam",
        text=text,
        **kw,  # type: ignore[arg-type]
    )


def test_names_are_found_in_the_order_written() -> None:
    assert named_in("Bram, and you too @mara?", CAST) == [BRAM, MARA]
    assert named_in("Brambles and Marathon", CAST) == []


def test_each_policy_on_a_fixed_seed() -> None:
    present = [MARA, BRAM, IRIS]
    plain = Turn("What now?")
    assert next_speakers("natural", present, MARA, Turn("Iris, Mara?"), random.Random(1)) == [
        IRIS,
        MARA,
    ]
    rolled = next_speakers("natural", present, MARA, plain, random.Random(3))
    assert rolled and IRIS not in rolled  # talkativeness 0 never rolls in
    assert next_speakers("list", present, MARA, plain, random.Random(1)) == present
    assert next_speakers("manual", present, MARA, plain, random.Random(1)) == []
    pooled = Turn("What now?", spoke_since=frozenset({"mara", "bram"}))
    assert next_speakers("pooled", present, MARA, pooled, random.Random(1)) == [IRIS]
    asked = Turn("Mara, Bram?", asked=BRAM)
    assert next_speakers("natural", present, MARA, asked, random.Random(1)) == [BRAM]
    assert next_speakers("manual", [MARA], MARA, plain, random.Random(1)) == [MARA]


def test_a_line_naming_another_present_character_passes_the_floor() -> None:
    assert answering_back("natural", CAST, MARA, "Ask Bram, he knows.") == [BRAM]
    assert answering_back("natural", CAST, MARA, "I, Mara, know.") == []
    assert answering_back("list", CAST, MARA, "Ask Bram.") == []


async def test_a_message_naming_two_present_characters_gets_both_in_order(
    make_core: MakeCore,
) -> None:
    model = FakeModel(["Evening.", "Good evening."])
    core = await make_core(model=model, characters=CAST, scenes=SceneSettings(seed=1))
    await core.set_character("test", "c1", "Mara")
    await core.join("test", "c1", "Bram")
    target = RecordingTarget()
    await core.handle(msg("Bram and Mara, hello!", 1), target)
    rows = await core.store.list_messages()
    replies = [r for r in rows if r.role == "assistant"]
    assert [(r.character, r.text) for r in replies] == [
        ("Bram", "Evening."),
        ("Mara", "Good evening."),
    ]
    assert replies[1].parent_id == replies[0].id  # Mara answers after Bram's line
    assert [m.lora_name for m in model.requests] == ["Bram", "Mara"]


async def test_characters_answer_each_other_at_most_max_chain_times(make_core: MakeCore) -> None:
    model = FakeModel(["Ask Bram.", "Ask Mara.", "Ask Bram.", "never"])
    scenes = SceneSettings(seed=1, max_chain=2)
    core = await make_core(model=model, characters=CAST, scenes=scenes)
    await core.set_character("test", "c1", "Mara")
    await core.join("test", "c1", "Bram")
    await core.handle(msg("Mara?", 1), RecordingTarget())
    replies = [r for r in await core.store.list_messages() if r.role == "assistant"]
    assert [r.character for r in replies] == ["Mara", "Bram", "Mara"]
    assert len(model.requests) == 3


async def test_a_character_that_joined_late_never_sees_the_earlier_lines(
    make_core: MakeCore,
) -> None:
    model = FakeModel(["The code is 4417.", "Hello.", "Hi all."])
    core = await make_core(model=model, characters=CAST, scenes=SceneSettings(seed=1))
    await core.set_character("test", "c1", "Mara")
    await core.handle(msg("Mara, what is the code?", 1), RecordingTarget())
    await core.join("test", "c1", "Bram")
    await core.handle(msg("Bram, Mara, hi", 2), RecordingTarget())
    bram = next(r for r in model.requests if r.lora_name == "Bram")
    seen = " ".join(str(m["content"]) for m in bram.messages)
    assert "4417" not in seen and "what is the code" not in seen
    mara = [r for r in model.requests if r.lora_name == "Mara"][-1]
    assert "4417" in " ".join(str(m["content"]) for m in mara.messages)
    # Another take of Bram's line (a swipe) sees no more than the first one did.
    bram_row = next(
        r
        for r in await core.store.list_messages()
        if r.character == "Bram" and r.role == "assistant"
    )
    await core.regenerate("test", "c1", bram_row.platform_message_id or "", RecordingTarget())
    again = [r for r in model.requests if r.lora_name == "Bram"][-1]
    assert again is not bram and "4417" not in " ".join(str(m["content"]) for m in again.messages)
    assert await core.leave("test", "c1", "Bram") is True
    assert [c.name for c in (await core.scene("test", "c1")).present] == ["Mara"]


class GatedModel(FakeModel):
    """A fake whose first reply waits for ``gate``: a person can write meanwhile."""

    def __init__(self, replies: list[str]) -> None:
        super().__init__(replies)
        self.gate = asyncio.Event()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        first = not self.requests
        async for chunk in super().stream(request):
            if first:
                await self.gate.wait()
            yield chunk


async def test_a_person_writing_during_a_chain_takes_the_floor_back(make_core: MakeCore) -> None:
    model = GatedModel(["Ask Bram.", "Here I am.", "Later."])
    core = await make_core(model=model, characters=CAST, scenes=SceneSettings(seed=1))
    await core.set_character("test", "c1", "Mara")
    await core.join("test", "c1", "Bram")
    first = asyncio.create_task(core.handle(msg("Mara?", 1), RecordingTarget()))
    await until(lambda: model.requests, timeout=5.0)
    second = asyncio.create_task(core.handle(msg("Bram, wait: me first.", 2), RecordingTarget()))
    await until(lambda: _stored(core, "u2"), timeout=5.0)
    model.gate.set()
    await asyncio.gather(first, second)

    rows = await core.store.list_messages()
    mara = next(r for r in rows if r.text == "Ask Bram.")
    answered_mara = [r for r in rows if r.parent_id == mara.id and r.role == "assistant"]
    assert answered_mara == []  # Bram did not take up Mara's line: the person spoke
    bram = next(r for r in rows if r.role == "assistant" and r.character == "Bram")
    asked = next(r for r in rows if r.platform_message_id == "u2")
    assert bram.parent_id == asked.id  # he answered the person instead
    assert len(model.requests) == 2


async def _stored(core: Any, message_id: str) -> bool:
    rows = await core.store.list_messages()
    return any(r.platform_message_id == message_id for r in rows)
