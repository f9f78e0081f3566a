"""Writes that stay correct with several processes on one database.

Two kinds of write race between processes: an insert of a row another process inserted
a moment before (update-then-insert, check-then-insert on a unique key), and a check of
rows with no unique key to enforce it (is this note, this choice stored already?). The
first is :func:`upsert` / :func:`insert_new` (``INSERT ... ON CONFLICT`` on PostgreSQL and
SQLite, a retried savepoint elsewhere); the second is :func:`serialize`, which makes the
transactions that check the same thing take turns. Every write path of the store uses
these, never its own variant.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table, and_, insert, text, update
from sqlalchemy.exc import IntegrityError


def _dialect_insert(conn: Connection, table: Table) -> Any:
    name = conn.dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    return None


Rows = Mapping[str, Any] | Sequence[Mapping[str, Any]]


def _rows(rows: Rows) -> list[Mapping[str, Any]]:
    return [rows] if isinstance(rows, Mapping) else list(rows)


def upsert(
    conn: Connection, table: Table, rows: Rows, key: Sequence[str], keep: Sequence[str] = ()
) -> None:
    """Insert ``rows`` (one mapping or several with the same columns); a row whose ``key``
    columns match a stored one (this or another process's) updates it instead: every other
    column given except those in ``keep`` (e.g. ``created_at``) is overwritten."""
    rows = sorted(_rows(rows), key=lambda row: tuple(row[name] for name in key))
    if not rows:
        return
    changed = [name for name in rows[0] if name not in (*key, *keep)]
    statement = _dialect_insert(conn, table)
    if statement is not None:
        # Sorted by key, so two processes writing overlapping rows lock them in one order.
        statement = statement.values(rows)
        if changed:
            excluded = statement.excluded
            statement = statement.on_conflict_do_update(
                index_elements=list(key), set_={name: excluded[name] for name in changed}
            )
        else:
            statement = statement.on_conflict_do_nothing(index_elements=list(key))
        conn.execute(statement)
        return
    for row in rows:  # another database: update, else insert in a savepoint, else update
        mine = and_(*(table.c[name] == row[name] for name in key))
        changes = {name: row[name] for name in changed}
        if changes and conn.execute(update(table).where(mine).values(**changes)).rowcount:
            continue
        try:
            with conn.begin_nested():
                conn.execute(insert(table).values(**row))
        except IntegrityError:  # another process inserted it in between: it exists now
            if changes:
                conn.execute(update(table).where(mine).values(**changes))


def insert_new(conn: Connection, table: Table, rows: Rows, key: Sequence[str]) -> list[Any]:
    """Insert those of ``rows`` whose ``key`` columns match no stored row (this or another
    process's); the first primary-key column of each row inserted."""
    rows = _rows(rows)
    if not rows:
        return []
    first_key = next(iter(table.primary_key.columns))
    statement = _dialect_insert(conn, table)
    if statement is not None:
        # RETURNING gives the rows inserted (psycopg's rowcount is -1 for this statement).
        query = (
            statement.values(rows)
            .on_conflict_do_nothing(index_elements=list(key))
            .returning(first_key)
        )
        return list(conn.execute(query).scalars())
    inserted = []
    for row in rows:
        try:
            with conn.begin_nested():
                inserted.append(conn.execute(insert(table).values(**row)).inserted_primary_key[0])
        except IntegrityError:
            pass
    return inserted


def _lock_key(parts: Sequence[object]) -> int:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)  # pg advisory locks take a bigint


def serialize(conn: Connection, *what: object) -> None:
    """Until the caller's transaction ends, no other transaction that serializes the same
    ``what`` runs past this call: call it first, then check and write. On PostgreSQL a
    transaction-scoped advisory lock on a hash of ``what``; on SQLite the database's write
    lock, taken now rather than at the first write (pysqlite would begin the transaction
    only then, so reads before it could be stale). A lock held elsewhere is a busy error
    the store retries."""
    name = conn.dialect.name
    if name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(what)})
    elif name == "sqlite" and not conn.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
        conn.exec_driver_sql("BEGIN IMMEDIATE")
