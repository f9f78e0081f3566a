"""Version 10: scenes — the characters who joined a chat's scene with /join.

- ``scene_members``: one row per character present in a chat beside its current character,
  with ``joined_after``: the newest message of the chat when it joined (0: from the start),
  so a character that joins mid-scene is never shown the lines spoken before.

Frozen as written.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Connection,
    Float,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
)


def migrate(conn: Connection) -> None:
    meta = MetaData()
    Table(
        "scene_members",
        meta,
        Column("platform", String(32), nullable=False),
        Column("chat_id", String(64), nullable=False),
        Column("character", String(128), nullable=False),
        Column("joined_after", Integer, nullable=False),
        Column("joined_at", Float, nullable=False),
        PrimaryKeyConstraint("platform", "chat_id", "character"),
    )
    meta.create_all(conn)
