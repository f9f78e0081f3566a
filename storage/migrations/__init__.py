"""Ordered schema migrations, applied at start-up under a lock.

A short ordered list rather than Alembic: the bot must migrate itself on start with no extra
tool or command, the history is short, and each step is plain SQLAlchemy that runs on SQLite
and PostgreSQL alike. Each step is one module here named ``mNNNN_what.py`` with a
``migrate(conn)`` function: explicit DDL frozen when it was written, never ``create_all`` of
today's models (a later column would then exist before the migration that adds it). Pending
steps run in one transaction and are recorded in ``schema_migrations``; a database newer than
this code is refused rather than guessed at.

Several processes may start together on one empty database (one bot per platform token, a
CLI command beside a running bot). Migrating takes a lock first so that exactly one of them
migrates and the others wait, then find nothing to do: SQLite's ``BEGIN IMMEDIATE`` (the
database's one write lock, waited for up to the busy timeout) and a PostgreSQL transaction
advisory lock.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text

from storage.errors import StorageError

# pg_advisory_xact_lock takes a bigint; any fixed number unlikely to clash with another app.
_PG_LOCK_KEY = 0x63686172626F74  # "charbot"
_MODULE_NAME = re.compile(r"^m(\d{4})_(\w+)$")


@dataclass(frozen=True)
class Migration:
    """One ordered schema step."""

    version: int
    name: str
    step: Callable[[Connection], None]


def _discover() -> list[Migration]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        match = _MODULE_NAME.match(info.name)
        if not match:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.append(Migration(int(match[1]), match[2].replace("_", " "), module.migrate))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):  # gaps are caught by the tests, not at start-up
        raise RuntimeError(f"two migrations share a version: {versions}")
    return found


MIGRATIONS: list[Migration] = _discover()
LATEST = MIGRATIONS[-1].version


class SchemaTooNew(StorageError):
    """The database was migrated by a newer charbot than this one."""


def current_version(conn: Connection) -> int:
    """The newest applied version (0 for an empty database); makes the ledger table."""
    conn.execute(
        text(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL, applied_at FLOAT NOT NULL)"
        )
    )
    found = conn.execute(text("SELECT MAX(version) FROM schema_migrations")).scalar()
    return int(found or 0)


def migrate(conn: Connection, target: int | None = None) -> list[int]:
    """Apply every migration newer than the database, up to ``target`` (default: all), in
    the caller's transaction; return the versions applied. The caller holds the lock."""
    version = current_version(conn)
    if version > LATEST:
        raise SchemaTooNew(
            f"database schema version {version} is newer than this charbot ({LATEST}); "
            "upgrade charbot or point [storage] url at another database"
        )
    applied = []
    for migration in MIGRATIONS:
        if migration.version <= version or (target is not None and migration.version > target):
            continue
        migration.step(conn)
        conn.execute(
            text("INSERT INTO schema_migrations (version, name, applied_at) VALUES (:v, :n, :t)"),
            {"v": migration.version, "n": migration.name, "t": time.time()},
        )
        applied.append(migration.version)
    return applied


def migrate_locked(engine: Engine, target: int | None = None) -> list[int]:
    """Take the migration lock, migrate, commit: safe with many processes starting at once."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            # pysqlite would begin a deferred transaction only at the first write; take the
            # write lock now so that a second process waits here instead of racing.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        applied = migrate(conn, target)
        conn.commit()
    return applied
