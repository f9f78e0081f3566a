"""The database schema as SQLAlchemy 2 declarative models (the latest version).

Migrations (storage/migrations.py) create and change the real tables; these classes are the
schema the code expects once every migration has run.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy import text as sql  # `text` is a column name in Message
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Lone UTF-16 surrogates (no database encoding accepts them) and NUL (PostgreSQL's text
# refuses it).
_UNSTORABLE = re.compile("[\ud800-\udfff\x00]")


def clean_text(text: str) -> str:
    """``text`` with lone UTF-16 surrogates and NUL characters replaced by U+FFFD, so a
    message carrying one is stored (alike on every database) rather than dropped."""
    return _UNSTORABLE.sub("\ufffd", text) if _UNSTORABLE.search(text) else text


class CleanText(TypeDecorator[str]):
    """Text cleaned by :func:`clean_text` on the way in: replies, corrections and errors
    carry what a model or a user wrote, and one NUL would fail the whole write on
    PostgreSQL."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return clean_text(value) if isinstance(value, str) else value


class Base(DeclarativeBase):
    """Declarative base for charbot's tables."""


class Conversation(Base):
    """One conversation in one chat (and thread). A /reset ends it and starts the next."""

    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    chat_id: Mapped[str] = mapped_column(String(64))
    thread_id: Mapped[str] = mapped_column(String(64), default="")  # "" = no thread
    character: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[float] = mapped_column(Float)
    reset_at: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index("ix_conversations_chat", "platform", "chat_id", "thread_id"),)


class Message(Base):
    """A user message or a character's reply, with everything needed to reproduce a reply."""

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"))
    platform: Mapped[str] = mapped_column(String(32))
    chat_id: Mapped[str] = mapped_column(String(64))
    platform_message_id: Mapped[str | None] = mapped_column(String(64))  # first part
    role: Mapped[str] = mapped_column(String(16))  # "user" | "assistant"
    author_id: Mapped[str] = mapped_column(String(64))
    author_name: Mapped[str] = mapped_column(String(256))
    text: Mapped[str] = mapped_column(CleanText)
    # The message this one follows in the conversation tree: the replied-to message, or the
    # previous message of the conversation. Following it gives a reply's exact history.
    reply_to_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"))
    regenerated_from_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"))
    character: Mapped[str | None] = mapped_column(String(128))
    lora_version: Mapped[str | None] = mapped_column(String(128))
    model: Mapped[str | None] = mapped_column(String(256))
    prompt_json: Mapped[str | None] = mapped_column(Text)  # the exact chat messages sent
    sampling_json: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    # "ok" | "error" | "busy" | "interrupted" (cut off by a crash, finished at the next start)
    status: Mapped[str] = mapped_column(String(16), default="ok")
    error: Mapped[str | None] = mapped_column(CleanText)
    created_at: Mapped[float] = mapped_column(Float)
    # A user message asking for an answer (migration 2): "pending", then "answered" or
    # "skipped" (too old after a restart). What picks its character is kept with it.
    progress: Mapped[str | None] = mapped_column(String(16))
    wanted_character: Mapped[str | None] = mapped_column(String(128))
    default_character: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (
        Index("ix_messages_conversation", "conversation_id", "id"),
        Index("ix_messages_platform_id", "platform", "chat_id", "platform_message_id"),
        Index("ix_messages_character", "character"),
        # A redelivered platform event is never stored twice.
        Index(
            "uq_messages_inbound",
            "platform",
            "chat_id",
            "platform_message_id",
            unique=True,
            sqlite_where=sql("role = 'user'"),
            postgresql_where=sql("role = 'user'"),
        ),
        Index("ix_messages_progress", "progress"),
    )


class StreamingReply(Base):
    """A reply being shown on the platform, from its first message until it is stored in
    ``messages``. One left behind by a crash is finished at the next start."""

    __tablename__ = "streaming_replies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"))
    platform: Mapped[str] = mapped_column(String(32))
    chat_id: Mapped[str] = mapped_column(String(64))
    reply_to_id: Mapped[int] = mapped_column(ForeignKey("messages.id"))
    character: Mapped[str] = mapped_column(String(128))
    text: Mapped[str] = mapped_column(CleanText)  # shown so far, as last saved
    platform_message_ids: Mapped[str] = mapped_column(Text)  # a JSON list, in order
    started_at: Mapped[float] = mapped_column(Float)


class MessagePart(Base):
    """One platform message that shows (part of) a stored reply; a long reply has several."""

    __tablename__ = "message_parts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"))
    platform: Mapped[str] = mapped_column(String(32))
    chat_id: Mapped[str] = mapped_column(String(64))
    platform_message_id: Mapped[str] = mapped_column(String(64))
    part_index: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        UniqueConstraint("platform", "chat_id", "platform_message_id", name="uq_part_platform"),
        Index("ix_parts_message", "message_id"),
    )


class Vote(Base):
    """A 👍 (+1) or 👎 (-1) vote; one per user per reply (the table keeps its first name)."""

    __tablename__ = "ratings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"))
    user_id: Mapped[str] = mapped_column(String(64))
    value: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    # The first reaction (migration 9): what the online comparison counts; None on older rows.
    first_value: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (UniqueConstraint("message_id", "user_id", name="uq_rating_user"),)


class Correction(Base):
    """A better reply that a user or reviewer wrote for a stored reply."""

    __tablename__ = "corrections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"))
    user_id: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(CleanText)
    created_at: Mapped[float] = mapped_column(Float)
    # Who wrote it: "user" | "reviewer" | "import" (a filled review file read back).
    source: Mapped[str] = mapped_column(String(16), default="user", server_default="user")
    # A reviewer's accepted correction wins over the newest one.
    accepted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (Index("ix_corrections_message", "message_id"),)


class Paraphrase(Base):
    """Another wording of the question a reply answered (the last user message of its
    stored prompt), asked again when the next LoRA is evaluated (migration 7)."""

    __tablename__ = "paraphrases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"))
    text: Mapped[str] = mapped_column(CleanText)
    source: Mapped[str] = mapped_column(String(16))  # "reviewer" | "generated" | "user"
    author: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("message_id", "text", name="uq_paraphrase_text"),)


class Exclusion(Base):
    """A reply a reviewer excluded from training data: no export ever includes it."""

    __tablename__ = "exclusions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"))
    reason: Mapped[str] = mapped_column(CleanText)
    excluded_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("message_id", name="uq_exclusion_message"),)


class SwipeChoice(Base):
    """Which sibling a person kept after swiping: the conversation continued from
    ``kept_id``; the other replies to ``parent_id`` were swiped away."""

    __tablename__ = "swipe_choices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kept_id: Mapped[int] = mapped_column(ForeignKey("messages.id"))
    parent_id: Mapped[int] = mapped_column(ForeignKey("messages.id"))
    user_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_swipe_choices_parent", "parent_id"),)


class ChatState(Base):
    """Per-chat settings that must survive restarts: the chat's current character."""

    __tablename__ = "chat_state"

    platform: Mapped[str] = mapped_column(String(32), primary_key=True)
    chat_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    character: Mapped[str | None] = mapped_column(String(128))
    updated_at: Mapped[float] = mapped_column(Float)


class SceneMember(Base):
    """A character present in a chat's scene beside the chat's current one (``/join``);
    it sees the chat's lines after ``joined_after`` (a message id; 0: all)."""

    __tablename__ = "scene_members"

    platform: Mapped[str] = mapped_column(String(32), primary_key=True)
    chat_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    character: Mapped[str] = mapped_column(String(128), primary_key=True)
    joined_after: Mapped[int] = mapped_column(Integer)
    joined_at: Mapped[float] = mapped_column(Float)


class LoraChoice(Base):
    """One choice of a character's LoRA version; the newest not rolled back is current."""

    __tablename__ = "lora_choices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    character: Mapped[str] = mapped_column(String(128))
    version: Mapped[str | None] = mapped_column(String(128))  # None: the bare base model
    path: Mapped[str | None] = mapped_column(Text)
    chosen_by: Mapped[str] = mapped_column(String(128))
    chosen_at: Mapped[float] = mapped_column(Float)
    rolled_back_at: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index("ix_lora_choices_character", "character", "id"),)


class Canary(Base):
    """A candidate version met by a sticky share of people (migration 9); the newest row of
    a character without ``ended_at`` is live."""

    __tablename__ = "canaries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    character: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    path: Mapped[str] = mapped_column(Text)
    share: Mapped[float] = mapped_column(Float)
    baseline: Mapped[str | None] = mapped_column(String(128))  # None: the bare base model
    started_by: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float)
    ended_by: Mapped[str | None] = mapped_column(String(128))
    outcome: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (Index("ix_canaries_character", "character", "id"),)


class MessageVector(Base):
    """A stored message's embedding (float16 bytes) for recall, with its chat and thread
    (migration 8)."""

    __tablename__ = "memory_vectors"

    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    chat_id: Mapped[str] = mapped_column(String(64))
    thread_id: Mapped[str] = mapped_column(String(64))
    embedder: Mapped[str] = mapped_column(String(64))
    vector: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (
        Index(
            "ix_memory_vectors_chat", "platform", "chat_id", "thread_id", "embedder", "message_id"
        ),
    )


class Summary(Base):
    """One extension of a conversation's story so far, covering messages
    ``first_message_id``..``last_message_id``; the newest row is current (migration 8)."""

    __tablename__ = "summaries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"))
    first_message_id: Mapped[int] = mapped_column(Integer)
    last_message_id: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(CleanText)
    model: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        UniqueConstraint("conversation_id", "last_message_id", name="uq_summary_range"),
    )


class PersonNote(Base):
    """What a character knows about a person: ``shared`` notes go wherever that person
    speaks with the character, ``private`` ones only into ``chat_id`` (migration 8)."""

    __tablename__ = "person_notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    character: Mapped[str] = mapped_column(String(128))
    platform: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(CleanText)
    scope: Mapped[str] = mapped_column(String(16))  # "shared" | "private"
    chat_id: Mapped[str] = mapped_column(String(64))  # where it was made
    source: Mapped[str] = mapped_column(String(16))  # "user" | "model" | "rules" | "studio"
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"))
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_person_notes_person", "character", "platform", "user_id"),)


class ForgottenPerson(Base):
    """A person forgotten with ``charbot forget-user``: never embedded or summarised again
    (migration 8)."""

    __tablename__ = "forgotten_people"

    platform: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(64))
    forgotten_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (PrimaryKeyConstraint("platform", "user_id"),)
