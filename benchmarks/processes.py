"""Several bot processes on one PostgreSQL: nothing lost, nothing answered twice, no errors.

``--processes`` processes (spawned, each with its own Store and Core: the echo backend, the
real intake, per-chat lines and storage) take ``--messages`` messages over ``--chats``
chats at once. Every process sets each chat's character at its start (the write that once
crashed a process with UniqueViolation on chat_state_pkey), then gets its share of the
messages: message i goes to process i % N, and is delivered again to process (i + 1) % N
(a redelivered event, as a platform sends after a timeout), so the same chats are written
by every process at the same moment. Then the same messages through one process on a fresh
database, in the same run, for messages/s against one process.

Prints, per run: stored, lost (sent but not stored), duplicates, answered, unanswered,
answered twice (a message with two replies), errors (log records at ERROR or above and
exceptions, tracebacks included, over all processes), seconds, messages/s.

A PostgreSQL server is started in a temporary directory (PostgreSQL 15's initdb/pg_ctl, as
the tests do; CHARBOT_PG_BIN overrides where they are) unless ``--url`` names a database,
whose tables must be empty (two fresh databases are made on it: ``--url`` is the server's).

    .venv/bin/python benchmarks/processes.py [--processes 3] [--messages 1000] [--chats 100]
                                             [--url postgresql+psycopg://user@host/postgres]
                                             [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.postgres import PG_BIN, _as_server_user, _free_port, skip_reason

CHARACTER = "Aria"


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL 15 on 127.0.0.1; yields the URL of its ``postgres`` database."""
    reason = skip_reason()
    if reason:
        raise SystemExit(f"processes.py: {reason}; or pass --url")
    root = Path(tempfile.mkdtemp(prefix="charbot-bench-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        import pwd

        account = pwd.getpwnam("postgres")
        os.chown(root, account.pw_uid, account.pw_gid)
    port = _free_port()
    run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "charbot", "--auth=trust"]
    subprocess.run(_as_server_user([*initdb, "-E", "UTF8"]), **run)  # type: ignore[call-overload]
    options = f"-h 127.0.0.1 -p {port} -k {root} -c max_connections=100"
    start = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w"]
    subprocess.run(_as_server_user([*start, "-o", options, "start"]), **run)  # type: ignore[call-overload]
    try:
        yield f"postgresql+psycopg://charbot@127.0.0.1:{port}/postgres"
    finally:
        stop = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]
        subprocess.run(_as_server_user(stop), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


_databases = itertools.count(1)


def fresh_database(server_url: str) -> str:
    """A new empty database on the server of ``server_url``; its URL."""
    name = f"bench_processes_{os.getpid()}_{next(_databases)}"
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


class _Errors(logging.Handler):
    """Counts log records at ERROR or above (an exception logged with its traceback too)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(self.format(record))


def _worker(
    worker: int,
    url: str,
    deliveries: list[tuple[int, int]],
    chats: int,
    go: Any,
    results: Any,
) -> None:
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    logging.getLogger().setLevel(logging.WARNING)
    try:
        elapsed = asyncio.run(_serve(worker, url, deliveries, chats, go))
    except BaseException:
        errors.seen.append(traceback.format_exc())
        elapsed = float("nan")
    results.put((worker, elapsed, errors.seen))


async def _serve(
    worker: int, url: str, deliveries: list[tuple[int, int]], chats: int, go: Any
) -> float:
    from bot.characters import Character
    from bot.config import ModelSettings
    from bot.core import Core
    from bot.messages import Inbound
    from engine import EngineSettings, create_model
    from storage.store import Store
    from tests.fakes import RecordingTarget

    ids = itertools.count(1)

    class Target(RecordingTarget):
        async def send(self, text: str, *, character: Character) -> str:
            message_id = f"p{worker}-{next(ids)}"  # unique across processes, as on a platform
            self.messages[message_id] = text
            return message_id

    store = await Store.open(url)
    core = Core(
        store=store,
        model=create_model(EngineSettings(backend="echo")),
        characters=[Character(name=CHARACTER, description="A navigator.")],
        settings=ModelSettings(backend="echo"),
    )
    await core.start()
    try:
        await asyncio.to_thread(go.wait)
        started = time.perf_counter()
        for chat in range(chats):  # every process at once, as three starting bots do
            await store.set_chat_character("bench", f"chat{chat}", CHARACTER)

        async def one(message: int, chat: int) -> None:
            inbound = Inbound(
                platform="bench",
                chat_id=f"chat{chat}",
                message_id=f"msg{message}",
                author_id=f"user{message % 7}",
                author_name="Someone",
                text=f"message {message}",
            )
            await core.handle(inbound, Target())

        await asyncio.gather(*(one(message, chat) for message, chat in deliveries))
        return time.perf_counter() - started
    finally:
        core.begin_stop()
        await core.stop(5.0)
        await core.close()
        await store.close()


def count(url: str, messages: int) -> dict[str, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        stored, distinct, answered = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT (chat_id, platform_message_id)), "
                "coalesce(sum(CASE WHEN progress = 'answered' THEN 1 ELSE 0 END), 0) "
                "FROM messages WHERE role = 'user'"
            )
        ).one()
        twice = conn.execute(
            text(
                "SELECT count(*) FROM (SELECT reply_to_id FROM messages "
                "WHERE role = 'assistant' AND status = 'ok' AND regenerated_from_id IS NULL "
                "GROUP BY reply_to_id HAVING count(*) > 1) AS t"
            )
        ).scalar_one()
    engine.dispose()
    return {
        "stored": stored,
        "lost": messages - distinct,
        "duplicates": stored - distinct,
        "answered": answered,
        "unanswered": stored - answered,
        "answered_twice": twice,
    }


def run(url: str, processes: int, messages: int, chats: int) -> dict[str, Any]:
    """One run: ``processes`` processes on the (empty) database ``url``."""
    ctx = multiprocessing.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    plan: list[list[tuple[int, int]]] = [[] for _ in range(processes)]
    for message in range(messages):
        chat = message % chats
        plan[message % processes].append((message, chat))
        if processes > 1:  # delivered again to the next process
            plan[(message + 1) % processes].append((message, chat))
    # Migrate first: the race of first starts is tests/test_migrations.py's.
    asyncio.run(_migrate(url))
    procs = [
        ctx.Process(target=_worker, args=(n, url, plan[n], chats, go, results))
        for n in range(processes)
    ]
    for proc in procs:
        proc.start()
    time.sleep(0.5)
    go.set()
    outcomes = [results.get(timeout=900) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    seconds = max(elapsed for _, elapsed, _ in outcomes)
    errors = [error for _, _, seen in outcomes for error in seen]
    figures: dict[str, Any] = {"processes": processes, "messages": messages, "chats": chats}
    figures.update(count(url, messages))
    figures["errors"] = len(errors)
    figures["seconds"] = round(seconds, 2)
    figures["messages_per_s"] = round(messages / seconds, 1)
    if errors:
        figures["first_error"] = errors[0][-2000:]
    return figures


async def _migrate(url: str) -> None:
    from storage.store import Store

    store = await Store.open(url)
    await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--chats", type=int, default=100)
    parser.add_argument("--url", help="a PostgreSQL server's URL (default: start one)")
    parser.add_argument("--quick", action="store_true", help="60 messages over 6 chats")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.chats = 60, 6
    with contextlib.ExitStack() as stack:
        server = args.url or stack.enter_context(postgres_server())
        several = run(fresh_database(server), args.processes, args.messages, args.chats)
        one = run(fresh_database(server), 1, args.messages, args.chats)
    print(json.dumps({"several": several, "one": one}, indent=2))
    bad = {k: several[k] for k in ("lost", "answered_twice", "errors", "unanswered", "duplicates")}
    if any(bad.values()) or one["lost"] or one["errors"]:
        print(f"FAILED: {bad}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
