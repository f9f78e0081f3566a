"""The SQL of memory: message vectors, summaries, notes about people, forgetting a person.

Functions on a connection the caller holds (``store.read`` / ``store.write``); records of
:mod:`storage.records` out. Vectors leave as the bytes stored; what they mean (float16 of
one embedder) is bot.recall's business.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, and_, delete, exists, func, insert, select, update

from storage.conflicts import insert_new, serialize, upsert
from storage.records import ChatSummary, Forgotten, MemoryMessage, StoredNote, StoredSummary
from storage.schema import (
    Conversation,
    ForgottenPerson,
    Message,
    MessageVector,
    PersonNote,
    Summary,
)

_M = Message.__table__
_C = Conversation.__table__
_V = MessageVector.__table__
_S = Summary.__table__
_N = PersonNote.__table__
_F = ForgottenPerson.__table__

_MESSAGE_COLUMNS = (
    _M.c.id,
    _M.c.conversation_id,
    _M.c.platform,
    _M.c.chat_id,
    _C.c.thread_id,
    _M.c.role,
    _M.c.author_id,
    _M.c.author_name,
    _M.c.character,
    _M.c.text,
    _M.c.created_at,
)
_SUMMARY_COLUMNS = tuple(_S.c[name] for name in StoredSummary.__slots__)  # type: ignore[attr-defined]
_NOTE_COLUMNS = tuple(_N.c[name] for name in StoredNote.__slots__)  # type: ignore[attr-defined]


def _not_forgotten() -> Any:
    """A user message whose author was not forgotten (replies always pass)."""
    forgotten = (
        select(_F.c.user_id)
        .where(_F.c.platform == _M.c.platform, _F.c.user_id == _M.c.author_id)
        .exists()
    )
    return (_M.c.role != "user") | ~forgotten


def _remembered() -> Any:
    """Messages memory may use: shown ones (status ok) with text, of people not forgotten."""
    return and_(
        _M.c.status == "ok", _M.c.role.in_(("user", "assistant")), _M.c.text != "", _not_forgotten()
    )


# -- vectors --------------------------------------------------------------------------------


def unembedded(conn: Connection, embedder: str, limit: int) -> list[MemoryMessage]:
    """Up to ``limit`` messages with no vector of ``embedder``, oldest first."""
    has_vector = exists().where(_V.c.message_id == _M.c.id, _V.c.embedder == embedder)
    query = (
        select(*_MESSAGE_COLUMNS)
        .join(_C, _C.c.id == _M.c.conversation_id)
        .where(_remembered(), ~has_vector)
        .order_by(_M.c.id)
        .limit(limit)
    )
    return [MemoryMessage(*row) for row in conn.execute(query)]


def count_unembedded(conn: Connection, embedder: str) -> int:
    has_vector = exists().where(_V.c.message_id == _M.c.id, _V.c.embedder == embedder)
    query = select(func.count()).select_from(_M).where(_remembered(), ~has_vector)
    return int(conn.execute(query).scalar() or 0)


def add_vectors(
    conn: Connection, embedder: str, rows: Sequence[tuple[MemoryMessage, bytes]]
) -> int:
    """Store each message's vector; one already stored (another process, an older
    embedder's) is replaced. Returns the rows written."""
    if not rows:
        return 0
    by_id = {message.id: _vector_row(embedder, message, vector) for message, vector in rows}
    upsert(conn, _V, list(by_id.values()), key=("message_id",))
    return len(rows)


def _vector_row(embedder: str, message: MemoryMessage, vector: bytes) -> dict[str, Any]:
    return {
        "message_id": message.id,
        "platform": message.platform,
        "chat_id": message.chat_id,
        "thread_id": message.thread_id,
        "embedder": embedder,
        "vector": vector,
    }


def chat_vector_count(
    conn: Connection, platform: str, chat_id: str, thread_id: str, embedder: str
) -> tuple[int, int]:
    """(rows, newest message id) of one chat's vectors: a cache is stale when they differ."""
    query = select(func.count(), func.max(_V.c.message_id)).where(
        _V.c.platform == platform,
        _V.c.chat_id == chat_id,
        _V.c.thread_id == thread_id,
        _V.c.embedder == embedder,
    )
    count, newest = conn.execute(query).one()
    return int(count or 0), int(newest or 0)


def chat_vectors(
    conn: Connection, platform: str, chat_id: str, thread_id: str, embedder: str, after: int = 0
) -> list[tuple[int, bytes]]:
    """(message id, vector bytes) of one chat's messages newer than ``after``, oldest first."""
    query = (
        select(_V.c.message_id, _V.c.vector)
        .where(_V.c.platform == platform, _V.c.chat_id == chat_id)
        .where(_V.c.thread_id == thread_id, _V.c.embedder == embedder)
        .where(_V.c.message_id > after)
        .order_by(_V.c.message_id)
    )
    return [(int(row[0]), bytes(row[1])) for row in conn.execute(query)]


def drop_vectors(conn: Connection, platform: str | None = None, chat_id: str | None = None) -> int:
    """Remove the vectors of one chat, of one platform, or all; the rows removed."""
    query = delete(_V)
    if platform is not None:
        query = query.where(_V.c.platform == platform)
    if chat_id is not None:
        query = query.where(_V.c.chat_id == chat_id)
    return conn.execute(query).rowcount or 0


def messages_by_id(conn: Connection, ids: Iterable[int]) -> list[MemoryMessage]:
    """The messages ``ids`` that memory may still use, oldest first."""
    query = (
        select(*_MESSAGE_COLUMNS)
        .join(_C, _C.c.id == _M.c.conversation_id)
        .where(_M.c.id.in_(list(ids)), _remembered())
        .order_by(_M.c.id)
    )
    return [MemoryMessage(*row) for row in conn.execute(query)]


def conversation_messages(
    conn: Connection, conversation_id: int, after: int = 0, limit: int = 200
) -> list[MemoryMessage]:
    """A conversation's messages memory may use, newer than ``after``, oldest first. (All
    branches: a regenerated sibling is a message of the conversation too.)"""
    query = (
        select(*_MESSAGE_COLUMNS)
        .join(_C, _C.c.id == _M.c.conversation_id)
        .where(_M.c.conversation_id == conversation_id, _M.c.id > after, _remembered())
        .order_by(_M.c.id)
        .limit(limit)
    )
    return [MemoryMessage(*row) for row in conn.execute(query)]


# -- summaries ------------------------------------------------------------------------------


def latest_summary(conn: Connection, conversation_id: int) -> StoredSummary | None:
    query = (
        select(*_SUMMARY_COLUMNS)
        .where(_S.c.conversation_id == conversation_id)
        .order_by(_S.c.last_message_id.desc(), _S.c.id.desc())
        .limit(1)
    )
    row = conn.execute(query).first()
    return None if row is None else StoredSummary(*row)


def add_summary(
    conn: Connection,
    conversation_id: int,
    first_message_id: int,
    last_message_id: int,
    text: str,
    model: str,
    now: float,
) -> int | None:
    """Store an extension; None when one over the same range is stored already."""
    row = {
        "conversation_id": conversation_id,
        "first_message_id": first_message_id,
        "last_message_id": last_message_id,
        "text": text,
        "model": model,
        "created_at": now,
    }
    inserted = insert_new(conn, _S, row, key=("conversation_id", "last_message_id"))
    return inserted[0] if inserted else None


def set_summary_text(conn: Connection, summary_id: int, text: str) -> bool:
    """A person's edit of a summary (the studio): the same range, their words."""
    return bool(conn.execute(update(_S).where(_S.c.id == summary_id).values(text=text)).rowcount)


def delete_summaries(conn: Connection, conversation_id: int) -> int:
    """Remove a conversation's summaries: the next job summarises it from its start."""
    return conn.execute(delete(_S).where(_S.c.conversation_id == conversation_id)).rowcount or 0


def list_summaries(conn: Connection, conversation_id: int | None = None) -> list[StoredSummary]:
    """Every summary row (of one conversation), oldest first."""
    query = select(*_SUMMARY_COLUMNS).order_by(_S.c.conversation_id, _S.c.last_message_id)
    if conversation_id is not None:
        query = query.where(_S.c.conversation_id == conversation_id)
    return [StoredSummary(*row) for row in conn.execute(query)]


def current_summaries(
    conn: Connection,
    *,
    platform: str | None = None,
    chat_id: str | None = None,
    character: str | None = None,
    author_id: str | None = None,
) -> list[ChatSummary]:
    """Each conversation's current summary (its newest row) with its chat, by conversation:
    of one platform or chat, of conversations ``character`` replied in (any case), of
    conversations person ``author_id`` (on ``platform``) wrote in."""
    newest = (
        select(_S.c.conversation_id, func.max(_S.c.last_message_id).label("last"))
        .group_by(_S.c.conversation_id)
        .subquery()
    )
    query = (
        select(*_SUMMARY_COLUMNS, _C.c.platform, _C.c.chat_id, _C.c.thread_id)
        .join(
            newest,
            and_(
                newest.c.conversation_id == _S.c.conversation_id,
                newest.c.last == _S.c.last_message_id,
            ),
        )
        .join(_C, _C.c.id == _S.c.conversation_id)
        .order_by(_S.c.conversation_id)
    )
    if platform is not None:
        query = query.where(_C.c.platform == platform)
    if chat_id is not None:
        query = query.where(_C.c.chat_id == chat_id)
    in_it = _M.c.conversation_id == _S.c.conversation_id
    if character is not None:
        replied = and_(in_it, _M.c.role == "assistant")
        query = query.where(
            exists().where(replied, func.lower(_M.c.character) == character.lower())
        )
    if author_id is not None:
        query = query.where(exists().where(in_it, _M.c.role == "user", _M.c.author_id == author_id))
    width = len(_SUMMARY_COLUMNS)
    return [ChatSummary(StoredSummary(*row[:width]), *row[width:]) for row in conn.execute(query)]


# -- notes ----------------------------------------------------------------------------------


def add_note(conn: Connection, note: StoredNote) -> int:
    """Store ``note`` (its id is ignored); the new id."""
    values = {name: getattr(note, name) for name in StoredNote.__slots__ if name != "id"}  # type: ignore[attr-defined]
    return int(conn.execute(insert(_N).values(**values)).inserted_primary_key[0])


def lock_person_notes(conn: Connection, character: str, platform: str, user_id: str) -> None:
    """Make the caller's transaction the only one checking and changing this person's notes
    with ``character`` until it ends (another process adding the same note waits, then
    finds it): call it before :func:`person_notes` in a write."""
    serialize(conn, "person_notes", character, platform, user_id)


def person_notes(
    conn: Connection, character: str | None, platform: str, user_id: str
) -> list[StoredNote]:
    """A person's notes (with one character, or all), oldest first."""
    query = (
        select(*_NOTE_COLUMNS)
        .where(_N.c.platform == platform, _N.c.user_id == user_id)
        .order_by(_N.c.id)
    )
    if character is not None:
        query = query.where(_N.c.character == character)
    return [StoredNote(*row) for row in conn.execute(query)]


def list_notes(conn: Connection, character: str | None = None) -> list[StoredNote]:
    query = select(*_NOTE_COLUMNS).order_by(_N.c.id)
    if character is not None:
        query = query.where(_N.c.character == character)
    return [StoredNote(*row) for row in conn.execute(query)]


def notes_by_id(conn: Connection, note_ids: Iterable[int]) -> list[StoredNote]:
    query = select(*_NOTE_COLUMNS).where(_N.c.id.in_(list(note_ids))).order_by(_N.c.id)
    return [StoredNote(*row) for row in conn.execute(query)]


def set_note_text(conn: Connection, note_id: int, text: str) -> bool:
    return bool(conn.execute(update(_N).where(_N.c.id == note_id).values(text=text)).rowcount)


def delete_notes(conn: Connection, note_ids: Iterable[int]) -> int:
    return conn.execute(delete(_N).where(_N.c.id.in_(list(note_ids)))).rowcount or 0


# -- forgetting a person --------------------------------------------------------------------


def forget_person(conn: Connection, platform: str, user_id: str, now: float) -> Forgotten:
    """Remove a person's notes (with every character), their messages' vectors and every
    summary of a conversation they wrote in; mark them forgotten, so that nothing of theirs
    is embedded or summarised again. Their messages themselves stay (the conversation
    history and training data; the operator deletes those separately)."""
    theirs = select(_M.c.id).where(
        _M.c.platform == platform, _M.c.author_id == user_id, _M.c.role == "user"
    )
    conversations = [
        row[0]
        for row in conn.execute(
            select(_M.c.conversation_id)
            .where(_M.c.platform == platform, _M.c.author_id == user_id, _M.c.role == "user")
            .distinct()
        )
    ]
    notes = conn.execute(
        delete(_N).where(_N.c.platform == platform, _N.c.user_id == user_id)
    ).rowcount
    vectors = conn.execute(delete(_V).where(_V.c.message_id.in_(theirs))).rowcount
    summaries = 0
    if conversations:
        summaries = conn.execute(delete(_S).where(_S.c.conversation_id.in_(conversations))).rowcount
    row = {"platform": platform, "user_id": user_id, "forgotten_at": now}
    upsert(conn, _F, row, key=("platform", "user_id"))
    return Forgotten(notes or 0, vectors or 0, summaries or 0, len(conversations))


def is_forgotten(conn: Connection, platform: str, user_id: str) -> bool:
    query = select(_F.c.user_id).where(_F.c.platform == platform, _F.c.user_id == user_id)
    return conn.execute(query).first() is not None


def drop_message_vectors(conn: Connection, message_ids: Iterable[int]) -> int:
    """Remove the vectors of these messages (unreadable ones, to be embedded again)."""
    return conn.execute(delete(_V).where(_V.c.message_id.in_(list(message_ids)))).rowcount or 0
