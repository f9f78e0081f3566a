"""Version 4: ``lora_choices``, the LoRA version each character speaks with, as a history.

Every ``charbot adapters use`` (or ``/adapter`` on a platform) appends a row; ``rollback``
marks the newest live row as rolled back, so the one before it is current again. A running
bot polls the newest live row per character and switches when it changes, so the choice
survives restarts and reaches every process on the database. Frozen as written.
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
)


def migrate(conn: Connection) -> None:
    meta = MetaData()
    table = Table(
        "lora_choices",
        meta,
        Column("id", Integer, primary_key=True),
        Column("character", String(128), nullable=False),
        Column("version", String(128)),  # None: the bare base model
        Column("path", Text),
        Column("chosen_by", String(128), nullable=False),
        Column("chosen_at", Float, nullable=False),
        Column("rolled_back_at", Float),
    )
    table.create(conn)
    Index("ix_lora_choices_character", table.c.character, table.c.id).create(conn)
