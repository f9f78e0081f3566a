"""Reading feedback back out of the store: replies with their votes, corrections and
paraphrases, streamed in a stable order for the training-data export, and per-character stats."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, case, func, select, union

from storage.schema import Correction, Exclusion, Message, Paraphrase, SwipeChoice, Vote
from storage.store import Store
from storage.votes import vote_counts

_M = Message.__table__
_V = Vote.__table__
_X = Correction.__table__
_E = Exclusion.__table__
_W = SwipeChoice.__table__
_P = Paraphrase.__table__

# Rows fetched per round trip: bounded memory with server-side cursors (PostgreSQL) and
# few round trips; SQLite's cursor is lazy anyway.
_BATCH = 2000


@dataclass(frozen=True, slots=True)
class Selection:
    """Which replies an export reads. None means "any"; ``lora_version=""`` means the
    bare base model (no LoRA)."""

    character: str | None = None
    since: float | None = None  # reply created at or after (Unix seconds)
    until: float | None = None  # reply created before
    platform: str | None = None
    lora_version: str | None = None


@dataclass(frozen=True, slots=True)
class CorrectionRow:
    """One better reply written for a stored reply."""

    text: str
    author: str
    source: str  # "user" | "reviewer" | "import"
    accepted: bool
    created_at: float


@dataclass(frozen=True, slots=True)
class FeedbackRow:
    """A stored reply with its votes, corrections (oldest first), exclusion, if any, and the
    other wordings of its question (paraphrases, sorted)."""

    id: int
    conversation_id: int
    parent_id: int  # the message it answers; regenerated siblings share it
    platform: str
    character: str
    lora_version: str | None
    model: str | None
    text: str
    prompt_json: str  # the exact prompt the reply was generated from
    created_at: float
    up: int
    down: int
    excluded: str | None  # the reviewer's reason, when excluded
    corrections: tuple[CorrectionRow, ...]
    # The sibling a person kept when the conversation went on (swipes): the newest choice
    # for this reply's parent. None when no choice was made among these siblings.
    kept_id: int | None = None
    # Other wordings of the question it answers (storage/paraphrases.py), sorted by code
    # point so that the same database gives the same export on any database engine.
    paraphrases: tuple[str, ...] = ()

    @property
    def score(self) -> int:
        return self.up - self.down


def _filters(selection: Selection) -> list[Any]:
    where: list[Any] = [
        _M.c.role == "assistant",
        _M.c.status == "ok",
        _M.c.prompt_json.is_not(None),
        _M.c.reply_to_id.is_not(None),
    ]
    if selection.character is not None:
        where.append(func.lower(_M.c.character) == selection.character.lower())
    if selection.platform is not None:
        where.append(_M.c.platform == selection.platform)
    if selection.since is not None:
        where.append(_M.c.created_at >= selection.since)
    if selection.until is not None:
        where.append(_M.c.created_at < selection.until)
    if selection.lora_version == "":
        where.append(_M.c.lora_version.is_(None))
    elif selection.lora_version is not None:
        where.append(_M.c.lora_version == selection.lora_version)
    return where


def _replies_query(selection: Selection, swipe_choices: bool) -> Any:
    # Candidates come from the feedback tables (small) and reach messages by primary key, so
    # a million unrated messages are never scanned. With swipe choices stored, every sibling
    # of a kept reply is a candidate too (one pass over messages: reply_to_id has no index).
    sources = [select(_V.c.message_id), select(_X.c.message_id)]
    if swipe_choices:
        sibling = _M.alias("sibling")
        sources.append(
            select(sibling.c.id).where(sibling.c.reply_to_id.in_(select(_W.c.parent_id)))
        )
    with_feedback = union(*sources).subquery()
    # The newest choice among this reply's siblings, looked up per row through the parent
    # index (joined as a grouped subquery instead, SQLite scanned it for every row).
    kept = (
        select(_W.c.kept_id)
        .where(_W.c.parent_id == _M.c.reply_to_id)
        .order_by(_W.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    votes = vote_counts(_V.c.message_id).subquery()
    return (
        select(
            _M.c.id,
            _M.c.conversation_id,
            _M.c.reply_to_id,
            _M.c.platform,
            _M.c.character,
            _M.c.lora_version,
            _M.c.model,
            _M.c.text,
            _M.c.prompt_json,
            _M.c.created_at,
            func.coalesce(votes.c.up, 0).label("up"),
            func.coalesce(votes.c.down, 0).label("down"),
            _E.c.reason,
            kept.label("kept_id"),
        )
        .join(with_feedback, with_feedback.c.message_id == _M.c.id)
        .outerjoin(votes, votes.c.message_id == _M.c.id)
        .outerjoin(_E, _E.c.message_id == _M.c.id)
        .where(*_filters(selection))
        # Siblings (replies to one message) come together, so preference pairs are found
        # while streaming; ids make the order total, so every export is the same.
        .order_by(_M.c.reply_to_id, _M.c.id)
        .execution_options(yield_per=_BATCH)
    )


def _corrections_query(selection: Selection) -> Any:
    return (
        select(
            _M.c.reply_to_id,
            _X.c.message_id,
            _X.c.text,
            _X.c.user_id,
            _X.c.source,
            _X.c.accepted,
            _X.c.created_at,
        )
        .join(_M, _M.c.id == _X.c.message_id)
        .where(*_filters(selection))
        .order_by(_M.c.reply_to_id, _X.c.message_id, _X.c.id)
        .execution_options(yield_per=_BATCH)
    )


def _paraphrases_query(selection: Selection) -> Any:
    return (
        select(_M.c.reply_to_id, _P.c.message_id, _P.c.text)
        .join(_M, _M.c.id == _P.c.message_id)
        .where(*_filters(selection))
        .order_by(_M.c.reply_to_id, _P.c.message_id, _P.c.id)
        .execution_options(yield_per=_BATCH)
    )


def _has_swipe_choices(conn: Connection) -> bool:
    return conn.execute(select(_W.c.id).limit(1)).first() is not None


def count_feedback(conn: Connection, selection: Selection = Selection()) -> int:
    """How many replies :func:`iter_feedback` will yield (for a progress bar's total)."""
    query = _replies_query(selection, _has_swipe_choices(conn))
    query = query.with_only_columns(func.count()).order_by(None)
    return int(conn.execute(query.execution_options(yield_per=None)).scalar_one())


def iter_feedback(conn: Connection, selection: Selection = Selection()) -> Iterator[FeedbackRow]:
    """Every successful reply with a vote or a correction, ordered by (parent, id), streamed.

    Three ordered cursors — replies, corrections and paraphrases — are merged as they are
    read, so memory stays bounded however many there are.
    """
    corrections = iter(conn.execute(_corrections_query(selection)))
    correction = next(corrections, None)
    paraphrases = iter(conn.execute(_paraphrases_query(selection)))
    paraphrase = next(paraphrases, None)
    for row in conn.execute(_replies_query(selection, _has_swipe_choices(conn))):
        key = (row.reply_to_id, row.id)
        found: list[CorrectionRow] = []
        while correction is not None and (correction.reply_to_id, correction.message_id) <= key:
            if correction.message_id == row.id:
                found.append(
                    CorrectionRow(
                        correction.text,
                        correction.user_id,
                        correction.source,
                        bool(correction.accepted),
                        correction.created_at,
                    )
                )
            correction = next(corrections, None)
        wordings: list[str] = []
        while paraphrase is not None and (paraphrase.reply_to_id, paraphrase.message_id) <= key:
            if paraphrase.message_id == row.id:
                wordings.append(paraphrase.text)
            paraphrase = next(paraphrases, None)
        yield FeedbackRow(
            id=row.id,
            conversation_id=row.conversation_id,
            parent_id=row.reply_to_id,
            platform=row.platform,
            character=row.character or "",
            lora_version=row.lora_version,
            model=row.model,
            text=row.text,
            prompt_json=row.prompt_json,
            created_at=row.created_at,
            up=int(row.up),
            down=int(row.down),
            excluded=row.reason,
            corrections=tuple(found),
            kept_id=row.kept_id,
            paraphrases=tuple(sorted(wordings)),
        )


async def character_stats(store: Store) -> dict[str, dict[str, int]]:
    """Per character: messages answered, replies, 👍, 👎, corrections, errors."""
    # A greeting is an assistant message no model wrote (its model is empty): not a reply.
    replies = (_M.c.role == "assistant") & _M.c.model.is_not(None)
    query = (
        select(
            _M.c.character,
            func.count(func.distinct(_M.c.reply_to_id)),
            func.sum(case((_M.c.status == "ok", 1), else_=0)),
            func.sum(case((_M.c.status != "ok", 1), else_=0)),
        )
        .where(replies)
        .group_by(_M.c.character)
    )
    per_vote = vote_counts(_M.c.character).join(_M, _M.c.id == _V.c.message_id)
    per_correction = (
        select(_M.c.character, func.count(_X.c.id))
        .join(_M, _M.c.id == _X.c.message_id)
        .group_by(_M.c.character)
    )
    stats: dict[str, dict[str, int]] = defaultdict(
        lambda: dict.fromkeys(("messages", "replies", "up", "down", "corrections", "errors"), 0)
    )

    def work(conn: Connection) -> None:
        for name, messages, ok, errors in conn.execute(query):
            stats[name].update(
                messages=int(messages), replies=int(ok or 0), errors=int(errors or 0)
            )
        for name, up, down in conn.execute(per_vote):
            stats[name].update(up=int(up or 0), down=int(down or 0))
        for name, count in conn.execute(per_correction):
            stats[name]["corrections"] = int(count)

    await store.read(work)
    return dict(sorted(stats.items(), key=lambda item: str(item[0])))
