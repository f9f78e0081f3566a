"""Live feedback per LoRA version: how people rated what each version wrote."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from storage.schema import Correction, Message, Vote
from storage.store import Store
from storage.votes import vote_counts

_M = Message.__table__
_V = Vote.__table__
_X = Correction.__table__


@dataclass(frozen=True, slots=True)
class VersionStats:
    """Replies one version wrote for one character, and the votes and corrections on them."""

    character: str
    version: str | None  # None: the bare base model
    replies: int
    up: int
    down: int
    corrections: int

    @property
    def up_rate(self) -> float | None:
        """👍 per reply (None without replies)."""
        return self.up / self.replies if self.replies else None

    @property
    def down_rate(self) -> float | None:
        return self.down / self.replies if self.replies else None


async def stats_by_version(store: Store, character: str | None = None) -> list[VersionStats]:
    """One row per (character, LoRA version) that wrote a successful reply."""
    ok = (_M.c.role == "assistant") & (_M.c.status == "ok")
    if character is not None:
        ok = ok & (func.lower(_M.c.character) == character.lower())
    key = (_M.c.character, _M.c.lora_version)
    replies = select(*key, func.count(_M.c.id)).where(ok).group_by(*key)
    votes = vote_counts(*key).join(_M, _M.c.id == _V.c.message_id).where(ok)
    per_correction = (
        select(*key, func.count(_X.c.id))
        .join(_M, _M.c.id == _X.c.message_id)
        .where(ok)
        .group_by(*key)
    )

    def work(conn: Connection) -> dict[tuple[str, str | None], list[int]]:
        found: dict[tuple[str, str | None], list[int]] = {}
        for name, version, count in conn.execute(replies):
            found[(name, version)] = [int(count), 0, 0, 0]
        for name, version, up, down in conn.execute(votes):
            found[(name, version)][1:3] = [int(up or 0), int(down or 0)]
        for name, version, count in conn.execute(per_correction):
            found[(name, version)][3] = int(count)
        return found

    rows = await store.read(work)
    return [
        VersionStats(name or "", version, *counts)
        for (name, version), counts in sorted(
            rows.items(), key=lambda kv: (kv[0][0] or "", kv[0][1] or "")
        )
    ]
