"""Version 8: memory — message vectors, rolling summaries, notes about people, and the
people who asked to be forgotten.

- ``memory_vectors``: one embedding per stored message (float16 bytes), keyed by the
  message, with its chat and thread so recall reads one chat's rows by index.
- ``summaries``: the story so far of a conversation, one row per extension, with the range
  of messages it covers; the newest row of a conversation is current.
- ``person_notes``: what a character knows about a person (platform user). ``scope`` is
  ``shared`` (anywhere that person speaks with the character) or ``private`` (only in
  ``chat_id``, the private chat it was made in).
- ``forgotten_people``: a person whose notes, vectors and summaries were removed; their
  messages are never embedded or summarised again.

Frozen as written.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)


def migrate(conn: Connection) -> None:
    meta = MetaData()
    Table("messages", meta, Column("id", Integer, primary_key=True))  # for the foreign keys
    Table("conversations", meta, Column("id", Integer, primary_key=True))
    vectors = Table(
        "memory_vectors",
        meta,
        Column("message_id", Integer, ForeignKey("messages.id"), primary_key=True),
        Column("platform", String(32), nullable=False),
        Column("chat_id", String(64), nullable=False),
        Column("thread_id", String(64), nullable=False),
        Column("embedder", String(64), nullable=False),
        Column("vector", LargeBinary, nullable=False),
    )
    summaries = Table(
        "summaries",
        meta,
        Column("id", Integer, primary_key=True),
        Column("conversation_id", Integer, ForeignKey("conversations.id"), nullable=False),
        Column("first_message_id", Integer, nullable=False),
        Column("last_message_id", Integer, nullable=False),
        Column("text", Text, nullable=False),
        Column("model", String(256), nullable=False),
        Column("created_at", Float, nullable=False),
        # Two processes extending one summary over one range store it once.
        UniqueConstraint("conversation_id", "last_message_id", name="uq_summary_range"),
    )
    notes = Table(
        "person_notes",
        meta,
        Column("id", Integer, primary_key=True),
        Column("character", String(128), nullable=False),
        Column("platform", String(32), nullable=False),
        Column("user_id", String(64), nullable=False),
        Column("text", Text, nullable=False),
        Column("scope", String(16), nullable=False),
        Column("chat_id", String(64), nullable=False),
        Column("source", String(16), nullable=False),
        Column("message_id", Integer, ForeignKey("messages.id")),
        Column("created_at", Float, nullable=False),
    )
    Table(
        "forgotten_people",
        meta,
        Column("platform", String(32), nullable=False),
        Column("user_id", String(64), nullable=False),
        Column("forgotten_at", Float, nullable=False),
        PrimaryKeyConstraint("platform", "user_id"),
    )
    for table in meta.sorted_tables:
        if table.name not in ("messages", "conversations"):
            table.create(conn)
    # Recall counts and reads one chat's rows of one embedder: all of it in the index.
    Index(
        "ix_memory_vectors_chat",
        vectors.c.platform,
        vectors.c.chat_id,
        vectors.c.thread_id,
        vectors.c.embedder,
        vectors.c.message_id,
    ).create(conn)
    del summaries  # its unique constraint is also the index that finds the newest
    Index("ix_person_notes_person", notes.c.character, notes.c.platform, notes.c.user_id).create(
        conn
    )
