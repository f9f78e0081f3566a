"""A person's limits: answered messages per minute in a chat, reply tokens per day on a
platform, and a chat's share of the model (replies written at once in it). They decide
whether a message is answered, never whether it is stored (docs/limits.md).

Where the counts live:

- Reply tokens today and answers in the last minute are read from the database the first
  time a person writes on a day (the replies to their messages: rows with their completion
  tokens), so a restart does not hand out a fresh budget; from then on this process counts
  them itself. A chat is served by one process (one Telegram poller per token, a Discord
  guild on one shard), so a chat's minute is exact; a person writing through several
  processes on one day is seen by each from its first read on.
- An answer counts against the minute from the moment it is let through (so messages let
  through at once cannot overshoot); its tokens count once it is written.
- Notices sent, and the chat shares, are in memory: after a restart a person over a limit
  may be told once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from bot.config import LimitRules, LimitsSettings
from bot.messages import Inbound
from storage.store import Store
from storage.usage import replies_since

MINUTE = 60.0
DAY = 86400.0
COMMAND = "quota"
LIMITED = "limited"  # messages.progress of a message stored but not answered (over a limit)


@dataclass(slots=True)
class _Usage:
    """What one person used on one platform today, as this process knows it."""

    day: int  # UTC day number (unix seconds // DAY)
    tokens: int = 0
    answered: dict[str, deque[float]] = field(default_factory=dict)  # chat -> times, a minute


@dataclass(frozen=True, slots=True)
class Standing:
    """Where one person stands in one chat: what /quota shows."""

    settings: LimitsSettings
    private: bool | None
    exempt: bool
    answered: int  # answers this minute, in this chat
    frees_at: float | None  # when the oldest of them leaves the minute (None: none)
    tokens: int  # reply tokens today, on this platform
    day_ends_at: float  # the next 00:00 UTC

    @property
    def per_minute(self) -> int:
        return self.settings.per_minute(self.private) if self.settings.enabled else 0

    @property
    def per_day(self) -> int:
        return self.settings.per_day(self.private) if self.settings.enabled else 0

    @property
    def over(self) -> str | None:
        """ "minute" or "day" when a new message would not be answered (exempt: never)."""
        if self.exempt:
            return None
        if self.per_minute and self.answered >= self.per_minute:
            return "minute"
        if self.per_day and self.tokens >= self.per_day:
            return "day"
        return None


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a message is answered; when not, the notice to send (None: already told)."""

    answer: bool
    notice: str | None = None


@dataclass(slots=True)
class _Share:
    semaphore: asyncio.Semaphore
    users: int = 0


class Limits:
    """The limits of every person the bot answers, over ``store``; ``clock`` is unix time
    (tests move it on instead of sleeping)."""

    def __init__(
        self, rules: LimitRules, store: Store, clock: Callable[[], float] = time.time
    ) -> None:
        self.rules = rules
        self.store = store
        self.clock = clock
        self._day = -1
        self._usage: dict[tuple[str, str], _Usage] = {}  # (platform, author)
        self._loading: dict[tuple[str, str], asyncio.Future[_Usage]] = {}
        self._told_until: dict[tuple[str, str, str], float] = {}  # (platform, chat, author)
        self._shares: dict[tuple[str, str], _Share] = {}

    async def admit(self, msg: Inbound, character: str | None) -> Verdict:
        """Whether ``msg`` is answered now; if so it counts against the minute from now."""
        standing = await self.standing(
            msg.platform, msg.chat_id, msg.author_id, msg.private, character, msg.exempt
        )
        now = self.clock()
        over = standing.over
        usage = self._usage[(msg.platform, msg.author_id)]
        if over is None:
            usage.answered.setdefault(msg.chat_id, deque()).append(now)
            return Verdict(True)
        key = (msg.platform, msg.chat_id, msg.author_id)
        if now < self._told_until.get(key, 0.0):
            return Verdict(False)
        if over == "minute":
            assert standing.frees_at is not None
            until = standing.frees_at
            text = (
                f"{msg.author_name}, that's {standing.per_minute} answered messages this "
                f"minute, your limit here. I'll answer you again in {wait(until - now)}"
            )
        else:
            until = standing.day_ends_at
            text = (
                f"{msg.author_name}, you've used today's {standing.per_day:,} reply tokens. "
                f"I'll answer you again after 00:00 UTC (in {wait(until - now)})"
            )
        # At most one notice a minute, however the window slides.
        self._told_until[key] = max(until, now + MINUTE)
        return Verdict(False, text + "; what you write until then is kept, not answered.")

    def used(self, msg: Inbound, tokens: int) -> None:
        """A reply to ``msg`` was written with ``tokens`` completion tokens."""
        usage = self._usage.get((msg.platform, msg.author_id))
        if usage is not None and usage.day == self._today():
            usage.tokens += tokens

    async def standing(
        self,
        platform: str,
        chat_id: str,
        author_id: str,
        private: bool | None,
        character: str | None,
        exempt: bool = False,
    ) -> Standing:
        """Where ``author_id`` stands in this chat, answered by ``character``."""
        settings = self.rules.settings_for(platform, chat_id, character)
        usage = await self._load(platform, author_id)
        now = self.clock()
        times = usage.answered.get(chat_id)
        if times is not None:
            while times and times[0] <= now - MINUTE:
                times.popleft()
            if not times:
                del usage.answered[chat_id]
        return Standing(
            settings=settings,
            private=private,
            exempt=exempt,
            answered=len(times) if times else 0,
            frees_at=times[0] + MINUTE if times else None,
            tokens=usage.tokens,
            day_ends_at=(usage.day + 1) * DAY,
        )

    @contextlib.asynccontextmanager
    async def share(self, platform: str, chat_id: str) -> AsyncIterator[None]:
        """Hold one of the chat's replies_per_chat places while a reply is written."""
        settings = self.rules.settings_for(platform, chat_id)
        if not settings.enabled or settings.replies_per_chat == 0:
            yield
            return
        key = (platform, chat_id)
        share = self._shares.get(key)
        if share is None:
            share = self._shares[key] = _Share(asyncio.Semaphore(settings.replies_per_chat))
        share.users += 1
        try:
            async with share.semaphore:
                yield
        finally:
            share.users -= 1
            if not share.users:
                del self._shares[key]

    def _today(self) -> int:
        return int(self.clock() // DAY)

    async def _load(self, platform: str, author_id: str) -> _Usage:
        """The person's usage today: read from the database once a day, then counted."""
        today = self._today()
        if today != self._day:  # a new day: yesterday's counts and notices go
            self._day = today
            self._usage.clear()
            self._told_until.clear()
        key = (platform, author_id)
        usage = self._usage.get(key)
        if usage is not None:
            return usage
        loading = self._loading.get(key)
        if loading is not None:
            return await asyncio.shield(loading)
        loading = self._loading[key] = asyncio.get_running_loop().create_future()
        try:
            since = today * DAY
            rows = await self.store.read(
                lambda conn: replies_since(conn, platform, author_id, since)
            )
            usage = _Usage(day=today, tokens=sum(r.completion_tokens for r in rows))
            recent = sorted((r.created_at, r.chat_id) for r in rows)
            for created_at, chat_id in recent:
                if created_at > self.clock() - MINUTE:
                    usage.answered.setdefault(chat_id, deque()).append(created_at)
            self._usage[key] = usage
            loading.set_result(usage)
            return usage
        except BaseException as exc:
            loading.set_exception(exc)
            loading.exception()  # retrieved: whoever waits on it gets it
            raise
        finally:
            del self._loading[key]


def wait(seconds: float) -> str:
    """``seconds`` as a person reads a wait: "42 s", "7 min", "5 h 12 min"."""
    seconds = max(1, math.ceil(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def quota_text(standing: Standing | None, now: float) -> str:
    """What /quota answers (plain text). ``standing`` None: this bot has no limits."""
    if standing is None or not standing.settings.enabled:
        return "There are no limits on answers here."
    lines = []
    if standing.exempt:
        lines.append("You're one of the bot's admins: no limits apply to you.")
    minute = f"Answered this minute: {standing.answered}"
    if standing.per_minute and not standing.exempt:
        minute += f" of {standing.per_minute}"
    if standing.frees_at is not None:
        minute += f" (the oldest leaves the minute in {wait(standing.frees_at - now)})"
    tokens = f"Reply tokens today: {standing.tokens:,}"
    if standing.per_day and not standing.exempt:
        tokens += f" of {standing.per_day:,}"
    tokens += f" (the day resets at 00:00 UTC, in {wait(standing.day_ends_at - now)})"
    lines += [minute, tokens]
    if standing.over == "minute":
        assert standing.frees_at is not None
        lines.append(f"Over the limit: I'll answer you again in {wait(standing.frees_at - now)}.")
    elif standing.over == "day":
        lines.append("Over today's limit: I'll answer you again after 00:00 UTC.")
    return "\n".join(lines)


async def quota_command(  # type: ignore[no-untyped-def]
    core,
    platform: str,
    chat_id: str,
    author_id: str,
    *,
    private: bool | None,
    exempt: bool,
    character: str | None,
) -> str:
    """/quota for one person in one chat: where they stand (plain text; each platform
    escapes it its own way)."""
    limits: Limits | None = core.limits
    if limits is None:
        return quota_text(None, time.time())
    standing = await limits.standing(platform, chat_id, author_id, private, character, exempt)
    return quota_text(standing, limits.clock())
