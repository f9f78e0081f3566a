"""Showing a streamed reply on a platform: throttled edits, splitting at the length limit.

An adapter implements :class:`ReplyTarget` (send, edit); the core drives a
:class:`StreamRenderer` over it, so throttling and splitting live in one place for every
platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

from bot.characters import Character


class ReplyTarget(ABC):
    """Where one reply is shown. An adapter makes one per inbound message it answers.

    ``max_chars`` is the platform's visible-text limit per message, less whatever the adapter
    adds around the text (a name prefix), measured by :meth:`text_length`. ``edit_interval``
    is the least time between two edits of one message, in seconds; 0 shows every token
    (the console).
    """

    max_chars: ClassVar[int] = 2000
    edit_interval: ClassVar[float] = 1.0
    typing_interval: ClassVar[float] = 5.0

    @staticmethod
    def text_length(text: str) -> int:
        """How the platform measures ``max_chars`` (override: Telegram counts UTF-16 units)."""
        return len(text)

    async def typing(self) -> None:  # noqa: B027 - optional hook
        """Show a typing indicator (repeated by the renderer until the first text is sent)."""

    @abstractmethod
    async def send(self, text: str, *, character: Character) -> str:
        """Post a new message holding ``text``; return its platform message id."""

    @abstractmethod
    async def edit(self, message_id: str, text: str, *, character: Character) -> None:
        """Replace the text of a message this target sent."""

    async def finished(  # noqa: B027 - optional hook
        self, message_ids: list[str], text: str, *, character: Character
    ) -> None:
        """Called once when the reply is complete (e.g. to attach the vote buttons)."""

    async def notice(self, text: str) -> str | None:
        """Post a short system notice (busy, apology); returns its id. Defaults to ``send``."""
        return await self.send(text, character=_SYSTEM)


_SYSTEM = Character(name="charbot")

_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])[\"')\]]*\s+")


def utf16_length(text: str) -> int:
    """Length in UTF-16 code units, as Telegram counts it (most emoji count twice)."""
    return len(text.encode("utf-16-le")) // 2


def _prefix_within(text: str, budget: int, length: Callable[[str], int]) -> str:
    """The longest prefix of ``text`` whose ``length`` is at most ``budget``."""
    if length is len or length(text[:budget]) <= budget:
        return text[:budget]  # a character is at least one unit: no longer prefix fits
    low, high = 0, budget
    while low < high:
        middle = (low + high + 1) // 2
        if length(text[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    return text[:low]


def split_message(text: str, limit: int, length: Callable[[str], int] = len) -> list[str]:
    """Split ``text`` into parts of at most ``limit``, measured by ``length``.

    Prefers, in order: a paragraph break, a code-block fence boundary, a sentence end, a line
    break, a space; a hard cut only when a part has none of them. An open ``` code block is
    closed at the end of a part and reopened at the start of the next, so each part renders.
    """
    if limit < 16:
        raise ValueError("limit must be at least 16 characters")
    parts: list[str] = []
    rest = text
    reopen = ""
    while rest:
        rest = reopen + rest
        if length(rest) <= limit:
            parts.append(rest)
            break
        # Reserve room to close an open code fence at the cut.
        window = _prefix_within(rest, limit - 4, length)
        cut = _best_cut(window)
        part, rest = rest[:cut].rstrip(), rest[cut:].lstrip("\n ")
        fence = _open_fence(part)
        if fence is not None:
            part += "\n```"
            reopen = f"```{fence}\n"
        else:
            reopen = ""
        parts.append(part)
    return [p for p in parts if p.strip()] or [text[:limit]]


def _best_cut(window: str) -> int:
    floor = len(window) // 3  # never cut so early that parts become tiny
    for pattern in ("\n\n", "\n```"):
        at = window.rfind(pattern)
        if at > floor:
            return at + (1 if pattern == "\n```" else 2)
    ends = [m.end() for m in _SENTENCE_END.finditer(window)]
    if ends and ends[-1] > floor:
        return ends[-1]
    for sep in ("\n", " "):
        at = window.rfind(sep)
        if at > floor:
            return at + 1
    return len(window)


def _open_fence(part: str) -> str | None:
    """The language tag of a ``` block left open at the end of ``part``, or None."""
    fences = re.findall(r"```([^\s`]*)", part)
    if len(fences) % 2 == 0:
        return None
    return fences[-1]


class StreamRenderer:
    """Turns a growing reply into sends and throttled edits of one or more messages."""

    def __init__(self, target: ReplyTarget, character: Character) -> None:
        self.target = target
        self.character = character
        self.message_ids: list[str] = []
        self._shown: list[str] = []  # text currently shown in each message
        self._text = ""
        self._last_edit = 0.0
        self._typing: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StreamRenderer:
        self._typing = asyncio.create_task(self._keep_typing())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop_typing()

    async def _keep_typing(self) -> None:
        with contextlib.suppress(Exception):  # a failed typing call must not end the reply
            while not self.message_ids:
                await self.target.typing()
                await asyncio.sleep(self.target.typing_interval)

    async def _stop_typing(self) -> None:
        if self._typing is not None:
            self._typing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._typing
            self._typing = None

    @property
    def shown_text(self) -> str:
        """What the platform shows now ("" before the first send): the parts as last sent
        or edited, which may lag the text fed by up to one edit interval."""
        return "\n".join(self._shown)

    async def feed(self, text: str) -> None:
        """The reply so far (the whole text, not a delta). Shows it if enough time passed."""
        self._text = text
        if not text.strip():
            return
        now = time.monotonic()
        if self.message_ids and now - self._last_edit < self.target.edit_interval:
            return
        await self._show()

    async def close(self, text: str) -> list[str]:
        """Show the final text, however recently the last edit was; return the message ids."""
        self._text = text
        await self._stop_typing()
        if text.strip():
            await self._show()
            await self.target.finished(list(self.message_ids), text, character=self.character)
        return list(self.message_ids)

    async def _show(self) -> None:
        parts = split_message(self._text, self.target.max_chars, self.target.text_length)
        for index, part in enumerate(parts):
            if index < len(self.message_ids):
                if self._shown[index] != part:
                    await self.target.edit(self.message_ids[index], part, character=self.character)
                    self._shown[index] = part
            else:
                message_id = await self.target.send(part, character=self.character)
                self.message_ids.append(message_id)
                self._shown.append(part)
        self._last_edit = time.monotonic()
