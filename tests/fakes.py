"""Fakes of our own boundaries: a model with queued replies, a reply target that records."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from bot.characters import Character
from bot.reply import ReplyTarget
from engine import ChatModel, Chunk, GenerationRequest, Usage
from engine.errors import LoraLoadError


class FakeModelError(RuntimeError):
    """What FakeModel raises when told to fail."""


@dataclass(frozen=True)
class BrokenReply:
    """A queued reply that streams ``text`` and then raises ``error`` (a model that dies
    mid-reply)."""

    text: str
    error: Exception


class FakeModel(ChatModel):
    """Streams queued replies word by word and records every request it was given.

    ``fail=True`` raises on every request; a queued reply that is an Exception instance is
    raised for that request only, a :class:`BrokenReply` after its text. With the queue
    empty it replies ``default``.
    """

    name: ClassVar[str] = "fake"

    def __init__(
        self,
        replies: list[str | Exception] | None = None,
        *,
        delay: float = 0.0,
        fail: bool = False,
        default: str = "ok",
    ) -> None:
        self.replies = list(replies or [])
        self.delay = delay
        self.fail = fail
        self.default = default
        self.requests: list[GenerationRequest] = []
        self.loras: dict[str, str] = {}  # character -> LoRA path, as loaded
        self.active = 0  # generations in progress now
        self.max_active = 0  # the most that were ever in progress at once

    async def load_lora(self, character: str, path: str) -> str:
        if not Path(path).is_dir():
            raise LoraLoadError(character, path, "directory not found")
        self.loras[character] = path
        return Path(path).name

    async def unload_lora(self, character: str) -> None:
        self.loras.pop(character, None)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        self.requests.append(request)
        reply = self.replies.pop(0) if self.replies else self.default
        if self.fail:
            raise FakeModelError("the fake model was told to fail")
        if isinstance(reply, Exception):
            raise reply
        broken = reply if isinstance(reply, BrokenReply) else None
        words = (broken.text if broken else reply).split(" ")
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            for index, word in enumerate(words):
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield Chunk(word if index == 0 else " " + word)
            if broken is not None:
                raise broken.error
        finally:
            self.active -= 1
        yield Chunk("", Usage(self.count_tokens(request.messages), len(words), "fake", None))


_ids = itertools.count(1)


class RecordingTarget(ReplyTarget):
    """A ReplyTarget that keeps what was sent and edited, with platform ids "m1", "m2", ...

    Ids are unique across every target in the process, like a platform's.
    """

    max_chars: ClassVar[int] = 2000
    edit_interval: ClassVar[float] = 0.0

    def __init__(self) -> None:
        self.messages: dict[str, str] = {}
        self.notices: list[str] = []
        self.edits = 0

    async def send(self, text: str, *, character: Character) -> str:
        message_id = f"m{next(_ids)}"
        self.messages[message_id] = text
        return message_id

    async def edit(self, message_id: str, text: str, *, character: Character) -> None:
        self.edits += 1
        self.messages[message_id] = text

    async def notice(self, text: str) -> str | None:
        self.notices.append(text)
        return None

    @property
    def text(self) -> str:
        return "".join(self.messages.values())
