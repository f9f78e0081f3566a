"""Which LoRA version each character speaks with: a persisted history of choices.

``use`` appends a row, ``rollback`` marks the newest live row rolled back (the one before it
is current again, and a second rollback goes one further). The current choice of a character
is its newest row that is not rolled back; none means "as configured".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, func, insert, select, update

from storage.conflicts import serialize
from storage.errors import StorageError
from storage.schema import LoraChoice
from storage.store import Store

_L = LoraChoice.__table__


@dataclass(frozen=True, slots=True)
class Choice:
    """One persisted choice: ``version`` None means the bare base model."""

    id: int
    character: str
    version: str | None
    path: str | None
    chosen_by: str
    chosen_at: float
    rolled_back_at: float | None = None


def _choice(row: Row[Any]) -> Choice:
    return Choice(
        row.id,
        row.character,
        row.version,
        row.path,
        row.chosen_by,
        row.chosen_at,
        row.rolled_back_at,
    )


_LIVE = _L.c.rolled_back_at.is_(None)
_NEWEST_LIVE = select(func.max(_L.c.id)).where(_LIVE).group_by(_L.c.character).scalar_subquery()


async def record_choice(
    store: Store, character: str, version: str | None, path: str | None, chosen_by: str
) -> Choice:
    """Persist that ``character`` speaks with ``version`` (at ``path``) from now on. When
    that is its current choice already (another process, or an admin, made it a moment
    before), nothing is added and the stored choice is returned."""

    def work(conn: Connection) -> Choice:
        serialize(conn, "lora_choices", character.lower())
        current = _current(conn, character)
        if current is not None and (current.version, current.path) == (version, path):
            return current
        now = time.time()
        new_id = conn.execute(
            insert(_L).values(
                character=character,
                version=version,
                path=path,
                chosen_by=chosen_by,
                chosen_at=now,
            )
        ).inserted_primary_key[0]
        return Choice(new_id, character, version, path, chosen_by, now)

    return await store.write(work)


def _current(conn: Connection, character: str) -> Choice | None:
    query = (
        select(_L)
        .where(func.lower(_L.c.character) == character.lower(), _LIVE)
        .order_by(_L.c.id.desc())
        .limit(1)
    )
    row = conn.execute(query).first()
    return None if row is None else _choice(row)


async def current_choices(store: Store) -> dict[str, Choice]:
    """Every character's current choice, by lower-case name (cheap: polled every few s)."""

    def work(conn: Connection) -> list[Choice]:
        return [_choice(row) for row in conn.execute(select(_L).where(_L.c.id.in_(_NEWEST_LIVE)))]

    return {choice.character.lower(): choice for choice in await store.read(work)}


async def history(store: Store, character: str) -> list[Choice]:
    """Every choice made for ``character``, newest first, rolled-back ones included."""

    def work(conn: Connection) -> list[Choice]:
        query = select(_L).where(func.lower(_L.c.character) == character.lower())
        return [_choice(row) for row in conn.execute(query.order_by(_L.c.id.desc()))]

    return await store.read(work)


async def roll_back(store: Store, character: str) -> Choice | None:
    """Undo ``character``'s current choice; return the one now current (None: as configured).

    Raises StorageError when there is nothing to roll back.
    """

    def work(conn: Connection) -> list[Choice]:
        serialize(conn, "lora_choices", character.lower())
        live = list(
            conn.execute(
                select(_L)
                .where(func.lower(_L.c.character) == character.lower(), _LIVE)
                .order_by(_L.c.id.desc())
                .limit(2)
            )
        )
        if not live:
            raise StorageError(
                f"{character}: no version was chosen, so there is nothing to roll back; "
                f"see `charbot loras list {character}`"
            )
        conn.execute(update(_L).where(_L.c.id == live[0].id).values(rolled_back_at=time.time()))
        return [_choice(row) for row in live[1:]]

    rest = await store.write(work)
    return rest[0] if rest else None
