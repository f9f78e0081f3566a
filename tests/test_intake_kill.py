"""`kill -9` of a real `charbot run` process mid-stream, against the fake Telegram Bot API:
the database stays intact, nothing Telegram was told we have is missing, and the next start
answers the rest and finishes the cut-off replies; then SIGTERM stops it cleanly (exit 0)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fake_telegram import FakeTelegram
from tests.test_intake import until

REPO = Path(__file__).resolve().parent.parent
TOKEN = "123456789:AAH-fake-telegram-token_kill"
CONFIG = """
[model]
backend = "echo"

[storage]
url = "sqlite:///{db}"

[telegram]
enabled = true
base_url = "{base_url}"

[bot]
shutdown_grace_s = 3

[[characters]]
name = "Aria"
description = "A navigator."
"""


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram(TOKEN)
    await server.start()
    yield server
    await server.close()


async def start_run(config: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "TELEGRAM_TOKEN": TOKEN, "PYTHONIOENCODING": "utf-8"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "charbot.cli",
        "run",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    assert proc.stderr is not None
    seen = []
    while not seen or b"telegram connected" not in seen[-1]:  # after the recovery report
        seen.append(await asyncio.wait_for(proc.stderr.readline(), 60))
        assert seen[-1], b"".join(seen)
    return proc


def query(db: Path, sql: str) -> list[Any]:
    with sqlite3.connect(db) as raw:
        return raw.execute(sql).fetchall()


async def test_kill_9_mid_stream_loses_nothing(tmp_path: Path, fake: FakeTelegram) -> None:
    db = tmp_path / "charbot.db"
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.format(db=db, base_url=fake.base_url), encoding="utf-8")
    fake.send_delay = fake.edit_delay = 0.2  # replies stay on screen half-written a while

    first = await start_run(config)
    said = [fake.user_says(f"message {n}", user_id=2000 + n % 20) for n in range(60)]
    # Kill while the bot has a reply on Telegram that it has not finished (recorded as
    # streaming); watching the fake instead raced with the bot's own record under load.
    await until(lambda: query(db, "SELECT count(*) FROM streaming_replies") != [(0,)])
    first.kill()
    await first.wait()

    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    stored = {pid for (pid,) in query(db, "SELECT platform_message_id FROM messages")}
    for message in said:  # what Telegram will not send again is ours
        if fake.update_ids[message["message_id"]] <= fake.confirmed:
            assert str(message["message_id"]) in stored
    cut_off = [
        json_ids for (json_ids,) in query(db, "SELECT platform_message_ids FROM streaming_replies")
    ]
    assert cut_off, "the kill came while no reply was streaming"

    fake.send_delay = fake.edit_delay = 0.0
    second = await start_run(config)
    total = len(said)

    def all_answered() -> bool:
        rows = query(
            db, "SELECT count(*), sum(progress = 'answered') FROM messages WHERE role = 'user'"
        )
        return rows == [(total, total)]

    await until(all_answered, timeout=60)
    second.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(second.communicate(), 30)
    assert second.returncode == 0, err.decode()
    assert b"Traceback" not in err, err.decode()

    # Each message stored once and answered once; every reply on Telegram finished.
    assert query(
        db, "SELECT count(DISTINCT platform_message_id) FROM messages WHERE role = 'user'"
    ) == [(total,)]
    answers = query(
        db,
        "SELECT count(*) FROM messages r JOIN messages u ON r.reply_to_id = u.id "
        "WHERE r.role = 'assistant' AND u.role = 'user' GROUP BY u.id",
    )
    assert answers == [(1,)] * total
    assert query(db, "SELECT count(*) FROM streaming_replies") == [(0,)]
    interrupted = query(db, "SELECT platform_message_id FROM messages WHERE status = 'interrupted'")
    assert len(interrupted) == len(cut_off)
    for (pid,) in interrupted:
        (shown,) = [m for m in fake.bot_messages() if str(m["message_id"]) == pid]
        assert shown["text"].endswith("[interrupted]") and "reply_markup" in shown
