"""How many threads the model's matmuls use: ``[model] threads``.

Why this is a setting at all: torch runs each op on an OpenMP team whose threads wait for
each other at the end of every op. On a quiet 2-core machine two threads decode ~1.3× faster
than one, but when another busy process shares the cores, one of the two is often
descheduled and every op waits for it: measured here, a second CPU-bound process took a
2-thread decode from 34 to ~10 tok/s, while a 1-thread decode kept ~28 tok/s
(benchmarks/busy.py; docs/performance.md, "Thread policy").

``threads = "auto"`` (the default) therefore watches the CPU time that *other* processes
take (``/proc/stat`` less this process and its parent, the bot, which is idle while we
decode) and uses one thread per core they leave free: all cores on a quiet machine, fewer as
soon as something else competes, all again when it stops. Processes under ``nice`` count
too: two niced single-thread processes took a 2-thread decode here to 1.5 tok/s (each op
waits for whichever of our threads the kernel gave a niced process's time slice to). A
whole number fixes the count.
``OMP_WAIT_POLICY=passive`` was measured too: it helps a 2-thread team under load (~25
tok/s) but costs a quiet machine a third of its speed, so the default spin policy stays.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

CHECK_EVERY_S = 0.5  # how often auto mode re-reads the CPU counters (two small file reads)
BUSY_ABOVE = 0.35  # cores used by others: above this, leave a core to them
QUIET_BELOW = 0.15  # ... and below this, take it back (a gap, so the count does not flap)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. under taskset or a container)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _ticks_per_second() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


def system_busy_ticks() -> int | None:
    """CPU ticks spent working (not idle) on all cores since boot (/proc/stat), or None."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return user + nice + system + irq + softirq + steal


def process_ticks(pid: int | str) -> int:
    """utime + stime of ``pid`` (all its threads); 0 when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return 0
    # The command name may contain spaces; the fields after its closing parenthesis do not.
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def counters() -> tuple[float, int, int] | None:
    """(time, busy ticks of the machine, ticks of this process and its parent), or None
    without /proc: one end of a window."""
    busy = system_busy_ticks()
    if busy is None:
        return None
    return time.monotonic(), busy, process_ticks("self") + process_ticks(os.getppid())


@dataclass
class ThreadPolicy:
    """Sets torch's thread count once (fixed) or between decode steps (auto)."""

    fixed: int | None = None  # None: auto
    cores: int = field(default_factory=available_cores)
    threads: int = 0  # the count in use
    others: float = 0.0  # cores other processes used over the last window (auto)
    changes: int = 0  # how often auto mode changed the count
    _last: tuple[float, int, int] | None = None
    _tick: float = field(default_factory=_ticks_per_second)

    def __post_init__(self) -> None:
        if self.fixed is not None:
            self._apply(self.fixed)
        elif self._last is None:  # the first window starts now; settle() or check() decides
            self._last = self.sample()

    @classmethod
    def opened_earlier(cls, fixed: int | None, window: tuple[float, int, int] | None):
        """A policy whose first window began at ``window`` (:func:`counters`), e.g. before a
        process's imports, so that settle() decides from seconds rather than moments."""
        return cls(fixed, _last=window)

    def settle(self) -> int:
        """Decide now from the window since creation (the model process creates the policy
        before importing torch and settles before loading: loading on two threads beside a
        busy process took 5× longer). Returns the count."""
        if self.fixed is None:
            self._close_window()
        return self.threads

    def _apply(self, count: int) -> None:
        if count != self.threads:
            import torch  # here, so that reading the config does not import torch

            torch.set_num_threads(count)
            self.threads = count
            from engine import native  # charbot's kernels follow (a no-op if unused)

            native.set_threads(count)

    def sample(self) -> tuple[float, int, int] | None:
        return counters()

    def check(self, now: float | None = None) -> None:
        """Call between steps: in auto mode, re-reads the counters at most every 0.5 s."""
        if self.fixed is not None:
            return
        now = time.monotonic() if now is None else now
        if self._last is not None and now - self._last[0] < CHECK_EVERY_S:
            return
        self._close_window()

    def _close_window(self) -> None:
        """Decide from the window since the last sample (if any) and start the next one;
        with no window to go on (no /proc here), use every core, as torch would."""
        current = self.sample()
        if current is not None:
            if self._last is not None:
                self.update(self._last, current)
            self._last = current
        if self.threads == 0:
            self._apply(self.cores)

    def update(self, before: tuple[float, int, int], after: tuple[float, int, int]) -> int:
        """Choose the count from two samples (time, busy ticks, our ticks); returns it."""
        seconds = after[0] - before[0]
        if seconds <= 0:
            return self.threads
        other_ticks = (after[1] - before[1]) - (after[2] - before[2])
        self.others = max(0.0, other_ticks / self._tick / seconds)
        wanted = self.threads or self.cores
        if self.others > BUSY_ABOVE:
            # leave every core that others keep busy (rounded up, less a little noise);
            # always keep one for us
            wanted = max(1, self.cores - math.ceil(self.others - QUIET_BELOW))
        elif self.others < QUIET_BELOW:
            wanted = self.cores
        if wanted != self.threads:
            self.changes += 1
            self._apply(wanted)
        return self.threads
