"""Canaries: a candidate LoRA version that a sticky share of people meets, persisted.

``start_canary`` ends a character's live canary (outcome ``replaced``) and adds the new one;
``end_canary`` closes it with an outcome. The live canary of a character is its newest row
without ``ended_at``. A running bot reads :func:`live_canaries` on its poll for version
switches, so a canary started by the CLI in another process reaches it within seconds.

:func:`canary_evidence` reads what the online comparison needs — the replies each version
wrote since the canary started, every person's first reaction to them, and the swipe choices
among their takes — as plain records; the judging is in ``bot/compare.py``, called by
``bot/canary_admin.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, func, insert, select, update

from storage.conflicts import serialize
from storage.errors import StorageError
from storage.schema import Canary as CanaryRow
from storage.schema import Message, SwipeChoice, Vote
from storage.store import Store

_C = CanaryRow.__table__
_M = Message.__table__
_V = Vote.__table__
_S = SwipeChoice.__table__

OUTCOMES = ("promoted", "rolled back", "stopped", "replaced")


@dataclass(frozen=True, slots=True)
class Canary:
    """One canary: ``share`` of people meet ``version`` (at ``path``); the others meet
    ``baseline`` (None: the bare base model), the version current when it started."""

    id: int
    character: str
    version: str
    path: str
    share: float
    baseline: str | None
    started_by: str
    started_at: float
    ended_at: float | None = None
    ended_by: str | None = None
    outcome: str | None = None


@dataclass(frozen=True, slots=True)
class Rating:
    """One person's first reaction to one reply written during a canary."""

    reply_id: int
    version: str | None
    platform: str
    user_id: str
    value: int  # +1 or -1
    at: float  # when the person first reacted


@dataclass(frozen=True, slots=True)
class Swipe:
    """A kept take among regenerated siblings: ``kept`` won over each of ``others``
    (the versions that wrote them; None: the bare base model)."""

    platform: str
    user_id: str
    kept: str | None
    others: tuple[str | None, ...]
    at: float


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the comparison of a canary reads from the store."""

    ratings: list[Rating]
    swipes: list[Swipe]


def _canary(row: Row[Any]) -> Canary:
    return Canary(
        row.id,
        row.character,
        row.version,
        row.path,
        row.share,
        row.baseline,
        row.started_by,
        row.started_at,
        row.ended_at,
        row.ended_by,
        row.outcome,
    )


def _live(conn: Connection, character: str) -> Canary | None:
    query = (
        select(_C)
        .where(func.lower(_C.c.character) == character.lower(), _C.c.ended_at.is_(None))
        .order_by(_C.c.id.desc())
        .limit(1)
    )
    row = conn.execute(query).first()
    return None if row is None else _canary(row)


async def start_canary(
    store: Store,
    character: str,
    version: str,
    path: str,
    share: float,
    baseline: str | None,
    started_by: str,
) -> Canary:
    """Make ``version`` the live canary of ``character`` (ending the one before, if any)."""
    if not 0 < share < 1:
        raise StorageError(f"a canary share is between 0 and 1 (exclusive), not {share}")

    def work(conn: Connection) -> Canary:
        serialize(conn, "canaries", character.lower())
        now = time.time()
        previous = _live(conn, character)
        if previous is not None:
            conn.execute(
                update(_C)
                .where(_C.c.id == previous.id)
                .values(ended_at=now, ended_by=started_by, outcome="replaced")
            )
        values = {
            "character": character,
            "version": version,
            "path": path,
            "share": share,
            "baseline": baseline,
            "started_by": started_by,
            "started_at": now,
        }
        new_id = conn.execute(insert(_C).values(**values)).inserted_primary_key[0]
        return Canary(new_id, **values)

    return await store.write(work)


async def end_canary(store: Store, character: str, outcome: str, ended_by: str) -> Canary:
    """End ``character``'s live canary with ``outcome``; the canary as it ended.

    Raises StorageError when none is running.
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome {outcome!r}: one of {OUTCOMES}")

    def work(conn: Connection) -> Canary:
        serialize(conn, "canaries", character.lower())
        live = _live(conn, character)
        if live is None:
            raise StorageError(
                f"{character} has no canary running; start one with "
                f"`charbot loras try {character} VERSION --share 0.2`"
            )
        now = time.time()
        conn.execute(
            update(_C)
            .where(_C.c.id == live.id)
            .values(ended_at=now, ended_by=ended_by, outcome=outcome)
        )
        return Canary(
            **{**_as_dict(live), "ended_at": now, "ended_by": ended_by, "outcome": outcome}
        )

    return await store.write(work)


def _as_dict(canary: Canary) -> dict[str, Any]:
    return {name: getattr(canary, name) for name in Canary.__slots__}


async def live_canary(store: Store, character: str) -> Canary | None:
    return await store.read(lambda conn: _live(conn, character))


async def live_canaries(store: Store) -> dict[str, Canary]:
    """Every live canary by lower-case character name (cheap: polled every few seconds)."""
    newest = (
        select(func.max(_C.c.id)).where(_C.c.ended_at.is_(None)).group_by(_C.c.character)
    ).scalar_subquery()

    def work(conn: Connection) -> list[Canary]:
        return [_canary(row) for row in conn.execute(select(_C).where(_C.c.id.in_(newest)))]

    return {canary.character.lower(): canary for canary in await store.read(work)}


async def history(store: Store, character: str) -> list[Canary]:
    """Every canary of ``character``, newest first."""

    def work(conn: Connection) -> list[Canary]:
        query = select(_C).where(func.lower(_C.c.character) == character.lower())
        return [_canary(row) for row in conn.execute(query.order_by(_C.c.id.desc()))]

    return await store.read(work)


async def canary_evidence(store: Store, canary: Canary) -> Evidence:
    """The ratings and swipe choices on ``canary``'s character's replies written since it
    started (until it ended), by any version: the comparison picks the two it compares."""
    written = (
        (_M.c.role == "assistant")
        & (_M.c.status == "ok")
        & (func.lower(_M.c.character) == canary.character.lower())
        & (_M.c.created_at >= canary.started_at)
    )
    if canary.ended_at is not None:
        written = written & (_M.c.created_at <= canary.ended_at)
    ratings = (
        select(
            _M.c.id,
            _M.c.lora_version,
            _M.c.platform,
            _V.c.user_id,
            func.coalesce(_V.c.first_value, _V.c.value),
            _V.c.created_at,
        )
        .join(_V, _V.c.message_id == _M.c.id)
        .where(written)
        .order_by(_V.c.created_at, _V.c.id)
    )
    kept = _M.alias("kept")
    choices = (
        select(_S.c.parent_id, _S.c.kept_id, _S.c.user_id, _S.c.created_at, kept.c.platform)
        .join(kept, kept.c.id == _S.c.kept_id)
        .where(
            func.lower(kept.c.character) == canary.character.lower(),
            _S.c.created_at >= canary.started_at,
        )
        .order_by(_S.c.id)
    )

    def work(conn: Connection) -> Evidence:
        found = [Rating(*row) for row in conn.execute(ratings)]
        picks = list(conn.execute(choices))
        if not picks:
            return Evidence(found, [])
        parents = {row.parent_id for row in picks}
        siblings: dict[int, list[tuple[int, str | None]]] = {}
        query = select(_M.c.reply_to_id, _M.c.id, _M.c.lora_version).where(
            _M.c.reply_to_id.in_(parents), _M.c.role == "assistant", _M.c.status == "ok"
        )
        for parent, message, version in conn.execute(query):
            siblings.setdefault(parent, []).append((message, version))
        swipes = []
        for row in picks:
            takes = dict(siblings.get(row.parent_id, []))
            if row.kept_id not in takes:
                continue
            others = tuple(v for m, v in takes.items() if m != row.kept_id)
            swipes.append(
                Swipe(row.platform, row.user_id, takes[row.kept_id], others, row.created_at)
            )
        return Evidence(found, swipes)

    return await store.read(work)
