"""How fast the studio lets anyone try: the login throttle (wrong passwords per client
address and overall) and the public chat's token bucket per client address.

Both live in the server process (a guesser cannot reset them by reconnecting or dropping
the cookie) and read time from an injected monotonic clock, so tests drive it without
sleeping. Addresses are the TCP peer's: behind a reverse proxy every client is the proxy.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

Clock = Callable[[], float]

FREE_TRIES = 5  # wrong passwords from one address before it has to wait
FREE_TRIES_OVERALL = 25  # wrong passwords from all addresses together before everyone waits
FIRST_WAIT = 10.0  # seconds of the first lockout; each further wrong password doubles it
LONGEST_WAIT = 900.0  # the cap: 15 minutes
FORGET_AFTER = 3600.0  # an hour without a wrong password forgets the count
MAX_TRACKED = 10_000  # addresses remembered at once; the stalest go first beyond that


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


@dataclass
class _Strikes:
    count: int = 0  # wrong passwords in a row (none forgotten yet)
    last: float = 0.0  # when the latest one came
    until: float = 0.0  # locked until then


class LoginThrottle:
    """Wrong passwords per client address and overall: after ``FREE_TRIES`` (or
    ``FREE_TRIES_OVERALL`` from everyone) every login is refused for a while that doubles
    with each further wrong password, up to ``LONGEST_WAIT``. A right password clears the
    address's count; the overall count is only forgotten with time."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._by_address: dict[str, _Strikes] = {}
        self._overall = _Strikes()

    def wait(self, address: str) -> float:
        """Seconds until ``address`` may try a password again; 0 when it may now."""
        now = self.clock()
        mine = self._by_address.get(address)
        until = max(self._overall.until, mine.until if mine else 0.0)
        return max(0.0, until - now)

    def failed(self, address: str) -> float:
        """Count a wrong password; the seconds of the lockout it starts (0: none yet)."""
        now = self.clock()
        self._prune(now)
        mine = self._by_address.setdefault(address, _Strikes())
        wait = self._strike(mine, now, FREE_TRIES)
        if wait:
            log.warning(
                "studio login: %d wrong passwords from %s; its logins are refused for %d s",
                mine.count,
                address,
                round(wait),
            )
        overall = self._strike(self._overall, now, FREE_TRIES_OVERALL)
        if overall:
            log.warning(
                "studio login: %d wrong passwords from all addresses; every login is refused "
                "for %d s",
                self._overall.count,
                round(overall),
            )
        return max(wait, overall)

    def succeeded(self, address: str) -> None:
        self._by_address.pop(address, None)

    @staticmethod
    def _strike(strikes: _Strikes, now: float, free: int) -> float:
        if now - strikes.last > FORGET_AFTER:
            strikes.count = 0
        strikes.count += 1
        strikes.last = now
        if strikes.count < free:
            return 0.0
        wait = min(LONGEST_WAIT, FIRST_WAIT * 2 ** min(strikes.count - free, 32))
        strikes.until = now + wait
        return wait

    def _prune(self, now: float) -> None:
        if len(self._by_address) < MAX_TRACKED:
            return
        stale = [a for a, s in self._by_address.items() if now - s.last > FORGET_AFTER]
        for address in stale:
            del self._by_address[address]
        if len(self._by_address) >= MAX_TRACKED:  # all fresh: drop the oldest half
            oldest = sorted(self._by_address, key=lambda a: self._by_address[a].last)
            for address in oldest[: MAX_TRACKED // 2]:
                del self._by_address[address]


class ChatBucket:
    """A token bucket per client address for the public chat: ``per_minute`` messages,
    refilled evenly, at most ``per_minute`` at once."""

    def __init__(self, per_minute: int = 10, clock: Clock = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, when)

    def take(self, address: str) -> float:
        """Spend one message for ``address``: 0 when it may send, else the seconds to wait."""
        now = self.clock()
        rate = self.per_minute / 60.0
        tokens, when = self._buckets.get(address, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - when) * rate)
        if tokens < 1.0:
            self._buckets[address] = (tokens, now)
            return (1.0 - tokens) / rate
        self._buckets[address] = (tokens - 1.0, now)
        if len(self._buckets) > MAX_TRACKED:
            self._forget_full(now, rate)
        return 0.0

    def _forget_full(self, now: float, rate: float) -> None:
        """Addresses whose bucket has refilled are as good as new: forget them."""
        full = [
            address
            for address, (tokens, when) in self._buckets.items()
            if tokens + (now - when) * rate >= self.per_minute
        ]
        for address in full:
            del self._buckets[address]
