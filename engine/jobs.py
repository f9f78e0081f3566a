"""A generation request as the scheduler sees it, and handing its events back to the event
loop that asked — shared by the scheduler and the parent side of the model process, which
must not import torch (the model process imports it while the parent gets on with the
tokenizer)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.base import LoraSpec, Sampling

if TYPE_CHECKING:
    import torch


@dataclass(eq=False)
class Job:
    """One request as the worker sees it. ``events`` receives ("token", id), ("done",
    (finish_reason, lora_version)) or ("error", exception) on the submitting loop."""

    prompt: list[int]
    sampling: Sampling
    lora: LoraSpec | None
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    id: int = 0  # names the job across the model-process pipe
    cancelled: bool = False
    peft_name: str = ""
    lora_version: str | None = None
    generated: int = 0
    generator: torch.Generator | None = None
    last_token: int = 0
    used: set[int] = field(default_factory=set)  # tokens generated so far (repetition penalty)
    tokens: list[int] = field(default_factory=list)  # the same in order (the prefix cache)
    submitted: float = field(default_factory=time.perf_counter)


def send_to_loops(events: list[tuple[Job, tuple[str, Any]]]) -> None:
    """Hand events to each job's event loop: one wake-up per loop per step."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for job, event in events:
        by_loop.setdefault(job.loop, []).append((job.events, event))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening
            loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list[tuple[asyncio.Queue, tuple[str, Any]]]) -> None:
    for queue, event in items:
        queue.put_nowait(event)
