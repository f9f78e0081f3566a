"""Who is in a chat's scene beside its current character: the /join and /leave rows."""

from __future__ import annotations

import time

from sqlalchemy import Connection, delete, func, select

from storage.conflicts import upsert
from storage.records import SceneMember as Member
from storage.schema import Message, SceneMember
from storage.store import Store

_S = SceneMember.__table__
_M = Message.__table__


async def members(store: Store, platform: str, chat_id: str) -> list[Member]:
    """The characters who joined the chat's scene, in the order they joined."""
    query = (
        select(_S.c.character, _S.c.joined_after)
        .where(_S.c.platform == platform, _S.c.chat_id == chat_id)
        .order_by(_S.c.joined_at, _S.c.character)
    )

    def work(conn: Connection) -> list[Member]:
        return [Member(name, int(after)) for name, after in conn.execute(query)]

    return await store.read(work)


async def join(store: Store, platform: str, chat_id: str, character: str) -> Member:
    """Add ``character`` to the scene; it sees the lines from now on. Joining again keeps
    the first join (an upsert only where there is none: several processes may join it)."""
    now = time.time()

    def work(conn: Connection) -> Member:
        newest = conn.execute(
            select(func.max(_M.c.id)).where(_M.c.platform == platform, _M.c.chat_id == chat_id)
        ).scalar()
        row = {
            "platform": platform,
            "chat_id": chat_id,
            "character": character,
            "joined_after": int(newest or 0),
            "joined_at": now,
        }
        upsert(conn, _S, row, key=("platform", "chat_id", "character"), keep=tuple(row))
        kept = conn.execute(
            select(_S.c.joined_after).where(
                _S.c.platform == platform, _S.c.chat_id == chat_id, _S.c.character == character
            )
        ).scalar_one()
        return Member(character, int(kept))

    return await store.write(work)


async def leave(store: Store, platform: str, chat_id: str, character: str) -> bool:
    """Remove ``character`` from the scene; whether it was there."""

    def work(conn: Connection) -> bool:
        gone = conn.execute(
            delete(_S).where(
                _S.c.platform == platform, _S.c.chat_id == chat_id, _S.c.character == character
            )
        )
        return bool(gone.rowcount)

    return await store.write(work)
