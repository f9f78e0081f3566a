"""What a stopped run left unfinished: messages never answered, replies cut off mid-stream.

Read at start-up (bot/recovery.py), and counted by ``charbot stats``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, case, func, select

from storage.records import NewReply, ReplyAddress
from storage.replies import store_reply
from storage.schema import Conversation, Message, StreamingReply
from storage.store import Store

_M = Message.__table__
_C = Conversation.__table__
_SR = StreamingReply.__table__


@dataclass(frozen=True, slots=True)
class Unanswered:
    """A stored user message that asked for an answer and never got one."""

    id: int
    conversation_id: int
    chat_id: str
    thread_id: str
    platform_message_id: str | None
    parent_id: int | None  # None: the first of its conversation, or not linked yet
    author_id: str
    author_name: str
    text: str
    created_at: float
    wanted_character: str | None
    default_character: str | None


@dataclass(frozen=True, slots=True)
class CutOff:
    """A reply that was being shown when its run stopped."""

    id: int  # in streaming_replies
    conversation_id: int
    chat_id: str
    thread_id: str
    character: str
    text: str  # as last saved: what the platform shows, or a little less
    parent_id: int  # the message it answers
    platform_ids: list[str]


async def unanswered(store: Store, platform: str) -> list[Unanswered]:
    """Pending messages of ``platform``, oldest first."""
    query = (
        select(
            _M.c.id,
            _M.c.conversation_id,
            _M.c.chat_id,
            _C.c.thread_id,
            _M.c.platform_message_id,
            _M.c.reply_to_id,
            _M.c.author_id,
            _M.c.author_name,
            _M.c.text,
            _M.c.created_at,
            _M.c.wanted_character,
            _M.c.default_character,
        )
        .join(_C, _C.c.id == _M.c.conversation_id)
        .where(_M.c.progress == "pending", _M.c.platform == platform)
        .order_by(_M.c.id)
    )

    def work(conn: Connection) -> list[Unanswered]:
        return [Unanswered(*row) for row in conn.execute(query)]

    return await store.read(work)


async def cut_off(store: Store, platform: str) -> list[CutOff]:
    """Replies of ``platform`` left streaming by a stopped run, oldest first."""
    query = (
        select(
            _SR.c.id,
            _SR.c.conversation_id,
            _SR.c.chat_id,
            _C.c.thread_id,
            _SR.c.character,
            _SR.c.text,
            _SR.c.reply_to_id,
            _SR.c.platform_message_ids,
        )
        .join(_C, _C.c.id == _SR.c.conversation_id)
        .where(_SR.c.platform == platform)
        .order_by(_SR.c.id)
    )

    def work(conn: Connection) -> list[CutOff]:
        return [CutOff(*row[:-1], platform_ids=json.loads(row[-1])) for row in conn.execute(query)]

    return await store.read(work)


async def mark_interrupted(store: Store, platform: str, reply: CutOff, text: str) -> int:
    """A cut-off reply, now finished on the platform: stored as an ``interrupted`` reply
    with its messages, and the message it answered marked answered. Returns its row id."""
    address = ReplyAddress(
        reply.conversation_id, platform, reply.chat_id, reply.parent_id, reply.character
    )
    finished = NewReply(
        address,
        text,
        platform_message_ids=reply.platform_ids,
        status="interrupted",
        error="the bot stopped while showing this reply",
    )
    now = time.time()

    def work(conn: Connection) -> int:
        return store_reply(
            conn, finished, created_at=now, streaming_id=reply.id, answers=reply.parent_id
        )

    return await store.write(work)


async def intake_counts(store: Store) -> dict[str, int]:
    """How many messages are pending, were skipped (too old after a restart), and how many
    replies were interrupted."""
    query = select(
        func.sum(_count(_M.c.progress == "pending")),
        func.sum(_count(_M.c.progress == "skipped")),
        func.sum(_count(_M.c.status == "interrupted")),
    )

    def work(conn: Connection) -> Any:
        return conn.execute(query).one()

    pending, skipped, interrupted = await store.read(work)
    return {
        "pending": int(pending or 0),
        "skipped": int(skipped or 0),
        "interrupted": int(interrupted or 0),
    }


def _count(condition: Any) -> Any:
    return case((condition, 1), else_=0)
