"""Version 1: the tables as the first release made them, frozen here.

Written out rather than taken from ``storage.schema``: that module describes the latest
schema, and creating it here would make later columns appear before their migration.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)


def _tables() -> MetaData:
    meta = MetaData()
    Table(
        "conversations",
        meta,
        Column("id", Integer, primary_key=True),
        Column("platform", String(32), nullable=False),
        Column("chat_id", String(64), nullable=False),
        Column("thread_id", String(64), nullable=False),
        Column("character", String(128)),
        Column("started_at", Float, nullable=False),
        Column("reset_at", Float),
        Index("ix_conversations_chat", "platform", "chat_id", "thread_id"),
    )
    Table(
        "messages",
        meta,
        Column("id", Integer, primary_key=True),
        Column("conversation_id", Integer, ForeignKey("conversations.id"), nullable=False),
        Column("platform", String(32), nullable=False),
        Column("chat_id", String(64), nullable=False),
        Column("platform_message_id", String(64)),
        Column("role", String(16), nullable=False),
        Column("author_id", String(64), nullable=False),
        Column("author_name", String(256), nullable=False),
        Column("text", Text, nullable=False),
        Column("reply_to_id", Integer, ForeignKey("messages.id")),
        Column("regenerated_from_id", Integer, ForeignKey("messages.id")),
        Column("character", String(128)),
        Column("adapter_version", String(128)),
        Column("model", String(256)),
        Column("prompt_json", Text),
        Column("sampling_json", Text),
        Column("latency_ms", Float),
        Column("prompt_tokens", Integer),
        Column("completion_tokens", Integer),
        Column("status", String(16), nullable=False),
        Column("error", Text),
        Column("created_at", Float, nullable=False),
        Index("ix_messages_conversation", "conversation_id", "id"),
        Index("ix_messages_platform_id", "platform", "chat_id", "platform_message_id"),
        Index("ix_messages_character", "character"),
    )
    Table(
        "message_parts",
        meta,
        Column("id", Integer, primary_key=True),
        Column("message_id", Integer, ForeignKey("messages.id"), nullable=False),
        Column("platform", String(32), nullable=False),
        Column("chat_id", String(64), nullable=False),
        Column("platform_message_id", String(64), nullable=False),
        Column("part_index", Integer, nullable=False),
        UniqueConstraint("platform", "chat_id", "platform_message_id", name="uq_part_platform"),
        Index("ix_parts_message", "message_id"),
    )
    Table(
        "ratings",
        meta,
        Column("id", Integer, primary_key=True),
        Column("message_id", Integer, ForeignKey("messages.id"), nullable=False),
        Column("user_id", String(64), nullable=False),
        Column("value", Integer, nullable=False),
        Column("created_at", Float, nullable=False),
        Column("updated_at", Float, nullable=False),
        UniqueConstraint("message_id", "user_id", name="uq_rating_user"),
    )
    Table(
        "corrections",
        meta,
        Column("id", Integer, primary_key=True),
        Column("message_id", Integer, ForeignKey("messages.id"), nullable=False),
        Column("user_id", String(64), nullable=False),
        Column("text", Text, nullable=False),
        Column("created_at", Float, nullable=False),
        Index("ix_corrections_message", "message_id"),
    )
    Table(
        "chat_state",
        meta,
        Column("platform", String(32), primary_key=True),
        Column("chat_id", String(64), primary_key=True),
        Column("character", String(128)),
        Column("updated_at", Float, nullable=False),
    )
    return meta


def migrate(conn: Connection) -> None:
    """Create the first version of every table."""
    _tables().create_all(conn)
