"""A character's greeting, stored as an assistant turn of the conversation it was shown in."""

from __future__ import annotations

import time

from sqlalchemy import Connection, func, insert, select

from storage.schema import Conversation, Message, MessagePart
from storage.store import Store, StoredTurn

_M = Message.__table__
_C = Conversation.__table__
_P = MessagePart.__table__


async def add_greeting(
    store: Store,
    *,
    platform: str,
    chat_id: str,
    thread_id: str | None,
    character: str,
    text: str,
    platform_message_id: str | None,
) -> StoredTurn:
    """Store ``text`` as ``character``'s turn in the chat's current conversation (started
    if there is none), after its latest message: in a new conversation, the first turn.
    ``platform_message_id`` is the message that shows it, so it can be rated like a reply.
    One transaction."""
    keys = {"platform": platform, "chat_id": chat_id, "thread_id": thread_id or ""}

    def work(conn: Connection) -> int:
        now = time.time()
        conversation = conn.execute(
            select(_C.c.id)
            .where(*(_C.c[k] == v for k, v in keys.items()), _C.c.reset_at.is_(None))
            .order_by(_C.c.id.desc())
            .limit(1)
        ).scalar()
        if conversation is None:
            conversation = conn.execute(
                insert(_C).values(**keys, started_at=now).returning(_C.c.id)
            ).scalar_one()
        latest = conn.execute(
            select(func.max(_M.c.id)).where(
                _M.c.conversation_id == conversation, _M.c.status == "ok"
            )
        ).scalar()
        greeting = conn.execute(
            insert(_M)
            .values(
                conversation_id=conversation,
                platform=platform,
                chat_id=chat_id,
                platform_message_id=platform_message_id,
                role="assistant",
                author_id="bot",
                author_name=character,
                character=character,
                text=text,
                reply_to_id=latest,
                status="ok",
                created_at=now,
            )
            .returning(_M.c.id)
        ).scalar_one()
        if platform_message_id is not None:
            conn.execute(
                insert(_P).values(
                    message_id=greeting,
                    platform=platform,
                    chat_id=chat_id,
                    platform_message_id=platform_message_id,
                    part_index=0,
                )
            )
        return greeting

    greeting_id = await store.write(work)
    return StoredTurn(greeting_id, "assistant", text, character, character)
