"""What the local backend needs of a scheduler, wherever it runs.

:class:`~engine.scheduler.Scheduler` batches on a thread of this process;
:class:`~engine.worker_process.ProcessScheduler` is the parent's handle on one running as
the main thread of the model process, and reports its counters as :class:`SchedulerStats`
after every step. Both are a :class:`SchedulerLike`, which is what
:class:`~engine.local_backend.LocalModel` holds.

No torch here: the parent imports this while the model process imports torch.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from engine.jobs import Job


class SchedulerLike(Protocol):
    """Generation requests in, events out on each job's loop (engine/jobs.py), LoRAs
    loaded between steps; and the counters tests and benchmarks read."""

    def submit(self, job: Job) -> None:
        """Queue ``job``; Busy when the queue is full, ModelError once stopped."""
        ...

    def cancel(self, job: Job) -> None:
        """Drop ``job``'s row at the next step (a reply nobody reads any more)."""
        ...

    def load_lora(self, name: str, path: str) -> concurrent.futures.Future:
        """Future of the version string; LoraLoadError if it does not load."""
        ...

    def unload_lora(self, name: str) -> concurrent.futures.Future:
        """Future of None once ``name`` is dropped (running replies on it finish first)."""
        ...

    def current_loras(self) -> dict[str, str]:
        """name → version of the current LoRAs (a snapshot)."""
        ...

    def stop(self) -> None:
        """Stop generating (blocking: call from a thread); running and waiting jobs end
        with a ModelError."""
        ...

    @property
    def active(self) -> int:
        """Rows in the running batch."""
        ...

    @property
    def waiting(self) -> int:
        """Jobs queued for a free row."""
        ...

    @property
    def steps(self) -> int:
        """Decode steps run."""
        ...

    @property
    def max_rows_seen(self) -> int:
        """The most rows one batch has had."""
        ...

    @property
    def loras_loaded(self) -> int:
        """LoRAs in memory, superseded versions still finishing replies included."""
        ...

    @property
    def row_steps(self) -> int:
        """Tokens decoded (prefill's first tokens not included)."""
        ...

    @property
    def decode_seconds(self) -> float:
        """Time in decode steps: ``row_steps`` / this = decode tokens per second."""
        ...

    @property
    def thread_count(self) -> int | None:
        """Matmul threads in use (None: torch's own choice)."""
        ...

    @property
    def thread_changes(self) -> int:
        """How often the thread policy changed the count."""
        ...

    @property
    def prefix_stats(self) -> PrefixStats:
        """The prefix cache's counters (all 0 without one)."""
        ...


@dataclass(frozen=True)
class PrefixStats:
    """The prefix cache's counters (engine/prefix_cache.py): its size and bound in bytes,
    blocks held, prompts looked up and how many reused a cached prefix, their tokens and
    how many of those came from the cache, blocks evicted."""

    bytes: int = 0
    max_bytes: int = 0
    blocks: int = 0
    lookups: int = 0
    hits: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    evicted: int = 0

    @property
    def token_hit_rate(self) -> float:
        """The share of prompt tokens whose keys and values came from the cache."""
        return self.reused_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


@dataclass(frozen=True)
class SchedulerStats:
    """A :class:`SchedulerLike`'s counters at one moment, as the model process sends them
    (and its current LoRAs: name → version)."""

    active: int = 0
    waiting: int = 0
    steps: int = 0
    max_rows_seen: int = 0
    loras_loaded: int = 0
    row_steps: int = 0
    decode_seconds: float = 0.0
    current_loras: Mapping[str, str] = field(default_factory=dict)
    thread_count: int | None = None
    thread_changes: int = 0
    prefix_stats: PrefixStats = field(default_factory=PrefixStats)
