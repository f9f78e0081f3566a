"""What a person used of the bot: the replies to their messages since a moment, for their
limits (bot/limits.py). Read once per person and day by a running bot; it counts on from
there itself."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, and_, bindparam, select
from sqlalchemy.orm import aliased

from storage.schema import Message

_R = Message.__table__
_U = aliased(Message.__table__)


@dataclass(frozen=True, slots=True)
class Answered:
    """One reply to one of the person's messages (a regenerated one is not counted)."""

    chat_id: str
    created_at: float
    completion_tokens: int


_REPLIES_SINCE = (
    select(_U.c.chat_id, _R.c.created_at, _R.c.completion_tokens)
    .join(_U, and_(_U.c.id == _R.c.reply_to_id, _U.c.role == "user"))
    .where(_U.c.platform == bindparam("platform"), _U.c.author_id == bindparam("author"))
    .where(_R.c.role == "assistant", _R.c.regenerated_from_id.is_(None))
    .where(_R.c.created_at >= bindparam("since"))
)


def replies_since(conn: Connection, platform: str, author_id: str, since: float) -> list[Answered]:
    """The replies to ``author_id``'s messages on ``platform`` written since ``since``."""
    values = {"platform": platform, "author": author_id, "since": since}
    return [
        Answered(r.chat_id, r.created_at, r.completion_tokens or 0)
        for r in conn.execute(_REPLIES_SINCE, values)
    ]
