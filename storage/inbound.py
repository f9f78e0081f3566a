"""Storing a person's message: exactly once, in the chat's current conversation, linked to
the message it follows.

The statements here are on the per-message path and are built once: building a SQLAlchemy
statement costs more Python time than SQLite takes to run these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, insert, or_, select, update

from storage.conflicts import serialize
from storage.messages import find_shown
from storage.records import NewInbound, StoredInbound
from storage.schema import ChatState, Conversation, Message, clean_text

_M = Message.__table__
_C = Conversation.__table__
_S = ChatState.__table__

# The chat's (thread's) open conversation: keys platform, chat_id, thread_id ("" for none).
CURRENT_CONVERSATION = (
    select(_C.c.id)
    .where(_C.c.platform == bindparam("platform"), _C.c.chat_id == bindparam("chat_id"))
    .where(_C.c.thread_id == bindparam("thread_id"), _C.c.reset_at.is_(None))
    .order_by(_C.c.id.desc())
    .limit(1)
    .scalar_subquery()
)
_CHAT_CHARACTER = (
    select(_S.c.character)
    .where(_S.c.platform == bindparam("platform"), _S.c.chat_id == bindparam("chat_id"))
    .scalar_subquery()
)
_CHAT_LOOKUP = select(CURRENT_CONVERSATION.label("conversation"), _CHAT_CHARACTER.label("who"))
_LATEST_SETTLED = (
    # The newest successful message of the conversation that came before message :me: an
    # older message, or a reply to an older message. Messages still waiting behind it in
    # the chat's line are newer and are not replies, so they are never picked.
    select(func.max(_M.c.id))
    .where(_M.c.conversation_id == bindparam("conv"), _M.c.status == "ok")
    .where(_M.c.id != bindparam("me"))
    .where(
        or_(
            _M.c.id < bindparam("me"),
            and_(_M.c.role == "assistant", _M.c.reply_to_id < bindparam("me")),
        )
    )
    .scalar_subquery()
)
# The same when the line's order is not the arrival order (people take turns, see
# bot/sequencer.py): the newest successful message of the conversation that is not still
# waiting for its turn (:waiting, the caller's; nothing is being stored meanwhile).
_LATEST_TAKEN = (
    select(func.max(_M.c.id))
    .where(_M.c.conversation_id == bindparam("conv"), _M.c.status == "ok")
    .where(_M.c.id != bindparam("me"), _M.c.id.not_in(bindparam("waiting", expanding=True)))
    .scalar_subquery()
)
# The conversation :conv's newest message that is part of the story (no error rows).
LATEST_OK = (
    select(func.max(_M.c.id))
    .where(_M.c.conversation_id == bindparam("conv"), _M.c.status == "ok")
    .scalar_subquery()
)
_INSERT_MESSAGE = insert(_M).returning(_M.c.id, _M.c.reply_to_id)
_SAME_INBOUND = (
    # A redelivered event: the user message with this platform id in this chat.
    select(_M.c.id, _M.c.conversation_id, _M.c.reply_to_id)
    .where(_M.c.platform == bindparam("platform"), _M.c.chat_id == bindparam("chat_id"))
    .where(_M.c.platform_message_id == bindparam("pid"), _M.c.role == "user")
)
_INSERT_LINKED = insert(_M).values(reply_to_id=LATEST_OK).returning(_M.c.id, _M.c.reply_to_id)
_SETTLE = (
    update(_M)
    .where(_M.c.id == bindparam("me"))
    .values(reply_to_id=_LATEST_SETTLED)
    .returning(_M.c.reply_to_id)
)
_SETTLE_TAKEN = (
    update(_M)
    .where(_M.c.id == bindparam("me"))
    .values(reply_to_id=_LATEST_TAKEN)
    .returning(_M.c.reply_to_id)
)


def store_inbound(conn: Connection, message: NewInbound, link_now: bool) -> StoredInbound:
    """Store ``message`` in the caller's transaction (see :meth:`Store.store_inbound`)."""
    platform, chat_id = message.platform, message.chat_id
    if message.platform_message_id is not None:
        same = {"platform": platform, "chat_id": chat_id, "pid": message.platform_message_id}
        found = conn.execute(_SAME_INBOUND, same).first()
        if found is not None:
            return StoredInbound(
                conversation_id=found.conversation_id,
                message_id=found.id,
                parent_id=found.reply_to_id,
                linked=True,
                replied=None,
                chat_character=None,
                duplicate=True,
            )
    keys = {"platform": platform, "chat_id": chat_id, "thread_id": message.thread_id or ""}
    conversation, who = conn.execute(_CHAT_LOOKUP, keys).one()
    if conversation is None:
        conversation = start_conversation(conn, keys, message.created_at)
    replied = None
    if message.reply_to_platform_id is not None:
        replied = find_shown(conn, platform, chat_id, message.reply_to_platform_id)
    values: dict[str, Any] = {
        "conversation_id": conversation,
        "platform": platform,
        "chat_id": chat_id,
        "platform_message_id": message.platform_message_id,
        "role": "user",
        "author_id": message.author_id,
        "author_name": clean_text(message.author_name),
        "text": clean_text(message.text),
        "status": "ok",
        "created_at": message.created_at,
        "progress": "pending" if message.wants_answer else None,
        "wanted_character": message.wanted_character,
        "default_character": message.default_character,
    }
    if replied is None and link_now:
        statement = _INSERT_LINKED
        values["conv"] = conversation
    else:
        statement = _INSERT_MESSAGE
        values["reply_to_id"] = replied.id if replied is not None else None
    message_id, parent_id = conn.execute(statement, values).one()
    return StoredInbound(
        conversation_id=conversation,
        message_id=message_id,
        parent_id=parent_id,
        linked=replied is not None or link_now,
        replied=replied,
        chat_character=who,
    )


def start_conversation(conn: Connection, keys: dict[str, str], started_at: float) -> int:
    """Start the chat's next conversation (``keys`` as for :data:`CURRENT_CONVERSATION`),
    unless another process started it since the caller looked: then that one's id."""
    serialize(conn, "conversation", keys["platform"], keys["chat_id"], keys["thread_id"])
    current = conn.execute(select(CURRENT_CONVERSATION), keys).scalar()
    if current is not None:
        return int(current)
    started = conn.execute(insert(_C).values(**keys, started_at=started_at).returning(_C.c.id))
    return int(started.scalar_one())


def settle(
    conn: Connection,
    message_id: int,
    conversation_id: int,
    waiting: Sequence[int] | None = None,
) -> int | None:
    """Link ``message_id`` to the message before it; that parent's id (None: the first).
    ``waiting``: the messages of its chat still waiting for their turn (then "before" is
    "the newest of the rest", not "the newest older one")."""
    values: dict[str, Any] = {"me": message_id, "conv": conversation_id}
    if waiting is None:
        return conn.execute(_SETTLE, values).scalar_one()
    return conn.execute(_SETTLE_TAKEN, {**values, "waiting": list(waiting)}).scalar_one()


def set_progress(conn: Connection, message_ids: Sequence[int], progress: str | None) -> None:
    """Mark messages ``answered``, ``skipped``, ... (see ``Message.progress``)."""
    conn.execute(update(_M).where(_M.c.id.in_(list(message_ids))).values(progress=progress))
