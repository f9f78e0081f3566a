"""Intake under a slow Bot API: how soon received messages are stored, whatever answering does.

The real Telegram adapter (python-telegram-bot) against the local fake Bot API of the tests,
whose sendMessage takes ``--send-delay`` seconds (1 s by default); the echo backend; a real
SQLite file. ``--messages`` messages from ``--users`` users in private chats are queued at
once, which python-telegram-bot fetches in getUpdates batches of 100 (10 for 1,000).

The fake server runs in a process of its own, as the real Bot API is elsewhere. Prints:
time from the arrival of the last message until every message is stored (the target is
under 3 s, independent of how slow answering is), until every one is answered, peak RSS of
the bot's process, messages stored, duplicates (must be 0).

    .venv/bin/python benchmarks/intake.py [--messages 1000] [--users 100] [--send-delay 1.0]
                                          [--max-replies 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.telegram_adapter import TelegramAdapter
from bot.characters import Character
from bot.config import ModelSettings, TelegramSettings
from bot.core import Core
from engine import EngineSettings, create_model
from storage.store import Store
from tests.fake_telegram import FakeTelegram

TOKEN = "123456789:AAH-benchmark-token"


def counts(db: Path) -> tuple[int, int, int]:
    """Stored user messages, answered ones, duplicates (same platform id twice)."""
    with sqlite3.connect(db) as raw:
        stored, answered, distinct = raw.execute(
            "SELECT count(*), coalesce(sum(progress = 'answered'), 0), "
            "count(DISTINCT platform_message_id) FROM messages WHERE role = 'user'"
        ).fetchone()
    return stored, answered, stored - distinct


async def wait_for(check, timeout: float) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``check()`` is true (polled every 20 ms)."""
    started = time.perf_counter()
    while not check():
        if time.perf_counter() - started > timeout:
            raise TimeoutError("gave up waiting")
        await asyncio.sleep(0.02)
    return time.perf_counter() - started


def serve_fake(messages: int, users: int, send_delay: float, go: Any, report: Any) -> None:
    """The fake Bot API in its own process (as the real one is elsewhere): on ``go`` it
    queues every message at once and reports when; at the end, how many getUpdates."""

    async def serve() -> None:
        fake = FakeTelegram(TOKEN)
        fake.send_delay = send_delay
        await fake.start()
        report.put(fake.base_url)
        while not go.is_set():
            await asyncio.sleep(0.01)
        for n in range(messages):
            fake.user_says(f"message {n} from user {n % users}", user_id=10_000 + n % users)
        report.put(time.time())
        while go.is_set():  # cleared when the bot is done
            await asyncio.sleep(0.05)
        report.put(len(fake.calls("getUpdates")))
        await fake.close()

    asyncio.run(serve())


async def run(messages: int, users: int, send_delay: float, max_replies: int) -> dict[str, Any]:
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    ctx = multiprocessing.get_context("spawn")
    go, report = ctx.Event(), ctx.Queue()
    server = ctx.Process(target=serve_fake, args=(messages, users, send_delay, go, report))
    server.start()
    base_url = report.get(timeout=60)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "intake.db"
        store = await Store.open(f"sqlite:///{db}")
        core = Core(
            store=store,
            model=create_model(EngineSettings(backend="echo")),
            characters=[Character(name="Aria", description="A navigator.")],
            settings=ModelSettings(backend="echo"),
            max_replies=max_replies,
        )
        await core.start()
        settings = TelegramSettings(enabled=True, base_url=base_url)
        adapter = TelegramAdapter(settings, core, TOKEN)
        adapter.poll_timeout = 1.0
        await adapter.start()
        try:
            go.set()
            arrived = await asyncio.to_thread(report.get, True, 60)
            await wait_for(lambda: counts(db)[0] >= messages, 120)
            stored_s = time.time() - arrived
            await wait_for(lambda: counts(db)[1] >= messages, 900)
            answered_s = time.time() - arrived
        finally:
            core.begin_stop()
            await adapter.stop_intake()
            await core.stop(5.0)
            await adapter.stop()
            await core.close()
            await store.close()
            go.clear()
        stored, _, duplicates = counts(db)
    polls = report.get(timeout=60)
    server.join(timeout=30)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "messages": messages,
        "users": users,
        "send_delay_s": send_delay,
        "max_replies": max_replies,
        "all_stored_s": round(stored_s, 2),
        "all_answered_s": round(answered_s, 2),
        "peak_rss_mb (bot)": round(peak_mb, 1),
        "stored": stored,
        "duplicates": duplicates,
        "getUpdates_calls": polls,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--send-delay", type=float, default=1.0)
    parser.add_argument("--max-replies", type=int, default=16, help="[bot] max_replies")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = asyncio.run(run(args.messages, args.users, args.send_delay, args.max_replies))
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
