"""Reading feedback back out of the store: rated and corrected replies, and per-character stats."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, case, func, select

from storage.schema import Correction, Message, Rating
from storage.store import Store

_M = Message.__table__
_R = Rating.__table__
_X = Correction.__table__


@dataclass(slots=True)
class RatedReply:
    """A stored reply with the votes and corrections it received."""

    id: int
    character: str
    text: str
    prompt: list[dict[str, str]]
    reply_to_id: int | None
    adapter_version: str | None
    model: str | None
    up: int = 0
    down: int = 0
    corrections: list[str] = field(default_factory=list)  # oldest first

    @property
    def score(self) -> int:
        return self.up - self.down


async def rated_replies(store: Store, character: str | None = None) -> list[RatedReply]:
    """Every successful reply that has a vote or a correction, oldest first."""
    votes = (
        select(
            _R.c.message_id,
            func.sum(case((_R.c.value > 0, 1), else_=0)).label("up"),
            func.sum(case((_R.c.value < 0, 1), else_=0)).label("down"),
        )
        .group_by(_R.c.message_id)
        .subquery()
    )
    corrected = select(_X.c.message_id)
    query = (
        select(_M, func.coalesce(votes.c.up, 0), func.coalesce(votes.c.down, 0))
        .outerjoin(votes, votes.c.message_id == _M.c.id)
        .where(_M.c.role == "assistant", _M.c.status == "ok", _M.c.prompt_json.is_not(None))
        .where((votes.c.message_id.is_not(None)) | _M.c.id.in_(corrected))
        .order_by(_M.c.id)
    )
    if character is not None:
        query = query.where(func.lower(_M.c.character) == character.lower())

    def work(conn: Connection) -> tuple[list[Any], dict[int, list[str]]]:
        rows = list(conn.execute(query).all())
        fixes: dict[int, list[str]] = defaultdict(list)
        ids = [row.id for row in rows]
        if ids:
            found = conn.execute(
                select(_X.c.message_id, _X.c.text).where(_X.c.message_id.in_(ids)).order_by(_X.c.id)
            )
            for fix in found:
                fixes[fix.message_id].append(fix.text)
        return rows, fixes

    rows, fixes = await store.read(work)
    return [
        RatedReply(
            id=row.id,
            character=row.character or "",
            text=row.text,
            prompt=json.loads(row.prompt_json),
            reply_to_id=row.reply_to_id,
            adapter_version=row.adapter_version,
            model=row.model,
            up=int(row[-2]),
            down=int(row[-1]),
            corrections=fixes.get(row.id, []),
        )
        for row in rows
    ]


async def character_stats(store: Store) -> dict[str, dict[str, int]]:
    """Per character: messages answered, replies, 👍, 👎, corrections, errors."""
    replies = _M.c.role == "assistant"
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
    per_vote = (
        select(
            _M.c.character,
            func.sum(case((_R.c.value > 0, 1), else_=0)),
            func.sum(case((_R.c.value < 0, 1), else_=0)),
        )
        .join(_M, _M.c.id == _R.c.message_id)
        .group_by(_M.c.character)
    )
    per_fix = (
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
        for name, count in conn.execute(per_fix):
            stats[name]["corrections"] = int(count)

    await store.read(work)
    return dict(sorted(stats.items(), key=lambda item: str(item[0])))
