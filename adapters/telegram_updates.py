"""Getting updates from the Bot API without losing any.

Two things python-telegram-bot does not do by itself:

- **Confirm only what is stored.** getUpdates confirms every update fetched before it (its
  ``offset``), whether or not a handler has stored it yet. So the next getUpdates waits until
  every update fetched so far has been stored (:class:`IntakeLedger`, filled by the request
  and emptied by :class:`StoreThenConfirm` as each update's handler finishes). If storing
  fails, the ledger stays shut: the bot stops fetching rather than confirm what it cannot
  keep, and Telegram delivers those updates again after a restart.
- **Survive an update it cannot parse.** PTB parses a whole getUpdates batch at once; one
  update it cannot read (a field it does not expect, a message without a chat) fails the
  batch, the offset never moves past it, and polling retries the same batch for ever. The
  request replaces such an update with an empty one carrying just its ``update_id``: no
  handler matches it and the offset moves on.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable
from typing import Any

from telegram import Update
from telegram.ext import BaseUpdateProcessor
from telegram.request import HTTPXRequest

log = logging.getLogger(__name__)


class IntakeLedger:
    """The update ids fetched but not yet stored."""

    def __init__(self) -> None:
        self._open: set[int] = set()
        self._empty = asyncio.Event()
        self._empty.set()
        self.blocked = False  # an update could not be stored: never confirm past it
        self.stop_wait_s = 10.0  # at a stop, how long the last confirmation waits

    @property
    def open(self) -> int:
        return len(self._open)

    def fetched(self, update_ids: list[int]) -> None:
        if update_ids:
            self._open.update(update_ids)
            self._empty.clear()

    def settled(self, update_id: int, *, stored: bool) -> None:
        if not stored:
            self.blocked = True
            log.error(
                "telegram: update %s could not be stored; not confirming it (Telegram will "
                "deliver it again after a restart)",
                update_id,
            )
        self._open.discard(update_id)
        if not self._open and not self.blocked:
            self._empty.set()

    async def confirmable(self, *, stopping: bool) -> bool:
        """Wait until every fetched update is stored. While stopping, wait at most
        ``stop_wait_s`` and answer False if that was not enough."""
        if not stopping:
            await self._empty.wait()
            return True
        try:
            await asyncio.wait_for(self._empty.wait(), self.stop_wait_s)
        except TimeoutError:
            return False
        return True


class _Receipt:
    __slots__ = ("stored",)

    def __init__(self) -> None:
        self.stored = True


_RECEIPT: contextvars.ContextVar[_Receipt | None] = contextvars.ContextVar(
    "charbot_telegram_receipt", default=None
)


def not_stored() -> None:
    """Called by a handler whose update could not be stored: it must not be confirmed."""
    receipt = _RECEIPT.get()
    if receipt is not None:
        receipt.stored = False


class StoreThenConfirm(BaseUpdateProcessor):
    """Runs each update's handlers (up to ``max_concurrent_updates`` at once) and then tells
    the ledger whether the update was kept. Handlers only store and return (answering runs
    in the core), so a slot is held for one short transaction, not a whole reply."""

    def __init__(self, ledger: IntakeLedger, max_concurrent_updates: int = 256) -> None:
        super().__init__(max_concurrent_updates)
        self.ledger = ledger

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        receipt = _Receipt()
        token = _RECEIPT.set(receipt)
        try:
            await coroutine
        finally:
            _RECEIPT.reset(token)
            update_id = getattr(update, "update_id", None)
            if isinstance(update_id, int):
                self.ledger.settled(update_id, stored=receipt.stored)

    async def initialize(self) -> None:
        """Nothing to set up."""

    async def shutdown(self) -> None:
        """Nothing to free."""


class TolerantUpdatesRequest(HTTPXRequest):
    """An HTTPXRequest for getUpdates that confirms only stored updates (see the module
    docstring) and drops updates which do not parse."""

    def __init__(self, ledger: IntakeLedger | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ledger = ledger
        self.stopping = False

    async def post(self, *args: Any, **kwargs: Any) -> Any:
        if self.ledger is not None and not await self.ledger.confirmable(stopping=self.stopping):
            # The last getUpdates of a stop, with updates still unstored: skip it, so that
            # nothing is confirmed; Telegram delivers them again on the next start.
            log.warning("telegram: stopping with %s updates not stored", self.ledger.open)
            return []
        result = await super().post(*args, **kwargs)
        if not isinstance(result, list):
            return result
        updates = [_parseable(update) for update in result]
        if self.ledger is not None:
            self.ledger.fetched(
                [u["update_id"] for u in updates if isinstance(u, dict) and "update_id" in u]
            )
        return updates


def _parseable(update: Any) -> Any:
    if not isinstance(update, dict) or not isinstance(update.get("update_id"), int):
        return update  # nothing to salvage; PTB reports it
    try:
        Update.de_json(update, None)
    except Exception as exc:  # PTB raises whatever the bad field causes: TypeError, KeyError
        log.debug(
            "telegram: skipping update %s, which does not parse: %s", update["update_id"], exc
        )
        return {"update_id": update["update_id"]}
    return update
