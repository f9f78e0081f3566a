"""Ordered schema migrations, applied at start-up.

A short ordered list rather than Alembic: the bot must migrate itself on start with no extra
tool or command, the history is short, and each step is plain SQLAlchemy that runs on SQLite
and PostgreSQL alike. Pending migrations run in one transaction and are recorded in
``schema_migrations``; a database newer than this code is refused rather than guessed at.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Connection, text

from bot.errors import CharbotError
from storage import schema

Migration = tuple[int, str, Callable[[Connection], None]]


def _0001_initial(conn: Connection) -> None:
    # The first version of every table. When schema.py changes, add a migration below that
    # alters the tables, so that databases made by this version upgrade in place.
    schema.Base.metadata.create_all(conn)


MIGRATIONS: list[Migration] = [
    (1, "initial schema", _0001_initial),
]


class SchemaTooNew(CharbotError):
    """The database was migrated by a newer charbot than this one."""


def current_version(conn: Connection) -> int:
    conn.execute(
        text(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL, applied_at FLOAT NOT NULL)"
        )
    )
    found = conn.execute(text("SELECT MAX(version) FROM schema_migrations")).scalar()
    return int(found or 0)


def migrate(conn: Connection) -> list[int]:
    """Apply every migration newer than the database; return the versions applied."""
    version = current_version(conn)
    latest = MIGRATIONS[-1][0]
    if version > latest:
        raise SchemaTooNew(
            f"database schema version {version} is newer than this charbot ({latest}); "
            "upgrade charbot or point [storage] url at another database"
        )
    applied = []
    for number, name, step in MIGRATIONS:
        if number <= version:
            continue
        step(conn)
        conn.execute(
            text("INSERT INTO schema_migrations (version, name, applied_at) VALUES (:v, :n, :t)"),
            {"v": number, "n": name, "t": time.time()},
        )
        applied.append(number)
    return applied
