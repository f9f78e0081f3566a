"""Version 7: ``paraphrases``, other wordings of the question a reply answered.

A corrected reply's question is asked again in other words when the next LoRA is evaluated,
to see whether the correction generalised rather than being learnt by rote. Each row rewords
the last user message of reply ``message_id``'s stored prompt. ``source`` says who wrote it:
``reviewer`` (the studio or a filled review file), ``generated`` (a model) or ``user``. The
same wording of one reply is stored once, so reading a review file twice changes nothing.
Frozen as written.
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
)


def migrate(conn: Connection) -> None:
    meta = MetaData()
    Table("messages", meta, Column("id", Integer, primary_key=True))  # for the foreign key
    Table(
        "paraphrases",
        meta,
        Column("id", Integer, primary_key=True),
        Column("message_id", Integer, ForeignKey("messages.id"), nullable=False),
        Column("text", Text, nullable=False),
        Column("source", String(16), nullable=False),
        Column("author", String(64), nullable=False),
        Column("created_at", Float, nullable=False),
        # Also the index that reads one reply's paraphrases (message_id leads).
        UniqueConstraint("message_id", "text", name="uq_paraphrase_text"),
    ).create(conn)
