"""Version 3: the review round trip — who wrote a correction, a reviewer's accepted one, and
replies a reviewer excluded from training data. Frozen as written.

``source`` says who wrote a correction: ``user`` (a chat participant), ``reviewer`` (someone
reviewing replies, e.g. in the studio) or ``import`` (a filled review file read back by
``charbot import-corrections``). An ``accepted`` correction wins over a newer one.
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
    UniqueConstraint,
    text,
)


def migrate(conn: Connection) -> None:
    """Add corrections.source and corrections.accepted; create exclusions."""
    # SQLite adds a NOT NULL column only with a default; the existing rows are users'.
    conn.execute(
        text("ALTER TABLE corrections ADD COLUMN source VARCHAR(16) DEFAULT 'user' NOT NULL")
    )
    conn.execute(text("ALTER TABLE corrections ADD COLUMN accepted BOOLEAN DEFAULT FALSE NOT NULL"))
    meta = MetaData()
    # The messages table as far as the foreign key needs it (it exists already).
    Table("messages", meta, Column("id", Integer, primary_key=True))
    Table(
        "exclusions",
        meta,
        Column("id", Integer, primary_key=True),
        Column("message_id", Integer, ForeignKey("messages.id"), nullable=False),
        Column("reason", Text, nullable=False),
        Column("excluded_by", String(64), nullable=False),
        Column("created_at", Float, nullable=False),
        UniqueConstraint("message_id", name="uq_exclusion_message"),
    ).create(conn)
