"""Several processes on one database, each with its own Store, doing the same write at the
same moment: no process fails, and what is meant to be one row is one row.

Each write path of the store is raced by real processes (multiprocessing, spawn), on
SQLite and on a real PostgreSQL server (tests/postgres.py). A barrier lines the processes
up before every write so that they hit the database together.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text

from bot.config.settings import MemorySettings
from bot.memory.notes import Notes, Person
from storage import lora_choices, swipes
from storage import memory as sql
from storage.greetings import add_greeting
from storage.paraphrases import add_paraphrases
from storage.records import MemoryMessage, NewInbound, NewReply, ReplyAddress
from storage.review import exclude
from storage.schema import (
    ChatState,
    Conversation,
    Correction,
    Exclusion,
    ForgottenPerson,
    LoraChoice,
    Message,
    MessageVector,
    Paraphrase,
    PersonNote,
    Summary,
    SwipeChoice,
    Vote,
)
from storage.store import Store

PROCESSES = 4


def _inbound(chat: str, pid: str, text: str = "hello") -> NewInbound:
    return NewInbound("telegram", chat, None, pid, "u1", "Ann", text, None, time.time())


async def _seed(url: str) -> dict[str, int]:
    """One chat with a user message and two sibling replies to it."""
    store = await Store.open(url)
    try:
        first = await store.store_inbound(_inbound("seed", "1"), link_now=True)
        address = ReplyAddress(first.conversation_id, "telegram", "seed", first.message_id, "Mara")
        reply = await store.add_reply(NewReply(address, "one", ["r1"]))
        sibling = await store.add_reply(NewReply(address, "two", ["r2"], regenerated_from_id=reply))
        return {
            "conversation": first.conversation_id,
            "user": first.message_id,
            "reply": reply,
            "sibling": sibling,
        }
    finally:
        await store.close()


async def _writes(worker: int, url: str, ids: dict[str, int], barrier: Any) -> None:
    """Every write path, each at once with the other processes."""
    store = await Store.open(url)
    person = Person("telegram", "u1", "Ann", "seed", private=True)
    notes = Notes(store, MemorySettings())
    messages = [
        MemoryMessage(
            ids[k], ids["conversation"], "telegram", "seed", "", role, "u1", "Ann", "", t, 0.0
        )
        for k, role, t in (("user", "user", "hello"), ("reply", "assistant", "one"))
    ]
    steps = [
        lambda: store.set_chat_character("telegram", "seed", "Mara"),
        lambda: store.set_vote(ids["reply"], "u1", 1),
        lambda: store.set_vote(ids["reply"], "u1", -1),
        lambda: store.add_correction(ids["reply"], f"u{worker}", "better"),
        lambda: swipes.keep(store, kept_id=ids["sibling"], relink_id=None, user_id="u1"),
        lambda: lora_choices.record_choice(store, "Mara", "v1", "/loras/v1", "cli"),
        lambda: notes.remember("Mara", person, "likes tea"),
        lambda: store.write(
            lambda conn: sql.add_summary(
                conn, ids["conversation"], ids["user"], ids["reply"], "they met", "m", 1.0
            )
        ),
        lambda: store.write(
            lambda conn: sql.add_vectors(conn, "e5", [(m, b"\x00\x01") for m in messages])
        ),
        lambda: store.write(lambda conn: sql.forget_person(conn, "telegram", "u9", time.time())),
        lambda: exclude(store, ids["reply"], "off topic", "reviewer"),
        lambda: add_paraphrases(store, ids["reply"], ["hi", "hey"], author="reviewer"),
        # A chat nobody wrote in yet: every process starts its conversation at once.
        lambda: store.store_inbound(_inbound("fresh", f"m{worker}"), link_now=True),
        lambda: add_greeting(
            store,
            platform="discord",
            chat_id="new",
            thread_id=None,
            character="Mara",
            text="Hello!",
            platform_message_id=f"g{worker}",
        ),
    ]
    try:
        for step in steps:
            barrier.wait()
            await step()
    finally:
        await store.close()


def _worker(worker: int, url: str, ids: dict[str, int], barrier: Any, results: Any) -> None:
    try:
        asyncio.run(_writes(worker, url, ids, barrier))
        results.put((worker, None))
    except BaseException:  # reported to the parent, which fails the test with it
        barrier.abort()  # the others must not wait for this one at the next step
        results.put((worker, traceback.format_exc()))


def _no_failures(outcomes: list[tuple[int, str | None]]) -> None:
    """The first real error of any process (not another one's broken barrier)."""
    failures = sorted((e for _, e in outcomes if e), key=lambda e: "BrokenBarrierError" in e)
    assert not failures, failures[0]


def _count(engine: Any, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def _race(url: str) -> None:
    ids = asyncio.run(_seed(url))
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES, timeout=120), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(n, url, ids, barrier, results)) for n in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    _no_failures(outcomes)
    assert all(proc.exitcode == 0 for proc in procs)

    engine = create_engine(url.replace("+aiosqlite", ""))
    try:
        with engine.connect() as conn:
            state = conn.execute(select(ChatState.__table__)).all()
            vote = conn.execute(select(Vote.__table__.c.value)).scalars().all()
        assert [(row.platform, row.chat_id, row.character) for row in state] == [
            ("telegram", "seed", "Mara")
        ]
        assert vote == [-1]  # one row, the last value every process set
        assert _count(engine, Correction.__table__) == PROCESSES  # each one a new correction
        assert _count(engine, SwipeChoice.__table__) == 1
        assert _count(engine, LoraChoice.__table__) == 1
        assert _count(engine, PersonNote.__table__) == 1
        assert _count(engine, Summary.__table__) == 1
        assert _count(engine, MessageVector.__table__) == 2
        assert _count(engine, ForgottenPerson.__table__) == 1
        assert _count(engine, Exclusion.__table__) == 1
        assert _count(engine, Paraphrase.__table__) == 2
        conversations = Conversation.__table__
        fresh = conversations.c.chat_id == "fresh"
        assert _count(engine, conversations, fresh) == 1
        assert _count(engine, Message.__table__, Message.__table__.c.chat_id == "fresh") == (
            PROCESSES
        )
        assert _count(engine, conversations, conversations.c.chat_id == "new") == 1
        assert _count(engine, Message.__table__, Message.__table__.c.chat_id == "new") == (
            PROCESSES
        )
        with engine.connect() as conn:  # every greeting in that one conversation
            spread = conn.execute(
                text("SELECT count(DISTINCT conversation_id) FROM messages WHERE chat_id = 'new'")
            ).scalar_one()
        assert spread == 1
    finally:
        engine.dispose()


def test_every_write_path_races_safely_on_sqlite(tmp_path: Path) -> None:
    _race(f"sqlite:///{tmp_path / 'race.db'}")


def test_every_write_path_races_safely_on_postgresql(pg_url: str) -> None:
    """The bug this guards: three processes setting one chat's character at once on
    PostgreSQL, one died with UniqueViolation on chat_state_pkey."""
    _race(pg_url)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_chat_character_race_repeated(tmp_path: Path, backend: str, request: Any) -> None:
    """The reported race on its own, many times over: every process sets the character of
    the same new chats at once."""
    url = (
        f"sqlite:///{tmp_path / 'chars.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    asyncio.run(_seed(url))  # migrated before the race
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES, timeout=120), ctx.Queue()
    procs = [
        ctx.Process(target=_set_characters, args=(n, url, barrier, results))
        for n in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    _no_failures(outcomes)
    engine = create_engine(url)
    try:
        assert _count(engine, ChatState.__table__) == 20
    finally:
        engine.dispose()


def _set_characters(worker: int, url: str, barrier: Any, results: Any) -> None:
    async def run() -> None:
        store = await Store.open(url)
        try:
            for chat in range(20):
                barrier.wait()
                await store.set_chat_character("telegram", f"c{chat}", f"C{worker}")
        finally:
            await store.close()

    try:
        asyncio.run(run())
        results.put((worker, None))
    except BaseException:
        barrier.abort()
        results.put((worker, traceback.format_exc()))


def test_three_charbot_processes_on_one_postgresql(tmp_path: Path, pg_url: str) -> None:
    """Three `charbot chat` processes started together on one empty PostgreSQL database,
    all in the same chat, each sending messages and rating its replies: every process exits
    0 with no traceback, and every message is stored once and answered once."""
    import subprocess
    import sys

    from tests.test_console import REPO, write_config

    config = write_config(tmp_path)
    text_ = config.read_text(encoding="utf-8")
    text_ = text_.replace('url = "sqlite:///data/charbot.db"', f'url = "{pg_url}"', 1)
    assert pg_url in text_
    config.write_text(text_, encoding="utf-8")
    count, per = 3, 6
    scripts = [
        "".join(f"process {n} message {i}\n/good\n" for i in range(per)) + "/quit\n"
        for n in range(count)
    ]
    env = {**__import__("os").environ, "PYTHONIOENCODING": "utf-8"}
    command = [sys.executable, "-m", "charbot.cli", "--config", str(config)]
    procs = [
        subprocess.Popen(
            [*command, "chat", "--character", "Bram", "--backend", "echo"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        for _ in range(count)
    ]
    outputs = [
        proc.communicate(script, timeout=180) for proc, script in zip(procs, scripts, strict=True)
    ]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id, role, text, reply_to_id, progress, status FROM messages")
            ).all()
    finally:
        engine.dispose()
    asked = [row for row in rows if row.role == "user"]
    texts = sorted(row.text for row in asked)
    assert texts == sorted(f"process {n} message {i}" for n in range(count) for i in range(per))
    assert all(row.progress == "answered" for row in asked)
    answers = [row.reply_to_id for row in rows if row.role == "assistant" and row.status == "ok"]
    assert sorted(answers) == sorted(row.id for row in asked)  # each answered exactly once
