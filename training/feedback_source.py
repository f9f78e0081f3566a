"""A fresh export of one character's feedback, as training records, for ``charbot train``."""

from __future__ import annotations

import asyncio
from typing import Any

from storage.store import Store


async def fresh_feedback(
    store: Store, character: str, method: str, since: float | None
) -> list[dict[str, Any]]:
    """``method`` records of ``character``'s replies made at or after ``since`` (None: all).

    Uses the export tools (training/export.py: cleaned, de-duplicated) where present, and
    the plain feedback export of storage/export.py otherwise.
    """
    try:
        from training.export import Selection, iter_records
    except ImportError:  # the export tools are not installed in this tree
        return await _plain(store, character, method, since)

    selection = Selection(character=character, since=since)

    def read() -> list[dict[str, Any]]:
        with store.engine.connect() as conn:
            return list(iter_records(conn, method, selection))

    return await asyncio.to_thread(read)


async def _plain(
    store: Store, character: str, method: str, since: float | None
) -> list[dict[str, Any]]:
    from storage.export import records

    from storage.feedback import rated_replies

    replies = await rated_replies(store, character)
    if since is not None:
        created = await _created(store, [r.id for r in replies])
        replies = [r for r in replies if created.get(r.id, 0.0) >= since]
    return list(records(replies, method))


async def _created(store: Store, ids: list[int]) -> dict[int, float]:
    from sqlalchemy import select

    from storage.schema import Message

    table = Message.__table__

    def work(conn: Any) -> dict[int, float]:
        query = select(table.c.id, table.c.created_at).where(table.c.id.in_(ids))
        return {row.id: row.created_at for row in conn.execute(query)}

    return await store.read(work) if ids else {}
