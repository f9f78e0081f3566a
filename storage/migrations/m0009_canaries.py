"""Version 9: canaries, and the first value of each rating.

- ``canaries``: a candidate LoRA version that a sticky share of people meets while everyone
  else keeps the current one. The live canary of a character is its newest row with no
  ``ended_at``; ``outcome`` says how it ended (``promoted``, ``rolled back``, ``stopped``,
  ``replaced``). ``baseline`` is the version everyone else met when it started (None: the
  bare base model), the one the comparison holds the candidate against.
- ``ratings.first_value``: the first reaction a person gave a reply. ``value`` follows later
  changes (the export wants what the person thinks now); the online comparison counts the
  first, so that flipping a vote after seeing the other version changes nothing. NULL for
  rows from before this step: their ``value`` stands in for it.

Frozen as written.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)


def migrate(conn: Connection) -> None:
    meta = MetaData()
    table = Table(
        "canaries",
        meta,
        Column("id", Integer, primary_key=True),
        Column("character", String(128), nullable=False),
        Column("version", String(128), nullable=False),
        Column("path", Text, nullable=False),
        Column("share", Float, nullable=False),
        Column("baseline", String(128)),
        Column("started_by", String(128), nullable=False),
        Column("started_at", Float, nullable=False),
        Column("ended_at", Float),
        Column("ended_by", String(128)),
        Column("outcome", String(32)),
    )
    table.create(conn)
    Index("ix_canaries_character", table.c.character, table.c.id).create(conn)
    conn.execute(text("ALTER TABLE ratings ADD COLUMN first_value INTEGER"))
