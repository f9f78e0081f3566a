"""Crash-safe intake: redelivered events are stored once and answered once, intake never
waits for answering, a stop keeps everything received, a busy database drops nothing.

The real python-telegram-bot Application against the local fake Bot API
(tests/fake_telegram.py), a real Core over a temporary SQLite file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from adapters.telegram_adapter import TelegramAdapter
from bot.characters import Character
from bot.config import ModelSettings, TelegramSettings
from bot.core import Core
from bot.messages import Inbound
from storage.store import Store
from tests.fake_telegram import FakeTelegram
from tests.fakes import FakeModel

TOKEN = "123456789:AAH-fake-telegram-token_intake"
CHARACTERS = [Character(name="Aria", description="A starship navigator.")]

StartBot = Callable[..., Awaitable[tuple[TelegramAdapter, Core]]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram(TOKEN)
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def start_bot(fake: FakeTelegram, db_url: str) -> AsyncIterator[StartBot]:
    """``adapter, core = await start_bot(model)``: a bot over the test database; each call
    is the bot after a restart. Whatever is still running at the end is stopped."""
    running: list[tuple[TelegramAdapter, Core, Store]] = []

    async def factory(
        model: FakeModel | None = None, **store_options: Any
    ) -> tuple[TelegramAdapter, Core]:
        store = await Store.open(db_url, **store_options)
        core = Core(
            store=store,
            model=model or FakeModel(),
            characters=CHARACTERS,
            settings=ModelSettings(backend="fake"),
        )
        await core.start()
        adapter = TelegramAdapter(
            TelegramSettings(enabled=True, base_url=fake.base_url), core, TOKEN
        )
        adapter.poll_timeout = 1.0
        await adapter.start()
        running.append((adapter, core, store))
        return adapter, core

    yield factory
    for adapter, core, _store in running:
        await stop_bot(adapter, core)


async def stop_bot(adapter: TelegramAdapter, core: Core, grace_s: float = 5.0) -> None:
    """The order `charbot run` stops in: intake, then answering, then the connection."""
    await adapter.stop_intake()
    await core.stop(grace_s)
    await adapter.stop()
    await core.close()
    await core.store.close()


async def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll a check (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {getattr(check, '__name__', check)}")
        await asyncio.sleep(0.02)


async def rows(core: Core, role: str) -> list[Any]:
    return [r for r in await core.store.list_messages() if r.role == role]


def inbound(text: str, message_id: str, chat: str = "c1") -> Inbound:
    return Inbound(
        platform="test",
        chat_id=chat,
        message_id=message_id,
        author_id="u1",
        author_name="Sam",
        text=text,
    )


# -- idempotent intake ------------------------------------------------------------------------


async def test_store_inbound_twice_is_one_row(db_url: str) -> None:
    store = await Store.open(db_url)
    try:
        values: dict[str, Any] = dict(
            platform="telegram",
            chat_id="5",
            thread_id=None,
            platform_message_id="77",
            author_id="1",
            author_name="A",
            text="hi",
            reply_to_platform_id=None,
            created_at=1.0,
            link_now=True,
        )
        first = await store.store_inbound(**values)
        again = await store.store_inbound(**values)
        assert not first.duplicate and again.duplicate
        assert again.message_id == first.message_id
        assert len(await store.list_messages()) == 1
        # The schema refuses a second row too, whatever code path tries it.
        with (
            sqlite3.connect(db_url.removeprefix("sqlite:///")) as raw,
            pytest.raises(sqlite3.IntegrityError),
        ):
            raw.execute(
                "INSERT INTO messages (conversation_id, platform, chat_id, platform_message_id,"
                " role, author_id, author_name, text, status, created_at)"
                " VALUES (1, 'telegram', '5', '77', 'user', '1', 'A', 'hi', 'ok', 1.0)"
            )
    finally:
        await store.close()


async def test_redelivered_batch_is_stored_once_and_answered_once(
    fake: FakeTelegram, start_bot: StartBot
) -> None:
    _, core = await start_bot()
    said = [fake.user_says(f"message {n}", user_id=600 + n) for n in range(5)]
    await until(lambda: len(fake.calls("sendMessage")) == 5)
    # Telegram sends the same messages again (an offset that was never confirmed).
    for message in said:
        fake.push({"message": message})
    await until(lambda: len(fake.calls("getUpdates")) > 0 and not fake._updates)
    await asyncio.sleep(0.5)
    users = await rows(core, "user")
    assert sorted(r.text for r in users) == [f"message {n}" for n in range(5)]
    assert len(fake.calls("sendMessage")) == 5  # nobody answered twice
    assert {r.progress for r in users} == {"answered"}
