"""``[storage]``: where conversations, votes and corrections live (config.toml builds it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """[storage]: the database URL and how long a busy database is waited for."""

    url: str = "sqlite:///data/charbot.db"
    max_wait_s: float = 60.0  # a locked/busy database is retried this long before giving up
    busy_timeout_s: float = 5.0  # one attempt's wait for another's lock (PostgreSQL too)
