"""Per-chat state that outlives a run: the chat's current conversation (a /reset ends it)
and its current character."""

from __future__ import annotations

from sqlalchemy import Connection, func, select, update

from storage.conflicts import upsert
from storage.schema import ChatState, Conversation

_C = Conversation.__table__
_S = ChatState.__table__


def reset_conversation(
    conn: Connection, platform: str, chat_id: str, thread_id: str | None, now: float
) -> None:
    """End the chat's (thread's) current conversation; the next message starts a new one."""
    conn.execute(
        update(_C)
        .where(_C.c.platform == platform, _C.c.chat_id == chat_id)
        .where(_C.c.thread_id == (thread_id or ""), _C.c.reset_at.is_(None))
        .values(reset_at=now)
    )


def chat_character(conn: Connection, platform: str, chat_id: str) -> str | None:
    query = select(_S.c.character).where(_S.c.platform == platform, _S.c.chat_id == chat_id)
    return conn.execute(query).scalar()


def chosen_characters(conn: Connection) -> dict[str, int]:
    """How many chats have each character as their saved choice (from /character)."""
    query = select(_S.c.character, func.count()).group_by(_S.c.character)
    return {character: count for character, count in conn.execute(query)}


def set_chat_character(
    conn: Connection, platform: str, chat_id: str, character: str, now: float
) -> None:
    """An upsert: several processes setting one chat's character at once all succeed."""
    row = {"platform": platform, "chat_id": chat_id, "character": character, "updated_at": now}
    upsert(conn, _S, row, key=("platform", "chat_id"))
