"""A running bot follows the persisted canaries (storage/canaries.py); see bot.canary for
who meets the candidate."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from bot.canary import CanaryRoute
from bot.errors import CharbotError
from engine import EngineError
from storage import canaries

if TYPE_CHECKING:
    from bot.core import Core
    from storage.store import Store

log = logging.getLogger(__name__)


class CanaryFollower:
    """Follows the persisted canaries (storage/canaries.py) in a running core; called by
    the LoRA switcher's poll (bot.loras), so a canary started or ended in another process
    arrives within ``poll_seconds``.

    A candidate that cannot serve — its directory gone, or a LoRA that does not load —
    falls back to the current version with one logged line, and is not tried again until
    the canary changes.
    """

    def __init__(self, core: Core, store: Store) -> None:
        self.core = core
        self.store = store
        self._applied: dict[str, int | None] = {}  # lower name -> applied canary id

    async def apply(self) -> None:
        live = await canaries.live_canaries(self.store)
        for character in self.core.characters:
            key = character.name.lower()
            canary = live.get(key)
            wanted = canary.id if canary is not None else None
            route = self.core.canaries.get(key)
            if route is not None and not await asyncio.to_thread(Path(route.path).is_dir):
                log.warning(
                    "%s's candidate %s is gone from %s; everyone meets the current version",
                    character.name,
                    route.version,
                    route.path,
                )
                await self.core.stop_canary(character.name)
                continue  # _applied keeps the id: not retried until the canary changes
            if self._applied.get(key) == wanted and key in self._applied:
                continue
            self._applied[key] = wanted
            if canary is None:
                await self.core.stop_canary(character.name)
                continue
            await self._start(character.name, canary)

    async def _start(self, name: str, canary: canaries.Canary) -> None:
        await self.core.stop_canary(name)
        if not await asyncio.to_thread(Path(canary.path).is_dir):
            log.warning(
                "%s's candidate %s is missing (%s); everyone meets the current version",
                name,
                canary.version,
                canary.path,
            )
            return
        route = CanaryRoute(name, canary.version, canary.path, canary.share, canary.id)
        try:
            await self.core.start_canary(route)
        except (CharbotError, EngineError) as exc:
            log.warning(
                "%s's candidate %s did not load (%s); everyone meets the current version",
                name,
                canary.version,
                exc,
            )
            return
        log.info("%s: %.0f%% of people now meet %s", name, canary.share * 100, canary.version)
