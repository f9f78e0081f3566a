"""Reading messages back: by row id, by the platform message showing them, a reply's
history up the conversation tree, and every message of a chat.

These run on a connection the caller holds (the store's database thread); every message
leaves as a :class:`~storage.records.StoredMessage`.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import Connection, Row, bindparam, literal, select

from storage.records import HistoryMessage, StoredMessage
from storage.schema import Conversation, Message, MessagePart

_M = Message.__table__
_C = Conversation.__table__
_P = MessagePart.__table__

# In StoredMessage's field order: the reply_to_id column is its parent_id.
_COLUMNS = (
    _M.c.id,
    _M.c.conversation_id,
    _M.c.platform,
    _M.c.chat_id,
    _M.c.platform_message_id,
    _M.c.role,
    _M.c.author_id,
    _M.c.author_name,
    _M.c.text,
    _M.c.reply_to_id,
    _M.c.regenerated_from_id,
    _M.c.character,
    _M.c.lora_version,
    _M.c.model,
    _M.c.prompt_json,
    _M.c.sampling_json,
    _M.c.latency_ms,
    _M.c.prompt_tokens,
    _M.c.completion_tokens,
    _M.c.status,
    _M.c.error,
    _M.c.created_at,
    _M.c.progress,
    _M.c.wanted_character,
    _M.c.default_character,
)
_HISTORY_COLUMNS = (
    _M.c.id,
    _M.c.role,
    _M.c.text,
    _M.c.character,
    _M.c.author_name,
    _M.c.author_id,
)


def _stored(row: Row[Any] | None) -> StoredMessage | None:
    return None if row is None else StoredMessage(*row)


def get_message(conn: Connection, message_id: int) -> StoredMessage | None:
    return _stored(conn.execute(select(*_COLUMNS).where(_M.c.id == message_id)).first())


def find_shown(
    conn: Connection, platform: str, chat_id: str, platform_message_id: str
) -> StoredMessage | None:
    """The stored message shown by a platform message: any part of a reply, or a user's."""
    by_part = (
        select(_P.c.message_id)
        .where(_P.c.platform == platform, _P.c.chat_id == chat_id)
        .where(_P.c.platform_message_id == platform_message_id)
    )
    row = conn.execute(select(*_COLUMNS).where(_M.c.id.in_(by_part))).first()
    if row is None:
        row = conn.execute(
            select(*_COLUMNS)
            .where(_M.c.platform == platform, _M.c.chat_id == chat_id)
            .where(_M.c.platform_message_id == platform_message_id)
            .order_by(_M.c.id)
            .limit(1)
        ).first()
    return _stored(row)


def list_messages(
    conn: Connection, platform: str | None = None, chat_id: str | None = None
) -> list[StoredMessage]:
    query = select(*_COLUMNS).order_by(_M.c.id)
    if platform is not None:
        query = query.where(_M.c.platform == platform)
    if chat_id is not None:
        query = query.where(_M.c.chat_id == chat_id)
    return [StoredMessage(*row) for row in conn.execute(query)]


@functools.cache
def _history_query(limit: int) -> Any:
    """Message :start and its ancestors in the reply tree, oldest first; one recursive query,
    built once per limit (building it costs more than running it). Error rows are skipped:
    they were never part of the story the user saw."""
    chain = (
        select(_M.c.id, _M.c.reply_to_id, literal(0).label("depth"))
        .where(_M.c.id == bindparam("start"))
        .cte("chain", recursive=True)
    )
    parent = _M.alias("parent")
    chain = chain.union_all(
        select(parent.c.id, parent.c.reply_to_id, (chain.c.depth + 1).label("depth"))
        .join(chain, parent.c.id == chain.c.reply_to_id)
        .where(chain.c.depth < limit)
    )
    return (
        select(*_HISTORY_COLUMNS)
        .join(chain, _M.c.id == chain.c.id)
        .where(_M.c.status == "ok")
        .order_by(chain.c.depth.desc())
    )


def history(conn: Connection, message_id: int, limit: int) -> list[HistoryMessage]:
    """``message_id`` and up to ``limit`` ancestors in the conversation tree, oldest first."""
    rows = conn.execute(_history_query(limit), {"start": message_id})
    return [HistoryMessage(*row) for row in rows]


def conversation_thread(conn: Connection, conversation_id: int) -> str:
    found = conn.execute(select(_C.c.thread_id).where(_C.c.id == conversation_id))
    return found.scalar() or ""


def platform_ids(conn: Connection, message_id: int) -> list[str]:
    """Every platform message id that shows a reply, in order."""
    rows = conn.execute(
        select(_P.c.platform_message_id)
        .where(_P.c.message_id == message_id)
        .order_by(_P.c.part_index)
    )
    return [r[0] for r in rows]


def asked_of(conn: Connection, character: str, limit: int) -> list[str]:
    """The newest distinct texts users sent that ``character`` answered (an evaluation's
    real-message prompts), newest first, at most ``limit``."""
    reply = Message.__table__.alias("reply")
    query = (
        select(_M.c.text, _M.c.id)
        .join(reply, reply.c.reply_to_id == _M.c.id)
        .where(_M.c.role == "user", reply.c.role == "assistant")
        .where(reply.c.character == character)
        .order_by(_M.c.id.desc())
        .limit(limit * 4)
    )
    found: list[str] = []
    for text, _id in conn.execute(query):
        if text and text.strip() and text.strip() not in found:
            found.append(text.strip())
        if len(found) >= limit:
            break
    return found
