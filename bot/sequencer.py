"""Per-chat ordering: messages in one chat are answered in arrival order, chats in parallel."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable


class Place:
    """One message's place in its chat's line. ``await place.wait()``, then ``place.done()``."""

    def __init__(self, line: ChatLines, key: Hashable, ahead: asyncio.Future[None] | None) -> None:
        self._line = line
        self._key = key
        self._ahead = ahead
        self._mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def first(self) -> bool:
        """True when nobody in this chat is ahead of this message."""
        return self._ahead is None or self._ahead.done()

    async def wait(self) -> None:
        if self._ahead is not None:
            # shield: if this task is cancelled, the one ahead must not be.
            await asyncio.shield(self._ahead)

    def done(self) -> None:
        if not self._mine.done():
            self._mine.set_result(None)
        if self._line.tails.get(self._key) is self._mine:
            del self._line.tails[self._key]  # the chat is idle: keep the dict small


class ChatLines:
    """Hands out places in line. ``enter`` is synchronous, so arrival order is taken before
    any await."""

    def __init__(self) -> None:
        self.tails: dict[Hashable, asyncio.Future[None]] = {}

    def enter(self, key: Hashable) -> Place:
        place = Place(self, key, self.tails.get(key))
        self.tails[key] = place._mine
        return place
