"""Version 5: ``swipe_choices``, which of a message's sibling replies a person kept.

When a conversation continues after someone paged through sibling replies (swipes), the
sibling it continues from is the kept one and its siblings — the other replies to
``parent_id`` — are the ones swiped away: a preference pair for training. Frozen as written.
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
)


def migrate(conn: Connection) -> None:
    meta = MetaData()
    Table("messages", meta, Column("id", Integer, primary_key=True))  # for the foreign keys
    table = Table(
        "swipe_choices",
        meta,
        Column("id", Integer, primary_key=True),
        Column("kept_id", Integer, ForeignKey("messages.id"), nullable=False),
        Column("parent_id", Integer, ForeignKey("messages.id"), nullable=False),
        Column("user_id", String(64), nullable=False),
        Column("created_at", Float, nullable=False),
    )
    table.create(conn)
    Index("ix_swipe_choices_parent", table.c.parent_id).create(conn)
