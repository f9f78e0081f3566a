"""Polling that survives an update python-telegram-bot cannot parse.

PTB parses a whole getUpdates batch at once; one update it cannot read (a field it does not
expect) fails the batch, the offset never moves past it, and polling retries the same batch
for ever. This request class, used only for getUpdates, replaces such an update with an
empty one carrying just its ``update_id``: no handler matches it and the offset moves on.
"""

from __future__ import annotations

import logging
from typing import Any

from telegram import Update
from telegram.request import HTTPXRequest

log = logging.getLogger(__name__)


class TolerantUpdatesRequest(HTTPXRequest):
    """An HTTPXRequest for getUpdates that drops updates which do not parse."""

    async def post(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().post(*args, **kwargs)
        if not isinstance(result, list):
            return result
        return [_parseable(update) for update in result]


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
