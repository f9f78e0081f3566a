"""The review round trip in the store: corrections with their source, a reviewer's accepted
correction, and replies a reviewer excluded from training data."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, select, update

from storage.conflicts import insert_new
from storage.corrections import insert_correction
from storage.errors import StorageError
from storage.schema import Correction, Exclusion, Message
from storage.store import Store

_M = Message.__table__
_X = Correction.__table__
_E = Exclusion.__table__

# Who wrote a correction. Defined once: the export, the importer and the studio use these.
SOURCES = ("user", "reviewer", "import")


@dataclass(frozen=True, slots=True)
class ExclusionRow:
    """A reply kept out of every export, and why."""

    message_id: int
    reason: str
    excluded_by: str
    created_at: float


class UnknownReply(StorageError):
    """A review action named a message id that is not a stored reply."""


def check_reply(conn: Connection, message_id: int) -> None:
    """Raise :class:`UnknownReply` unless ``message_id`` is a stored reply."""
    found = conn.execute(
        select(_M.c.id).where(_M.c.id == message_id, _M.c.role == "assistant")
    ).first()
    if found is None:
        raise UnknownReply(f"no stored reply has id {message_id}")


def add_correction_sync(
    conn: Connection,
    message_id: int,
    user_id: str,
    text: str,
    *,
    source: str = "user",
    accepted: bool = False,
    once: bool = False,
) -> int | None:
    """Insert a correction in the caller's transaction and return its id. With ``once``, an
    identical correction (same reply, source and text) already stored is kept and None is
    returned — so reading the same review file twice changes nothing."""
    if source not in SOURCES:
        raise ValueError(f"correction source {source!r}; use one of {', '.join(SOURCES)}")
    check_reply(conn, message_id)
    if once:
        same = conn.execute(
            select(_X.c.id, _X.c.accepted)
            .where(_X.c.message_id == message_id, _X.c.source == source, _X.c.text == text)
            .limit(1)
        ).first()
        if same is not None:
            if accepted and not same.accepted:
                conn.execute(update(_X).where(_X.c.id == same.id).values(accepted=True))
            return None
    return insert_correction(conn, message_id, user_id, text, source=source, accepted=accepted)


async def add_correction(
    store: Store,
    message_id: int,
    user_id: str,
    text: str,
    *,
    source: str = "user",
    accepted: bool = False,
) -> int:
    """Store a better reply for ``message_id`` written by a user, a reviewer or an import."""

    def work(conn: Connection) -> Any:
        return add_correction_sync(
            conn, message_id, user_id, text, source=source, accepted=accepted
        )

    return await store.write(work)


async def set_accepted(store: Store, correction_id: int, accepted: bool = True) -> None:
    """Mark a correction as the reviewer's accepted one (it then wins over newer ones)."""

    def work(conn: Connection) -> Any:
        changed = conn.execute(update(_X).where(_X.c.id == correction_id).values(accepted=accepted))
        if not changed.rowcount:
            raise UnknownReply(f"no stored correction has id {correction_id}")

    await store.write(work)


def exclude_sync(conn: Connection, message_id: int, reason: str, excluded_by: str) -> bool:
    """Exclude a reply in the caller's transaction; False when it already was (kept as is)."""
    check_reply(conn, message_id)
    row = {
        "message_id": message_id,
        "reason": reason,
        "excluded_by": excluded_by,
        "created_at": time.time(),
    }
    return bool(insert_new(conn, _E, row, key=("message_id",)))


async def exclude(store: Store, message_id: int, reason: str, excluded_by: str) -> bool:
    """Keep a reply out of every export; False if it was excluded already."""
    return await store.write(lambda conn: exclude_sync(conn, message_id, reason, excluded_by))


async def unexclude(store: Store, message_id: int) -> bool:
    """Let an excluded reply back into exports; False if it was not excluded."""

    def work(conn: Connection) -> Any:
        return bool(conn.execute(delete(_E).where(_E.c.message_id == message_id)).rowcount)

    return await store.write(work)


async def list_exclusions(store: Store, character: str | None = None) -> list[ExclusionRow]:
    """Every exclusion, oldest first; only ``character``'s replies when given."""
    query = select(_E.c.message_id, _E.c.reason, _E.c.excluded_by, _E.c.created_at).order_by(
        _E.c.id
    )
    if character is not None:
        query = query.join(_M, _M.c.id == _E.c.message_id).where(
            func.lower(_M.c.character) == character.lower()
        )

    def work(conn: Connection) -> Any:
        return [ExclusionRow(*row) for row in conn.execute(query)]

    return await store.read(work)
