"""Version 6: ``messages.adapter_version`` is renamed ``lora_version`` (a LoRA is a "lora"
everywhere in the code; "adapter" is the platform edge). Frozen as written."""

from __future__ import annotations

from sqlalchemy import Connection, text


def migrate(conn: Connection) -> None:
    # SQLite (3.25 and later) and PostgreSQL both rename in place; the values and the
    # indexes over the column are kept.
    conn.execute(text("ALTER TABLE messages RENAME COLUMN adapter_version TO lora_version"))
