"""Migrations: every past schema version upgrades to the models; first starts race safely."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.exc import IntegrityError

from storage import schema
from storage.migrations import LATEST, MIGRATIONS, migrate_locked
from tests.postgres import PgServer


def _shape(engine) -> dict[str, tuple[set, set, set]]:  # type: ignore[no-untyped-def]
    """Per table: its columns (name, nullable), its index column lists, its unique sets."""
    found = {}
    insp = inspect(engine)
    for table in insp.get_table_names():
        if table == "schema_migrations":
            continue
        columns = {(c["name"], bool(c["nullable"])) for c in insp.get_columns(table)}
        indexes = {(tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(table)}
        uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints(table)}
        found[table] = (columns, indexes, uniques)
    return found


def _models_shape(tmp_path: Path) -> dict[str, tuple[set, set, set]]:
    engine = create_engine(f"sqlite:///{tmp_path / 'models.db'}")
    schema.Base.metadata.create_all(engine)
    return _shape(engine)


def test_versions_are_ordered_without_gaps() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1))


@pytest.mark.parametrize("start", range(0, LATEST + 1))
def test_every_past_version_migrates_forward_to_the_models(tmp_path: Path, start: int) -> None:
    """A database left at ``start`` by an older charbot upgrades in place to exactly the schema
    the code expects: a model change without its migration (or the reverse) fails here."""
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    if start:
        assert migrate_locked(engine, target=start) == list(range(1, start + 1))
    assert migrate_locked(engine) == list(range(start + 1, LATEST + 1))
    assert migrate_locked(engine) == []  # a restart applies nothing
    assert _shape(engine) == _models_shape(tmp_path)


def _start(url: str, barrier, results) -> None:  # type: ignore[no-untyped-def]
    # SQLite waits up to 30 s for the file lock; PostgreSQL for the advisory lock, unbounded.
    connect_args = {"timeout": 30} if url.startswith("sqlite") else {}
    engine = create_engine(url, connect_args=connect_args)
    barrier.wait()
    try:
        results.put(("ok", migrate_locked(engine)))
    except Exception as exc:  # reported to the parent, which fails the test with it
        results.put(("error", repr(exc)))


def test_concurrent_first_starts_migrate_once(tmp_path: Path) -> None:
    _race(f"sqlite:///{tmp_path / 'race.db'}")


def test_concurrent_first_starts_migrate_once_on_postgresql(pg_url: str) -> None:
    """Three bot processes starting together on an empty PostgreSQL database used to crash
    one of them; the advisory lock makes one migrate while the others wait."""
    _race(pg_url)


@pytest.fixture(scope="module")
def pg_models_shape(pg_server: PgServer) -> dict[str, tuple[set, set, set]]:
    engine = create_engine(pg_server.create_database())
    schema.Base.metadata.create_all(engine)
    shape = _shape(engine)
    engine.dispose()
    return shape


@pytest.mark.parametrize("start", range(0, LATEST + 1))
def test_every_past_version_migrates_forward_on_postgresql(
    pg_server: PgServer, pg_models_shape: dict, start: int
) -> None:
    """The frozen DDL of every step runs on PostgreSQL too, to exactly the models' shape."""
    engine = create_engine(pg_server.create_database())
    if start:
        migrate_locked(engine, target=start)
    assert migrate_locked(engine) == list(range(start + 1, LATEST + 1))
    assert _shape(engine) == pg_models_shape
    engine.dispose()


def _race(url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    count = 4
    barrier, results = ctx.Barrier(count), ctx.Queue()
    procs = [ctx.Process(target=_start, args=(url, barrier, results)) for _ in range(count)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    assert all(kind == "ok" for kind, _ in outcomes), outcomes
    applied = sorted(len(versions) for _, versions in outcomes)
    assert applied == [0] * (count - 1) + [LATEST]  # one process migrated; the rest waited
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT version FROM schema_migrations")).scalars().all()
    assert sorted(rows) == list(range(1, LATEST + 1))


def _keeps_lora_versions(engine) -> None:  # type: ignore[no-untyped-def]
    """Migration 6 renames messages.adapter_version; the versions replies recorded stay."""
    migrate_locked(engine, target=5)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO conversations (id, platform, chat_id, thread_id, started_at) "
                "VALUES (1, 'telegram', '7', '', 0)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO messages (id, conversation_id, platform, chat_id, role, author_id, "
                "author_name, text, adapter_version, status, created_at) VALUES "
                "(1, 1, 'telegram', '7', 'assistant', 'bot', 'Bram', 'Aye.', 'v0003-1a2b', "
                "'ok', 0)"
            )
        )
    assert migrate_locked(engine) == list(range(6, LATEST + 1))
    with engine.connect() as conn:
        found = conn.execute(text("SELECT lora_version FROM messages WHERE id = 1")).scalar()
    assert found == "v0003-1a2b"


def test_lora_versions_survive_the_rename(tmp_path: Path) -> None:
    _keeps_lora_versions(create_engine(f"sqlite:///{tmp_path / 'rename.db'}"))


def test_lora_versions_survive_the_rename_on_postgresql(pg_server: PgServer) -> None:
    engine = create_engine(pg_server.create_database())
    _keeps_lora_versions(engine)
    engine.dispose()


def _paraphrases_once_per_reply(engine) -> None:  # type: ignore[no-untyped-def]
    """Migration 7 adds paraphrases to a database holding replies: a wording is stored
    once per reply (the unique key the importer's ON CONFLICT relies on), each reply its own."""
    _keeps_lora_versions(engine)  # a database at the latest version with reply 1 in it
    insert = (
        "INSERT INTO paraphrases (message_id, text, source, author, created_at) "
        "VALUES (:m, 'How far?', 'reviewer', 'rita', 0)"
    )
    with engine.begin() as conn:
        conn.execute(text(insert), {"m": 1})
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text(insert), {"m": 1})
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text(insert), {"m": 999})  # the foreign key to messages
    with engine.connect() as conn:
        assert conn.execute(text("SELECT message_id, text FROM paraphrases")).all() == [
            (1, "How far?")
        ]


def test_paraphrases_are_unique_per_reply(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'paraphrases.db'}")
    event.listen(engine, "connect", lambda conn, _: conn.execute("PRAGMA foreign_keys=ON"))
    _paraphrases_once_per_reply(engine)


def test_paraphrases_are_unique_per_reply_on_postgresql(pg_server: PgServer) -> None:
    engine = create_engine(pg_server.create_database())
    _paraphrases_once_per_reply(engine)
    engine.dispose()
