"""Splitting long replies and throttling streamed edits."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import pytest

from bot.characters import Character
from bot.reply import StreamRenderer, split_message, utf16_length
from tests.fakes import RecordingTarget


def test_short_text_is_one_part() -> None:
    assert split_message("Hello there.", 2000) == ["Hello there."]


def test_split_prefers_sentence_ends_and_respects_the_limit() -> None:
    text = " ".join(f"This is sentence {i}." for i in range(300))
    parts = split_message(text, 2000)
    assert len(parts) > 1
    assert all(len(p) <= 2000 for p in parts)
    assert all(p.endswith(".") for p in parts)
    assert " ".join(parts) == text


def test_split_keeps_code_blocks_renderable() -> None:
    code = "\n".join(f"print({i})  # line {i}" for i in range(200))
    text = f"Here is the code:\n\n```python\n{code}\n```\nDone."
    parts = split_message(text, 500)
    assert all(len(p) <= 500 for p in parts)
    for part in parts:
        assert part.count("```") % 2 == 0  # every part opens and closes its fences
    assert parts[1].startswith("```python\n")


def test_split_hard_cuts_text_without_spaces() -> None:
    parts = split_message("x" * 4500, 2000)
    assert [len(p) for p in parts] == [1996, 1996, 508]


def test_split_rejects_tiny_limits() -> None:
    with pytest.raises(ValueError):
        split_message("abc", 3)


class SlowTarget(RecordingTarget):
    edit_interval: ClassVar[float] = 0.05


async def test_edits_are_throttled_but_the_final_text_always_lands() -> None:
    target = SlowTarget()
    character = Character(name="Aria")
    async with StreamRenderer(target, character) as renderer:
        text = ""
        for i in range(50):  # 50 tokens in ~0 s: one send, no edits within the interval
            text += f" t{i}"
            await renderer.feed(text)
        assert target.edits == 0
        await asyncio.sleep(0.06)
        await renderer.feed(text + " more")
        assert target.edits == 1
        ids = await renderer.close(text + " more and the end")
    assert target.messages[ids[0]] == text + " more and the end"
    assert target.edits == 2


def test_split_can_measure_in_utf16_units_as_telegram_does() -> None:
    text = "🌊" * 3000 + " done."  # each wave is one character but two UTF-16 units
    parts = split_message(text, 4030, utf16_length)
    assert all(utf16_length(p) <= 4030 for p in parts)
    assert len(parts) == 2 and "".join(parts) == text
    assert split_message(text, 4030) == [text]  # counted in characters it would fit
