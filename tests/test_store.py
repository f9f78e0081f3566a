"""The store on a real SQLite file and a real PostgreSQL server: migrations, round trips,
vote semantics."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from storage.migrations import MIGRATIONS, SchemaTooNew
from storage.records import NewInbound, NewReply, ReplyAddress, StoredMessage
from storage.schema import Message
from storage.store import Store


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every store test runs on a SQLite file and on PostgreSQL (see tests/postgres.py)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'charbot.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
async def store(db_url: str):
    opened = await Store.open(db_url)
    yield opened
    await opened.close()


def store_text(
    store: Store,
    text_in: str,
    *,
    chat: str = "c1",
    thread: str | None = None,
    link_now: bool = True,
    message_id: str = "",
):  # type: ignore[no-untyped-def]
    return store.store_inbound(
        NewInbound(
            platform="test",
            chat_id=chat,
            thread_id=thread,
            platform_message_id=message_id or text_in,
            author_id="42",
            author_name="Sam",
            text=text_in,
            reply_to_platform_id=None,
            created_at=1.0,
        ),
        link_now=link_now,
    )


async def add_exchange(
    store: Store, text_in: str = "hi", chat: str = "c1", **reply_fields: Any
) -> tuple[int, int]:
    """A user message and its reply ("hello" unless ``reply_fields`` say otherwise)."""
    stored = await store_text(store, text_in, chat=chat, message_id=f"u-{text_in[:8]}")
    user, conversation = stored.message_id, stored.conversation_id
    fields = {
        "text": "hello",
        "platform_message_ids": [f"r1-{user}", f"r2-{user}"],
        "prompt": [{"role": "user", "content": text_in}],
        "sampling": {"temperature": 0.7},
        "model": "fake",
        **reply_fields,
    }
    reply = await store.add_reply(
        NewReply(ReplyAddress(conversation, "test", chat, user, "Aria"), **fields)
    )
    return user, reply


async def test_migrations_apply_once_and_wal_is_on(db_url: str) -> None:
    first = await Store.open(db_url)
    await first.close()
    again = await Store.open(db_url)  # a restart: nothing is applied twice

    sqlite = db_url.startswith("sqlite")

    def read(conn):  # type: ignore[no-untyped-def]
        versions = conn.execute(text("SELECT version FROM schema_migrations")).all()
        if not sqlite:  # the pragmas below are SQLite's own
            return versions, "wal", 5000
        journal = conn.execute(text("PRAGMA journal_mode")).scalar()
        timeout = conn.execute(text("PRAGMA busy_timeout")).scalar()
        return versions, journal, timeout

    versions, journal, timeout = await again.read(read)
    await again.close()
    assert [v[0] for v in versions] == [m.version for m in MIGRATIONS]
    assert journal == "wal" and timeout == 5000


async def test_newer_schema_is_refused(db_url: str) -> None:
    store = await Store.open(db_url)
    await store.write(
        lambda conn: conn.execute(
            text("INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'x', 0)")
        )
    )
    await store.close()
    with pytest.raises(SchemaTooNew, match="newer than this charbot"):
        await Store.open(db_url)


async def test_messages_round_trip_exactly(store: Store) -> None:
    odd = "héllo 👋🏽 안녕하세요 — «quotes» \x00-free\n\ttabs " + "ß" * 5
    huge = "x" * 100_000
    user, reply = await add_exchange(store, odd)
    big_user, _ = await add_exchange(store, huge, chat="c2")
    rows = {row.id: row for row in await store.list_messages()}
    assert rows[user].text == odd.replace("\x00", "\ufffd")  # PostgreSQL's text has no NUL
    assert rows[big_user].text == huge
    assert rows[reply].parent_id == user and rows[reply].character == "Aria"
    assert await store.platform_ids(reply) == [f"r1-{user}", f"r2-{user}"]
    # Any part of a reply finds the reply; the user's own message is found by its id.
    found = await store.find_message("test", "c1", f"r2-{user}")
    assert found is not None and found.id == reply
    by_user_id = await store.find_message("test", "c1", f"u-{odd[:8]}")
    assert by_user_id is not None and by_user_id.id == user
    assert await store.find_message("test", "other-chat", f"r2-{user}") is None


def test_a_stored_message_has_every_column_of_messages() -> None:
    """StoredMessage is the whole row (its parent_id is the reply_to_id column), so a column
    a migration adds cannot be left out of what the store hands back."""
    columns = [c.name for c in Message.__table__.c]
    fields = [f.name for f in dataclasses.fields(StoredMessage)]
    assert fields == ["parent_id" if c == "reply_to_id" else c for c in columns]


async def test_replies_corrections_and_errors_with_nul_are_stored_not_refused(
    store: Store,
) -> None:
    """A model's reply or a user's correction carrying NUL or a lone surrogate is stored
    with U+FFFD in their place, on either database (PostgreSQL's text refuses NUL)."""
    _, reply = await add_exchange(
        store, text="half\x00way \ud800", status="error", error="RuntimeError: bad byte \x00"
    )
    await store.add_correction(reply, "u1", "Bet\x00ter.")
    row = next(r for r in await store.list_messages() if r.id == reply)
    assert (row.text, row.error) == ("half\ufffdway \ufffd", "RuntimeError: bad byte \ufffd")
    assert [c.text for c in await store.list_corrections()] == ["Bet\ufffdter."]


async def test_history_follows_the_tree(store: Store) -> None:
    first_user, first_reply = await add_exchange(store, "one")
    second_user, second_reply = await add_exchange(store, "two")
    history = await store.history(second_reply)
    assert [row.id for row in history] == [first_user, first_reply, second_user, second_reply]
    assert [row.text for row in history] == ["one", "hello", "two", "hello"]


async def test_settle_links_a_message_stored_while_others_waited(store: Store) -> None:
    first = await store_text(store, "first")
    waiting = await store_text(
        store, "second", link_now=False
    )  # arrived while "first" was being answered
    assert first.linked and first.parent_id is None and not waiting.linked
    reply = await store.add_reply(
        NewReply(
            ReplyAddress(first.conversation_id, "test", "c1", first.message_id, "Aria"),
            text="answer",
            platform_message_ids=["r"],
            prompt=None,
            sampling=None,
            model="fake",
        )
    )
    # "second" follows the reply to "first", though that reply was stored after it.
    assert await store.settle(waiting.message_id, waiting.conversation_id) == reply


async def test_one_vote_per_user_change_and_removal(store: Store) -> None:
    _, reply = await add_exchange(store)
    await store.set_vote(reply, "u1", 1)
    await store.set_vote(reply, "u1", 1)  # the same vote twice is one vote
    assert [(r.user_id, r.value) for r in await store.list_votes()] == [("u1", 1)]
    await store.set_vote(reply, "u1", -1)  # a change replaces it
    await store.set_vote(reply, "u2", -1)
    assert sorted((r.user_id, r.value) for r in await store.list_votes()) == [
        ("u1", -1),
        ("u2", -1),
    ]
    await store.set_vote(reply, "u1", 0)  # removal deletes it
    assert [(r.user_id, r.value) for r in await store.list_votes()] == [("u2", -1)]
    with pytest.raises(ValueError):
        await store.set_vote(reply, "u1", 5)


async def test_two_processes_voting_at_once_keep_one_vote_per_user(
    store: Store, db_url: str
) -> None:
    """Two bot processes on one database (each store has its own connection and thread):
    the same user's votes racing in from both still end as one vote per user per reply."""
    _, reply = await add_exchange(store)
    other = await Store.open(db_url)
    try:
        votes = [
            (s, user, value) for user in ("u1", "u2") for value in (1, -1) for s in (store, other)
        ]
        await asyncio.gather(*(s.set_vote(reply, user, value) for s, user, value in votes * 5))
    finally:
        await other.close()
    rows = await store.list_votes()
    assert sorted(r.user_id for r in rows) == ["u1", "u2"]


async def test_corrections_and_chat_state_survive_reopen(db_url: str) -> None:
    store = await Store.open(db_url)
    _, reply = await add_exchange(store)
    await store.add_correction(reply, "u1", "Better.")
    await store.set_chat_character("test", "c1", "Bram")
    await store.set_chat_character("test", "c1", "Aria")
    await store.close()
    reopened = await Store.open(db_url)
    assert [(c.message_id, c.text) for c in await reopened.list_corrections()] == [
        (reply, "Better.")
    ]
    assert await reopened.chat_character("test", "c1") == "Aria"
    assert await reopened.chat_character("test", "c2") is None
    await reopened.close()


async def test_reset_starts_a_new_conversation(store: Store) -> None:
    first = (await store_text(store, "one")).conversation_id
    assert (await store_text(store, "two")).conversation_id == first
    in_thread = await store_text(store, "in a thread", thread="thread-9")
    assert in_thread.conversation_id != first
    await store.reset_conversation("test", "c1", None)
    after = await store_text(store, "three")
    assert after.conversation_id not in (first, in_thread.conversation_id)
    assert after.parent_id is None  # the new conversation starts with no history


async def test_a_postgresql_lock_held_elsewhere_is_waited_out_not_hung_on(pg_url: str) -> None:
    """Another session holding a table lock (a migration, a maintenance script): each
    attempt gives up after ``busy_timeout_s`` (PostgreSQL's lock_timeout) and is retried —
    the user is told once, and the message is stored once when the lock goes; past
    ``max_wait_s`` the store says so instead of blocking its thread for good."""
    import psycopg
    from sqlalchemy.engine import make_url

    from storage.store import StorageUnavailable

    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    store = await Store.open(pg_url, busy_timeout_s=0.2, max_wait_s=30)
    impatient = await Store.open(pg_url, busy_timeout_s=0.2, max_wait_s=0.5)
    foreign = psycopg.connect(dsn)
    try:
        foreign.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")  # held until commit
        told: list[int] = []
        said: dict[str, Any] = dict(
            platform="test",
            chat_id="c1",
            thread_id=None,
            author_id="42",
            author_name="Sam",
            reply_to_platform_id=None,
            created_at=1.0,
        )
        waiting = asyncio.create_task(
            store.store_inbound(
                NewInbound(platform_message_id="m1", text="during the lock", **said),
                link_now=True,
                on_wait=lambda: told.append(1),
            )
        )
        with pytest.raises(StorageUnavailable):
            await asyncio.wait_for(
                impatient.store_inbound(
                    NewInbound(platform_message_id="m2", text="given up", **said),
                    link_now=True,
                ),
                10,
            )
        assert not waiting.done() and told == [1]
        foreign.commit()
        await asyncio.wait_for(waiting, 10)
    finally:
        foreign.close()
    texts = [row.text for row in await store.list_messages()]
    assert texts == ["during the lock"]
    await store.close()
    await impatient.close()
