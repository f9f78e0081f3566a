"""A fresh export of one character's feedback, as training records, for ``charbot train``."""

from __future__ import annotations

import asyncio
from typing import Any

from storage.store import Store
from training.cleaning import Report
from training.export import Selection, iter_records


async def fresh_feedback(
    store: Store, character: str, method: str, since: float | None, report: Report | None = None
) -> list[dict[str, Any]]:
    """``method`` records of ``character``'s replies made at or after ``since`` (None: all),
    through the export (training/export.py: cleaned, de-duplicated)."""
    selection = Selection(character=character, since=since)

    def read() -> list[dict[str, Any]]:
        with store.engine.connect() as conn:
            return list(iter_records(conn, method, selection, report=report))

    return await asyncio.to_thread(read)
