"""Votes: one person's 👍 (+1) or 👎 (-1) on one reply (the ``ratings`` table), how they
are counted, and what a count means.

Both rules are defined here once and used by every query: :func:`vote_counts` is the only
place that counts 👍 and 👎, and :class:`VoteRule` decides what a reply's count means — for
the export in Python and for the review queue in SQL, from the same terms.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import (
    ColumnElement,
    Connection,
    FromClause,
    Select,
    and_,
    case,
    delete,
    func,
    select,
)

from storage.conflicts import upsert
from storage.records import StoredVote
from storage.schema import Vote

_V = Vote.__table__

# In StoredVote's field order.
_VOTE_COLUMNS = (
    _V.c.id,
    _V.c.message_id,
    _V.c.user_id,
    _V.c.value,
    _V.c.created_at,
    _V.c.updated_at,
)

THUMBS_DOWN = ("net", "any")  # a reply is 👎 when its net score < 0 | it has any 👎


def vote_counts(*keys: ColumnElement[Any]) -> Select[Any]:
    """``keys``, then the 👍 and 👎 among their votes as ``up`` and ``down``, grouped by
    ``keys``. Per reply: ``vote_counts(ratings.c.message_id)``; per character or version,
    join ``messages`` on ``message_id`` and pass its columns."""
    up = func.sum(case((_V.c.value > 0, 1), else_=0)).label("up")
    down = func.sum(case((_V.c.value < 0, 1), else_=0)).label("down")
    return select(*keys, up, down).select_from(_V).group_by(*keys)


class Tally(Protocol):
    """Anything with a reply's vote counts (storage.feedback.FeedbackRow)."""

    @property
    def up(self) -> int: ...

    @property
    def down(self) -> int: ...


@dataclass(frozen=True, slots=True)
class VoteRule:
    """What the votes on a reply mean: the one place where 👍/👎 are decided.

    :meth:`good` and :meth:`bad` judge one reply's counts; :meth:`good_where` and
    :meth:`bad_where` are the same rule as SQL over :func:`vote_counts` — both are built
    from one list of terms, so they cannot drift apart.
    """

    thumbs_down: str = "net"
    min_votes: int = 0  # replies with fewer votes count only through their corrections

    def __post_init__(self) -> None:
        if self.thumbs_down not in THUMBS_DOWN:
            raise ValueError(f"thumbs-down rule {self.thumbs_down!r}; use net or any")

    # Each term is a comparison, so it is a bool for ints and a SQL condition for columns.
    def _counted(self, up: Any, down: Any) -> Any:
        return up + down >= max(self.min_votes, 1)

    def _good_terms(self, up: Any, down: Any) -> list[Any]:
        terms = [self._counted(up, down), up > down]
        if self.thumbs_down == "any":
            terms.append(down == 0)  # one 👎 is enough to make it bad, so it is not good
        return terms

    def _bad_terms(self, up: Any, down: Any) -> list[Any]:
        worse = up < down if self.thumbs_down == "net" else down > 0
        return [self._counted(up, down), worse]

    def counted(self, row: Tally) -> bool:
        """Whether the votes are enough to judge the reply by."""
        return bool(self._counted(row.up, row.down))

    def good(self, row: Tally) -> bool:
        return all(self._good_terms(row.up, row.down))

    def bad(self, row: Tally) -> bool:
        return all(self._bad_terms(row.up, row.down))

    def good_where(self, votes: FromClause) -> ColumnElement[bool]:
        """:meth:`good` as a condition on ``votes`` (a :func:`vote_counts` subquery)."""
        return and_(*self._good_terms(votes.c.up, votes.c.down))

    def bad_where(self, votes: FromClause) -> ColumnElement[bool]:
        """:meth:`bad` as a condition on ``votes`` (a :func:`vote_counts` subquery)."""
        return and_(*self._bad_terms(votes.c.up, votes.c.down))


def set_vote(conn: Connection, message_id: int, user_id: str, value: int, now: float) -> None:
    """This user's vote on the reply in the caller's transaction (see :meth:`Store.set_vote`);
    an upsert, safe with several processes voting for one user at once."""
    mine = and_(_V.c.message_id == message_id, _V.c.user_id == user_id)
    if value == 0:
        conn.execute(delete(_V).where(mine))
        return
    row = {
        "message_id": message_id,
        "user_id": user_id,
        "value": value,
        "first_value": value,
        "created_at": now,
        "updated_at": now,
    }
    # The first reaction is kept, as its time is: the online comparison counts it.
    upsert(conn, _V, row, key=("message_id", "user_id"), keep=("created_at", "first_value"))


def list_votes(conn: Connection, message_ids: Iterable[int] | None = None) -> list[StoredVote]:
    query = select(*_VOTE_COLUMNS).order_by(_V.c.id)
    if message_ids is not None:
        query = query.where(_V.c.message_id.in_(list(message_ids)))
    return [StoredVote(*row) for row in conn.execute(query)]
