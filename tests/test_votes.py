"""The one vote count and the one vote rule, on crafted vote tables in a real SQLite file and
a real PostgreSQL server: the rule's SQL selects exactly the replies its Python judges."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from storage.records import NewInbound, NewReply, ReplyAddress
from storage.schema import Message, Vote
from storage.store import Store
from storage.votes import THUMBS_DOWN, VoteRule, vote_counts

_M = Message.__table__
_V = Vote.__table__
COUNTS = list(itertools.product(range(4), range(4)))  # (👍, 👎) on one reply each
Voted = tuple[Store, dict[tuple[int, int], int]]  # the store, reply ids by (👍, 👎)
RULES = [VoteRule(down, least) for down in THUMBS_DOWN for least in (0, 1, 2, 3)]


@dataclass(frozen=True)
class Counts:
    up: int
    down: int


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'charbot.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
async def voted(db_url: str) -> AsyncIterator[Voted]:
    """A store with one reply per (👍, 👎) in COUNTS, by distinct people, and its ids."""
    store = await Store.open(db_url)
    asked = await store.store_inbound(
        NewInbound("test", "c1", None, "q", "42", "Sam", "Well?", None, 1.0), link_now=True
    )
    address = ReplyAddress(asked.conversation_id, "test", "c1", asked.message_id, "Aria")
    ids: dict[tuple[int, int], int] = {}
    for up, down in COUNTS:
        reply = await store.add_reply(NewReply(address, f"{up} up, {down} down"))
        ids[(up, down)] = reply
        for n in range(up):
            await store.set_vote(reply, f"fan{n}", 1)
        for n in range(down):
            await store.set_vote(reply, f"critic{n}", -1)
    yield store, ids
    await store.close()


async def test_vote_counts_per_reply_and_per_character(voted: Voted) -> None:
    store, ids = voted
    per_reply = vote_counts(_V.c.message_id)
    per_character = vote_counts(_M.c.character).join(_M, _M.c.id == _V.c.message_id)

    def read(conn):  # type: ignore[no-untyped-def]
        by_reply = {row.message_id: (row.up, row.down) for row in conn.execute(per_reply)}
        return by_reply, [tuple(row) for row in conn.execute(per_character)]

    by_reply, by_character = await store.read(read)
    # A reply nobody voted on has no row; every other one has its own counts.
    assert by_reply == {ids[c]: c for c in COUNTS if c != (0, 0)}
    ups, downs = sum(u for u, _ in COUNTS), sum(d for _, d in COUNTS)
    assert by_character == [("Aria", ups, downs)]


async def test_the_rule_in_sql_selects_what_it_judges_in_python(voted: Voted) -> None:
    store, ids = voted
    votes = vote_counts(_V.c.message_id).subquery()

    def read(conn):  # type: ignore[no-untyped-def]
        found = {}
        for rule in RULES:
            good = select(votes.c.message_id).where(rule.good_where(votes))
            bad = select(votes.c.message_id).where(rule.bad_where(votes))
            found[rule] = ({r[0] for r in conn.execute(good)}, {r[0] for r in conn.execute(bad)})
        return found

    found = await store.read(read)
    for rule in RULES:
        good = {ids[c] for c in COUNTS if rule.good(Counts(*c))}
        bad = {ids[c] for c in COUNTS if rule.bad(Counts(*c))}
        assert found[rule] == (good, bad), rule
        assert not good & bad


def test_what_the_votes_mean() -> None:
    """The rule itself, written out: net score, or any 👎; too few votes judge nothing."""

    def judged(rule: VoteRule) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
        good = {c for c in COUNTS if rule.good(Counts(*c))}
        return good, {c for c in COUNTS if rule.bad(Counts(*c))}

    good, bad = judged(VoteRule())
    assert good == {(u, d) for u, d in COUNTS if u > d}
    assert bad == {(u, d) for u, d in COUNTS if u < d}
    good, bad = judged(VoteRule(thumbs_down="any"))
    assert good == {(u, 0) for u in range(1, 4)}
    assert bad == {(u, d) for u, d in COUNTS if d > 0}
    good, bad = judged(VoteRule(min_votes=3))
    assert good == {(u, d) for u, d in COUNTS if u > d and u + d >= 3}
    assert bad == {(u, d) for u, d in COUNTS if u < d and u + d >= 3}
    assert not VoteRule(min_votes=2).counted(Counts(1, 0)) and VoteRule().counted(Counts(0, 1))
    with pytest.raises(ValueError, match="use net or any"):
        VoteRule(thumbs_down="most")
