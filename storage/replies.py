"""Writing a character's reply: the row that reproduces it and the platform messages showing
it, and, while it streams, the ``streaming_replies`` row a crash leaves behind.

Every reply row is written by :func:`store_reply` — a finished reply, an error row, and a
reply cut off by a crash and finished at the next start alike.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import Connection, bindparam, delete, insert, update

from storage.records import NewReply, ReplyAddress
from storage.schema import Message, MessagePart, StreamingReply

_M = Message.__table__
_P = MessagePart.__table__
_SR = StreamingReply.__table__

_INSERT_REPLY = insert(_M).returning(_M.c.id)
_INSERT_PARTS = insert(_P)
_ANSWERED = (
    update(_M)
    .where(_M.c.id == bindparam("me"), _M.c.progress == "pending")
    .values(progress="answered")
)


def store_reply(
    conn: Connection,
    reply: NewReply,
    *,
    created_at: float,
    streaming_id: int | None = None,
    answers: int | None = None,
) -> int:
    """Insert ``reply`` and its parts in the caller's transaction; remove its streaming row
    ``streaming_id`` and mark the user message ``answers`` answered. Returns its row id.
    (``created_at`` is the caller's: a transaction retried keeps the time of the first try.)"""
    address = reply.address
    ids = list(reply.platform_message_ids)
    values = {
        "conversation_id": address.conversation_id,
        "platform": address.platform,
        "chat_id": address.chat_id,
        "platform_message_id": ids[0] if ids else None,
        "role": "assistant",
        "author_id": reply.author_id,
        "author_name": address.character,
        "text": reply.text,
        "reply_to_id": address.parent_id,
        "regenerated_from_id": reply.regenerated_from_id,
        "character": address.character,
        "lora_version": reply.lora_version,
        "model": reply.model,
        "prompt_json": json.dumps(list(reply.prompt), ensure_ascii=False) if reply.prompt else None,
        "sampling_json": json.dumps(reply.sampling) if reply.sampling else None,
        "latency_ms": reply.latency_ms,
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "status": reply.status,
        "error": reply.error,
        "created_at": created_at,
    }
    message_id = int(conn.execute(_INSERT_REPLY, values).scalar_one())
    if streaming_id is not None:
        conn.execute(delete(_SR).where(_SR.c.id == streaming_id))
    if answers is not None:
        conn.execute(_ANSWERED, {"me": answers})
    if ids:
        conn.execute(
            _INSERT_PARTS,
            [
                {
                    "message_id": message_id,
                    "platform": address.platform,
                    "chat_id": address.chat_id,
                    "platform_message_id": pid,
                    "part_index": index,
                }
                for index, pid in enumerate(ids)
            ],
        )
    return message_id


def begin_reply(
    conn: Connection, address: ReplyAddress, text: str, platform_message_id: str, started_at: float
) -> int:
    """Insert the streaming row of a reply whose first message is now on the platform."""
    values = {
        "conversation_id": address.conversation_id,
        "platform": address.platform,
        "chat_id": address.chat_id,
        "reply_to_id": address.parent_id,
        "character": address.character,
        "text": text,
        "platform_message_ids": json.dumps([platform_message_id]),
        "started_at": started_at,
    }
    return int(conn.execute(insert(_SR).values(values).returning(_SR.c.id)).scalar_one())


def save_progress(
    conn: Connection, streaming_id: int, text: str, platform_message_ids: Sequence[str]
) -> None:
    """The text shown so far of a streaming reply, and every message showing it."""
    values = {"text": text, "platform_message_ids": json.dumps(list(platform_message_ids))}
    conn.execute(update(_SR).where(_SR.c.id == streaming_id).values(values))
