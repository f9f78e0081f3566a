"""A character's greeting, stored as an assistant message of the conversation it was shown in."""

from __future__ import annotations

import time

from sqlalchemy import Connection, insert, select

from storage.inbound import CURRENT_CONVERSATION, LATEST_OK, start_conversation
from storage.records import HistoryMessage
from storage.schema import Message, MessagePart
from storage.store import Store

_M = Message.__table__
_P = MessagePart.__table__


async def conversation_started(
    store: Store, platform: str, chat_id: str, thread_id: str | None
) -> bool:
    """Whether the chat's current conversation has a message (a greeting counts)."""
    keys = {"platform": platform, "chat_id": chat_id, "thread_id": thread_id or ""}

    def work(conn: Connection) -> bool:
        conversation = conn.execute(select(CURRENT_CONVERSATION), keys).scalar()
        if conversation is None:
            return False
        return conn.execute(select(LATEST_OK), {"conv": conversation}).scalar() is not None

    return await store.read(work)


async def add_greeting(
    store: Store,
    *,
    platform: str,
    chat_id: str,
    thread_id: str | None,
    character: str,
    text: str,
    platform_message_id: str | None,
) -> HistoryMessage:
    """Store ``text`` as ``character``'s message in the chat's current conversation
    (started if there is none), after its latest message: in a new conversation, the first.
    ``platform_message_id`` is the message that shows it, so it can be voted on like a reply.
    One transaction."""
    keys = {"platform": platform, "chat_id": chat_id, "thread_id": thread_id or ""}

    def work(conn: Connection) -> int:
        now = time.time()
        conversation = conn.execute(select(CURRENT_CONVERSATION), keys).scalar()
        if conversation is None:
            conversation = start_conversation(conn, keys, now)
        latest = conn.execute(select(LATEST_OK), {"conv": conversation}).scalar()
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
    return HistoryMessage(greeting_id, "assistant", text, character, character)
