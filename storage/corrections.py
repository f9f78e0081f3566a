"""Corrections: better replies that people write for stored replies (``/fix``, ✏️, the
review queue, a review file read back). Every correction row is inserted here."""

from __future__ import annotations

import time
from collections.abc import Iterable

from sqlalchemy import Connection, insert, select

from storage.records import StoredCorrection
from storage.schema import Correction

_X = Correction.__table__

# In StoredCorrection's field order.
_COLUMNS = (
    _X.c.id,
    _X.c.message_id,
    _X.c.user_id,
    _X.c.text,
    _X.c.created_at,
    _X.c.source,
    _X.c.accepted,
)


def insert_correction(
    conn: Connection,
    message_id: int,
    user_id: str,
    text: str,
    *,
    source: str = "user",
    accepted: bool = False,
) -> int:
    """Insert a correction of reply ``message_id`` in the caller's transaction; its id."""
    result = conn.execute(
        insert(_X).values(
            message_id=message_id,
            user_id=user_id,
            text=text,
            source=source,
            accepted=accepted,
            created_at=time.time(),
        )
    )
    return int(result.inserted_primary_key[0])


def list_corrections(
    conn: Connection, message_ids: Iterable[int] | None = None
) -> list[StoredCorrection]:
    query = select(*_COLUMNS).order_by(_X.c.id)
    if message_ids is not None:
        query = query.where(_X.c.message_id.in_(list(message_ids)))
    return [StoredCorrection(*row[:-1], bool(row[-1])) for row in conn.execute(query)]
