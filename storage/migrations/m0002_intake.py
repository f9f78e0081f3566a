"""Version 2: crash-safe intake. Frozen as written.

- ``messages.progress``: where a user message that asks for an answer stands: ``pending``
  until it is ``answered``, or ``skipped`` when it waited longer than
  ``[bot] answer_backlog_minutes`` across a restart.
- ``streaming_replies``: a reply being shown on the platform, from its first message until
  it is stored in ``messages``; one left behind by a crash is finished at the next start.
- ``messages.wanted_character`` / ``messages.default_character``: what picks the character
  of a pending message (an explicit choice, the adapter's default for that chat), so a
  restart answers it as it would have been answered.
- A unique index on inbound user messages' (platform, chat_id, platform_message_id): a
  redelivered event can never be stored twice. Partial (``WHERE role = 'user'``), which
  SQLite and PostgreSQL both support; replies keep their ids in ``message_parts``.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Connection,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)


def migrate(conn: Connection) -> None:
    """Add the intake columns and indexes; older duplicates lose their platform id."""
    conn.execute(text("ALTER TABLE messages ADD COLUMN progress VARCHAR(16)"))
    conn.execute(text("ALTER TABLE messages ADD COLUMN wanted_character VARCHAR(128)"))
    conn.execute(text("ALTER TABLE messages ADD COLUMN default_character VARCHAR(128)"))
    # Databases written before this step may hold redelivered duplicates. The rows stay (they
    # are part of the conversation); all but the first lose the platform id, which NULL-
    # distinct unique indexes on both databases then allow.
    conn.execute(
        text(
            "UPDATE messages SET platform_message_id = NULL "
            "WHERE role = 'user' AND platform_message_id IS NOT NULL AND id NOT IN ("
            "SELECT MIN(id) FROM messages WHERE role = 'user' "
            "AND platform_message_id IS NOT NULL "
            "GROUP BY platform, chat_id, platform_message_id)"
        )
    )
    conn.execute(
        text(
            "CREATE UNIQUE INDEX uq_messages_inbound "
            "ON messages (platform, chat_id, platform_message_id) WHERE role = 'user'"
        )
    )
    conn.execute(text("CREATE INDEX ix_messages_progress ON messages (progress)"))
    meta = MetaData()
    # The referenced tables as far as the foreign keys need them (they exist already).
    Table("messages", meta, Column("id", Integer, primary_key=True))
    Table("conversations", meta, Column("id", Integer, primary_key=True))
    Table(
        "streaming_replies",
        meta,
        Column("id", Integer, primary_key=True),
        Column("conversation_id", Integer, ForeignKey("conversations.id"), nullable=False),
        Column("platform", String(32), nullable=False),
        Column("chat_id", String(64), nullable=False),
        Column("reply_to_id", Integer, ForeignKey("messages.id"), nullable=False),
        Column("character", String(128), nullable=False),
        Column("text", Text, nullable=False),
        Column("platform_message_ids", Text, nullable=False),
        Column("started_at", Float, nullable=False),
    ).create(conn)
