"""Swipes in the store: a reply's siblings, which one a platform message shows, and the
sibling a person kept (``swipe_choices``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import Connection, insert, select, update

from storage.conflicts import serialize
from storage.schema import Message, MessagePart, SwipeChoice
from storage.store import Store

_M = Message.__table__
_P = MessagePart.__table__
_W = SwipeChoice.__table__


@dataclass(frozen=True, slots=True)
class Sibling:
    """One of the replies to the same message."""

    id: int
    text: str
    character: str


@dataclass(frozen=True, slots=True)
class Shown:
    """What a platform message shows after paging: sibling ``index`` (from 0) of ``count``."""

    sibling: Sibling
    index: int
    count: int
    siblings: tuple[int, ...]
    moved: bool = True  # False: already at the end paged towards (the index is clamped)


def _siblings(conn: Connection, parent_id: int) -> list[Sibling]:
    rows = conn.execute(
        select(_M.c.id, _M.c.text, _M.c.character)
        .where(_M.c.reply_to_id == parent_id, _M.c.role == "assistant", _M.c.status == "ok")
        .order_by(_M.c.id)
    )
    return [Sibling(r.id, r.text, r.character or "") for r in rows]


def _shown_reply(conn: Connection, platform: str, chat_id: str, message_id: str) -> int | None:
    return conn.execute(
        select(_P.c.message_id).where(
            _P.c.platform == platform,
            _P.c.chat_id == chat_id,
            _P.c.platform_message_id == message_id,
        )
    ).scalar()


async def siblings_of(store: Store, platform: str, chat_id: str, message_id: str) -> Shown | None:
    """Where the reply shown by platform message ``message_id`` stands among its siblings."""

    def work(conn: Connection) -> Shown | None:
        reply = _shown_reply(conn, platform, chat_id, message_id)
        parent = reply and conn.execute(select(_M.c.reply_to_id).where(_M.c.id == reply)).scalar()
        if reply is None or parent is None:
            return None
        group = _siblings(conn, parent)
        ids = tuple(s.id for s in group)
        if reply not in ids:
            return None
        return Shown(group[ids.index(reply)], ids.index(reply), len(ids), ids)

    return await store.read(work)


async def page(
    store: Store, platform: str, chat_id: str, message_id: str, step: int
) -> Shown | None:
    """Make platform message ``message_id`` show the sibling ``step`` places from the one it
    shows now (clamped to the ends): its part row moves to that sibling, so votes and
    corrections on the message attach to what it shows. None if it shows no stored reply."""

    def work(conn: Connection) -> Shown | None:
        reply = _shown_reply(conn, platform, chat_id, message_id)
        parent = reply and conn.execute(select(_M.c.reply_to_id).where(_M.c.id == reply)).scalar()
        if reply is None or parent is None:
            return None
        group = _siblings(conn, parent)
        ids = [s.id for s in group]
        if reply not in ids:
            return None
        was = ids.index(reply)
        index = min(max(was + step, 0), len(ids) - 1)
        conn.execute(
            update(_P)
            .where(_P.c.platform == platform, _P.c.chat_id == chat_id)
            .where(_P.c.platform_message_id == message_id)
            .values(message_id=ids[index])
        )
        return Shown(group[index], index, len(ids), tuple(ids), moved=index != was)

    return await store.write(work)


async def release(store: Store, platform: str, chat_id: str, message_id: str) -> None:
    """Free platform message ``message_id`` for a new sibling generated into it: the reply it
    showed keeps its row, the message no longer points at it."""

    def work(conn: Connection) -> None:
        conn.execute(
            _P.delete()
            .where(_P.c.platform == platform, _P.c.chat_id == chat_id)
            .where(_P.c.platform_message_id == message_id)
        )

    await store.write(work)


async def keep(store: Store, *, kept_id: int, relink_id: int | None, user_id: str) -> None:
    """Record that ``user_id`` kept sibling ``kept_id`` (the conversation continued from it)
    and, when ``relink_id`` is given, make that new message follow ``kept_id``. One
    transaction. A person's choice of one sibling is stored once, however many processes
    (or repeated events) record it at the same time."""

    def work(conn: Connection) -> None:
        parent = conn.execute(select(_M.c.reply_to_id).where(_M.c.id == kept_id)).scalar()
        if parent is None:
            return
        serialize(conn, "swipe_choices", parent, user_id)
        same = select(_W.c.id).where(_W.c.kept_id == kept_id, _W.c.user_id == user_id)
        if conn.execute(same).first() is None:
            conn.execute(
                insert(_W).values(
                    kept_id=kept_id, parent_id=parent, user_id=user_id, created_at=time.time()
                )
            )
        if relink_id is not None:
            conn.execute(update(_M).where(_M.c.id == relink_id).values(reply_to_id=kept_id))

    await store.write(work)


class Kept(NamedTuple):
    """One stored choice: the sibling kept, the message all the siblings answer, and who.
    A tuple too, as the export's pairs are read: (kept, parent, user)."""

    kept_id: int
    parent_id: int
    user_id: str


async def choices(store: Store) -> list[Kept]:
    """Every stored choice, oldest first."""

    def work(conn: Connection) -> list[Kept]:
        rows = conn.execute(select(_W.c.kept_id, _W.c.parent_id, _W.c.user_id).order_by(_W.c.id))
        return [Kept(*row) for row in rows]

    return await store.read(work)
