"""Per-chat lines: one message of a chat at a time, chats in parallel, and within a chat the
people take turns.

Each person's messages keep their order; between people the line goes round: when a
person's turn ends, the next person waiting goes, and the person who just went waits behind
everyone already waiting. So a backlog of one person (a flood) delays someone else's next
message by at most the one reply being written when it arrived. With a single person (or
with no ``who``: greetings, regenerations) the line is first come, first served.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable


class Place:
    """One message's place in its chat's line. ``await place.wait()``, then ``place.done()``."""

    def __init__(self, line: _Line, who: Hashable) -> None:
        self._line = line
        self.who = who
        self._turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._left = False

    @property
    def first(self) -> bool:
        """True once it is this message's turn: nothing in this chat is ahead of it."""
        return self._turn.done()

    async def wait(self) -> None:
        # shield: if this task is cancelled, the turn it holds must still be handed on.
        await asyncio.shield(self._turn)

    def done(self) -> None:
        """Leave the line: hand the turn on, or give up a place not reached yet."""
        if not self._left:
            self._left = True
            self._line.leave(self)


class _Line:
    """One chat's line: who holds the turn, and each waiting person's messages."""

    __slots__ = ("_key", "_lines", "current", "queues", "turns")

    def __init__(self, lines: ChatLines, key: Hashable) -> None:
        self._lines = lines
        self._key = key
        self.current: Place | None = None  # holds the turn
        self.queues: dict[Hashable, deque[Place]] = {}  # waiting, per person, in order
        self.turns: deque[Hashable] = deque()  # people waiting, in turn order (not current's)

    def join(self, place: Place) -> None:
        if self.current is None and not self.turns:
            self._give(place)
            return
        queue = self.queues.setdefault(place.who, deque())
        queue.append(place)
        current = self.current.who if self.current is not None else _NOBODY
        if len(queue) == 1 and place.who != current:
            self.turns.append(place.who)  # the current person rejoins when their turn ends

    def leave(self, place: Place) -> None:
        if place is not self.current:  # given up before its turn (a cancelled task)
            queue = self.queues.get(place.who)
            if queue is not None and place in queue:
                queue.remove(place)
                if not queue:
                    del self.queues[place.who]
                    if place.who in self.turns:
                        self.turns.remove(place.who)
            return
        self.current = None
        if place.who in self.queues and place.who not in self.turns:
            self.turns.append(place.who)  # behind everyone already waiting
        if not self.turns:
            del self._lines.lines[self._key]  # the chat is idle: keep the dict small
            return
        who = self.turns.popleft()
        queue = self.queues[who]
        following = queue.popleft()
        if not queue:
            del self.queues[who]
        self._give(following)

    def _give(self, place: Place) -> None:
        self.current = place
        place._turn.set_result(None)


_NOBODY = object()


class ChatLines:
    """Hands out places in line. ``enter`` is synchronous, so arrival order is taken before
    any await."""

    def __init__(self) -> None:
        self.lines: dict[Hashable, _Line] = {}

    def enter(self, key: Hashable, who: Hashable = None) -> Place:
        """A place in chat ``key``'s line for a message of ``who`` (None: the chat's own
        work, a greeting or a regeneration, which takes its turn like one more person)."""
        line = self.lines.get(key)
        if line is None:
            line = self.lines[key] = _Line(self, key)
        place = Place(line, who)
        line.join(place)
        return place

    def busy(self, key: Hashable) -> bool:
        """Whether anything holds or waits for a turn in chat ``key``."""
        return key in self.lines
