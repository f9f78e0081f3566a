"""Judging and ending a character's canary, for the CLI and the studio alike: the stored
evidence judged by bot.compare, and the three ways a canary ends (promote, roll back,
stop), each one persisted change that every running process follows."""

from __future__ import annotations

import time

from bot.compare import Comparison, compare
from bot.config import LoopSettings
from bot.errors import CharbotError
from storage import canaries, lora_choices
from storage.canaries import Canary
from storage.store import Store

ENDINGS = {"promote": "promoted", "rollback": "rolled back", "stop": "stopped"}


async def judge(
    store: Store, live: Canary, loop: LoopSettings, now: float | None = None
) -> Comparison:
    """The comparison of the canary ``live`` by [loop]'s rule, on the evidence stored now."""
    evidence = await canaries.canary_evidence(store, live)
    days = ((now or time.time()) - live.started_at) / 86400
    return compare(
        live.character,
        live.baseline,
        live.version,
        live.share,
        days,
        evidence.ratings,
        evidence.swipes,
        loop,
    )


def no_canary(name: str) -> CharbotError:
    """The one line for a command on a canary that does not run."""
    return CharbotError(
        f"{name} has no canary running; start one with `charbot loras try {name} VERSION`"
    )


async def finish(store: Store, name: str, action: str, by: str) -> Canary:
    """End ``name``'s live canary by ``action`` (``promote``: the candidate becomes everyone's
    version; ``rollback``, ``stop``: everyone keeps the current one); the canary as it was.
    Raises CharbotError when none runs."""
    if action not in ENDINGS:
        raise ValueError(f"unknown canary action {action!r}; use one of {', '.join(ENDINGS)}")
    live = await canaries.live_canary(store, name)
    if live is None:
        raise no_canary(name)
    if action == "promote":
        await lora_choices.record_choice(store, name, live.version, live.path, "canary")
    await canaries.end_canary(store, name, ENDINGS[action], by)
    return live
