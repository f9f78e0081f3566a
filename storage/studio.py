"""Store queries of the studio (adapters/web) that the CLI has no need for: a web chat's
current conversation, corrections with their ids, and accepting exactly one of them.

Writing a correction or an exclusion goes through storage/review.py like every other
writer, so the export and training read the studio's work the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select, union, update

from storage.feedback import Selection
from storage.feedback import _filters as feedback_filters  # the export's own reply filters
from storage.review import add_correction_sync
from storage.schema import Conversation, Correction, Exclusion, Message, MessagePart, Vote
from storage.store import Store
from storage.votes import VoteRule, vote_counts

_C = Conversation.__table__
_M = Message.__table__
_P = MessagePart.__table__
_V = Vote.__table__
_X = Correction.__table__
_E = Exclusion.__table__


@dataclass(frozen=True, slots=True)
class ChatLine:
    """One message of a web chat as the chat page shows it again after a reload: a reply is
    the sibling its bubble shows now (after 🔁 and ◀ ▶), ``index`` of ``count``."""

    id: int
    role: str  # "user" | "assistant"
    text: str
    character: str | None
    platform_message_id: str | None
    my_vote: int  # the viewer's vote on it: +1, -1 or 0
    index: int = 0
    count: int = 1


@dataclass(frozen=True, slots=True)
class CorrectionEntry:
    """A stored correction with its row id (what accepting one needs)."""

    id: int
    message_id: int
    text: str
    author: str
    source: str
    accepted: bool
    created_at: float


async def current_conversation(
    store: Store, platform: str, chat_id: str, user_id: str, limit: int = 200
) -> list[ChatLine]:
    """The messages of the chat's open conversation (no thread), oldest first, at most
    ``limit`` of the newest, each reply as the sibling its platform message shows."""
    open_one = (
        select(_C.c.id)
        .where(_C.c.platform == platform, _C.c.chat_id == chat_id, _C.c.thread_id == "")
        .where(_C.c.reset_at.is_(None))
        .order_by(_C.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    # A reply's bubble is its first part; a sibling replaced in place has none any more.
    query = (
        select(
            _M.c.id,
            _M.c.role,
            _M.c.text,
            _M.c.character,
            func.coalesce(_P.c.platform_message_id, _M.c.platform_message_id),
            _P.c.id.is_not(None),
            _M.c.reply_to_id,
            _V.c.value,
        )
        .outerjoin(_P, (_P.c.message_id == _M.c.id) & (_P.c.part_index == 0))
        .outerjoin(_V, (_V.c.message_id == _M.c.id) & (_V.c.user_id == user_id))
        .where(_M.c.conversation_id == open_one, _M.c.status == "ok")
        .order_by(_M.c.id.desc())
        .limit(limit)
    )

    def work(conn: Connection) -> list[ChatLine]:
        rows = list(conn.execute(query))[::-1]
        siblings: dict[int, list[int]] = {}
        for row in rows:
            if row.role == "assistant" and row.reply_to_id is not None:
                siblings.setdefault(row.reply_to_id, []).append(row.id)
        lines = []
        for row in rows:
            if row.role == "assistant" and not row[5]:
                continue  # a sibling no bubble shows now
            group = siblings.get(row.reply_to_id, [row.id]) if row.role == "assistant" else []
            lines.append(
                ChatLine(
                    row.id,
                    row.role,
                    row.text,
                    row.character,
                    row[4],
                    int(row.value or 0),
                    group.index(row.id) if row.id in group else 0,
                    max(1, len(group)),
                )
            )
        return lines

    return await store.read(work)


async def my_votes(store: Store, message_ids: Iterable[int], user_id: str) -> dict[int, int]:
    """``user_id``'s vote on each of ``message_ids`` that has one."""
    wanted = list(message_ids)
    query = select(_V.c.message_id, _V.c.value).where(
        _V.c.message_id.in_(wanted), _V.c.user_id == user_id
    )

    def work(conn: Connection) -> dict[int, int]:
        return {row.message_id: int(row.value) for row in conn.execute(query)}

    return await store.read(work)


async def corrections_of(
    store: Store, message_ids: Iterable[int]
) -> dict[int, list[CorrectionEntry]]:
    """Every correction of each reply in ``message_ids``, oldest first, with its id."""
    wanted = list(message_ids)
    if not wanted:
        return {}
    query = (
        select(
            _X.c.id,
            _X.c.message_id,
            _X.c.text,
            _X.c.user_id,
            _X.c.source,
            _X.c.accepted,
            _X.c.created_at,
        )
        .where(_X.c.message_id.in_(wanted))
        .order_by(_X.c.id)
    )

    def work(conn: Connection) -> dict[int, list[CorrectionEntry]]:
        found: dict[int, list[CorrectionEntry]] = {}
        for row in conn.execute(query):
            entry = CorrectionEntry(
                row.id,
                row.message_id,
                row.text,
                row.user_id,
                row.source,
                bool(row.accepted),
                row.created_at,
            )
            found.setdefault(row.message_id, []).append(entry)
        return found

    return await store.read(work)


def _accept_only(conn: Connection, message_id: int, correction_id: int) -> None:
    # One accepted correction per reply: the export takes the newest accepted one, so an
    # older correction accepted after a newer one would otherwise still lose.
    conn.execute(
        update(_X)
        .where(_X.c.message_id == message_id, _X.c.id != correction_id)
        .values(accepted=False)
    )
    conn.execute(update(_X).where(_X.c.id == correction_id).values(accepted=True))


async def accept_correction(store: Store, message_id: int, correction_id: int) -> bool:
    """Make ``correction_id`` the one accepted correction of reply ``message_id``; False
    when that correction does not belong to that reply."""

    def work(conn: Connection) -> bool:
        found = conn.execute(
            select(_X.c.id).where(_X.c.id == correction_id, _X.c.message_id == message_id)
        ).first()
        if found is None:
            return False
        _accept_only(conn, message_id, correction_id)
        return True

    return await store.write(work)


async def write_reviewed(store: Store, message_id: int, reviewer: str, text: str) -> int:
    """Store a reviewer's better answer for ``message_id`` as its accepted correction
    (source "reviewer"); raises storage.review.UnknownReply for a message that is no reply."""

    def work(conn: Connection) -> int:
        new_id = add_correction_sync(conn, message_id, reviewer, text, source="reviewer")
        assert new_id is not None  # only once=True returns None
        _accept_only(conn, message_id, new_id)
        return new_id

    return await store.write(work)


# -- the review queue ------------------------------------------------------------------------

# Which replies the queue shows. The scores by votes are VoteRule's (net and any 👎, net 👍)
# as SQL, so that a page costs one indexed query, not a scan of every rated reply (a store
# with 100,000 votes took over a minute that way).
REVIEW_SCORES = ("down", "any-down", "up", "corrected", "excluded", "all")
_BY_VOTES = {
    "down": VoteRule(thumbs_down="net").bad_where,
    "any-down": VoteRule(thumbs_down="any").bad_where,
    "up": VoteRule().good_where,
}


@dataclass(frozen=True, slots=True)
class ReviewRow:
    """A reply in the review queue with its votes and exclusion (corrections come apart)."""

    id: int
    conversation_id: int
    platform: str
    character: str
    lora_version: str | None
    text: str
    prompt_json: str
    created_at: float
    up: int
    down: int
    excluded: str | None


def _candidates(score: str) -> Any:
    """The ids of the replies ``score`` selects, from the small feedback tables."""
    if score in _BY_VOTES:
        votes = vote_counts(_V.c.message_id).subquery()
        return select(votes.c.message_id).where(_BY_VOTES[score](votes))
    if score == "corrected":
        return select(_X.c.message_id).distinct()
    if score == "excluded":
        return select(_E.c.message_id)
    if score == "all":
        return union(select(_V.c.message_id), select(_X.c.message_id))
    raise ValueError(f"review score {score!r}; use one of {', '.join(REVIEW_SCORES)}")


async def review_queue(
    store: Store, selection: Selection, score: str, *, limit: int, offset: int = 0
) -> tuple[int, list[ReviewRow]]:
    """(how many replies match, the page of them newest first) for the review queue."""
    wanted = _candidates(score).subquery()
    matching = (
        select(_M.c.id)
        .join(wanted, wanted.c.message_id == _M.c.id)
        .where(*feedback_filters(selection))
    )
    page = (
        select(
            _M.c.id,
            _M.c.conversation_id,
            _M.c.platform,
            _M.c.character,
            _M.c.lora_version,
            _M.c.text,
            _M.c.prompt_json,
            _M.c.created_at,
            _E.c.reason,
        )
        .join(wanted, wanted.c.message_id == _M.c.id)
        .outerjoin(_E, _E.c.message_id == _M.c.id)
        .where(*feedback_filters(selection))
        .order_by(_M.c.id.desc())
        .limit(limit)
        .offset(offset)
    )

    def work(conn: Connection) -> tuple[int, list[ReviewRow]]:
        total = conn.execute(select(func.count()).select_from(matching.subquery())).scalar_one()
        found = list(conn.execute(page))
        # Votes only for the page's replies: grouping every vote again would double the cost.
        votes = {
            row.message_id: (int(row.up), int(row.down))
            for row in conn.execute(
                vote_counts(_V.c.message_id).where(_V.c.message_id.in_([r.id for r in found]))
            )
        }
        rows = [
            ReviewRow(*row[:8], *votes.get(row.id, (0, 0)), row[8])  # type: ignore[arg-type]
            for row in found
        ]
        return int(total), rows

    return await store.read(work)
