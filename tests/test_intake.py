"""Crash-safe intake: redelivered events are stored once and answered once, intake never
waits for answering, a stop keeps everything received, a busy database drops nothing.

The real python-telegram-bot Application against the local fake Bot API
(tests/fake_telegram.py), a real Core over a temporary SQLite file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from adapters.telegram_adapter import TelegramAdapter
from bot.characters import Character
from bot.config import ModelSettings, TelegramSettings
from bot.core import Core
from bot.messages import Inbound
from storage.records import NewInbound, ReplyAddress
from storage.store import Store
from storage.unfinished import intake_counts
from tests.fake_telegram import BOT_USERNAME, FakeTelegram
from tests.fakes import FakeModel

TOKEN = "123456789:AAH-fake-telegram-token_intake"
CHARACTERS = [Character(name="Aria", description="A starship navigator.")]


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram(TOKEN)
    await server.start()
    yield server
    await server.close()


class Bots:
    """Starts bots over the test database (each one is the bot after a restart) and stops
    them the way `charbot run` does; whatever still runs at the end is stopped."""

    def __init__(self, fake: FakeTelegram, db_url: str) -> None:
        self.fake = fake
        self.db_url = db_url
        self.running: list[tuple[TelegramAdapter, Core]] = []

    async def start(
        self, model: FakeModel | None = None, **store_options: Any
    ) -> tuple[TelegramAdapter, Core]:
        store = await Store.open(self.db_url, **store_options)
        core = Core(
            store=store,
            model=model or FakeModel(),
            characters=CHARACTERS,
            settings=ModelSettings(backend="fake"),
        )
        await core.start()
        settings = TelegramSettings(enabled=True, base_url=self.fake.base_url)
        adapter = TelegramAdapter(settings, core, TOKEN)
        adapter.poll_timeout = 1.0
        await adapter.start()
        self.running.append((adapter, core))
        return adapter, core

    async def stop(self, adapter: TelegramAdapter, core: Core, grace_s: float = 5.0) -> None:
        """The order `charbot run` stops in: intake, then answering, then the connection."""
        self.running.remove((adapter, core))
        core.begin_stop()
        await adapter.stop_intake()
        await core.stop(grace_s)
        await adapter.stop()
        await core.close()
        await core.store.close()


@pytest.fixture
async def bots(fake: FakeTelegram, db_url: str) -> AsyncIterator[Bots]:
    helper = Bots(fake, db_url)
    yield helper
    for adapter, core in list(helper.running):
        await helper.stop(adapter, core)


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
        )
        first = await store.store_inbound(NewInbound(**values), link_now=True)
        again = await store.store_inbound(NewInbound(**values), link_now=True)
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
    fake: FakeTelegram, bots: Bots
) -> None:
    _, core = await bots.start()
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


# -- intake apart from answering; a stop keeps everything ---------------------------------------


async def test_burst_larger_than_the_handler_slots_then_stop_keeps_every_confirmed_update(
    fake: FakeTelegram, bots: Bots
) -> None:
    """300 messages (more than PTB's 256 handler slots) in 10 groups, every tenth addressed
    to the bot, against a slow Bot API; a stop in the middle of it: every update Telegram was
    told we have is stored, no reply is left half-written, and the next start answers the
    rest, each addressed message once."""
    fake.send_delay = 0.3
    adapter, core = await bots.start(FakeModel(default="a reply of five words", delay=0.05))
    updates = [
        fake.user_says(
            f"@{BOT_USERNAME} burst {n}" if n % 10 == 0 else f"burst {n}",
            user_id=1000 + n,
            chat_id=-1000 - n % 10,
            group=True,
        )
        for n in range(300)
    ]
    await until(lambda: fake.confirmed >= 100)  # a first getUpdates batch is confirmed
    await bots.stop(adapter, core, grace_s=0.3)

    confirmed = fake.confirmed
    stored = {r.platform_message_id for r in await _user_rows(bots)}
    sent = {str(m["message_id"]) for m in updates}
    for message in updates:
        update_id = _update_id(fake, message)
        if update_id <= confirmed:  # Telegram will never send it again: we must have it
            assert str(message["message_id"]) in stored, update_id
    assert len(stored) >= 100
    assert fake.confirmed < max(fake.update_ids.values())  # the stop came mid-burst
    # Every message shown on Telegram is finished: final text and buttons.
    shown = fake.bot_messages()
    assert shown and all("reply_markup" in m for m in shown), [
        m["text"] for m in shown if "reply_markup" not in m
    ]

    # The next start gets what was not confirmed and answers what was not answered.
    fake.send_delay = 0.0
    _, core = await bots.start(FakeModel(default="later"))
    await until(lambda: _all_answered(core, 300), timeout=30)
    users = await rows(core, "user")
    assert {r.platform_message_id for r in users} == sent  # all 300, each stored once
    answers = [r.parent_id for r in await rows(core, "assistant")]
    addressed = [r.id for r in users if r.text.startswith("burst") and r.progress]
    assert len(addressed) == 30
    assert sorted(answers) == sorted(addressed)  # each answered exactly once
    assert all("reply_markup" in m for m in fake.bot_messages())


def _update_id(fake: FakeTelegram, message: dict[str, Any]) -> int:
    return fake.update_ids[message["message_id"]]


async def _user_rows(bots: Bots) -> list[Any]:
    store = await Store.open(bots.db_url)
    try:
        return [r for r in await store.list_messages() if r.role == "user"]
    finally:
        await store.close()


async def _all_answered(core: Core, count: int) -> bool:
    """``count`` user messages stored, and every one that asked for an answer answered."""
    users = await rows(core, "user")
    return len(users) == count and all(r.progress in (None, "answered") for r in users)


async def test_stop_mid_reply_finishes_it_with_its_buttons(fake: FakeTelegram, bots: Bots) -> None:
    words = " ".join(f"word{n}" for n in range(200))
    adapter, core = await bots.start(FakeModel([words], delay=0.05))  # ~10 s to generate
    fake.user_says("tell me a long story", user_id=950)
    await until(lambda: fake.calls("sendMessage"))
    await bots.stop(adapter, core, grace_s=0.5)
    (shown,) = fake.bot_messages(950)
    assert shown["text"].endswith("[interrupted]") and "reply_markup" in shown
    store = await Store.open(bots.db_url)
    try:
        (reply,) = [r for r in await store.list_messages() if r.role == "assistant"]
        assert reply.status == "interrupted" and reply.text.endswith("[interrupted]")
    finally:
        await store.close()


# -- recovery at start -----------------------------------------------------------------------


async def test_restart_answers_the_backlog_once_skips_old_and_finishes_cut_off_replies(
    fake: FakeTelegram, bots: Bots
) -> None:
    store = await Store.open(bots.db_url)
    now = time.time()

    async def left(chat: str, pid: str, text: str, age_s: float, link: bool = True) -> Any:
        return await store.store_inbound(
            NewInbound(
                platform="telegram",
                chat_id=chat,
                thread_id=None,
                platform_message_id=pid,
                author_id=chat,
                author_name="Ann",
                text=text,
                reply_to_platform_id=None,
                created_at=now - age_s,
                wants_answer=True,
            ),
            link_now=link,
        )

    # What a run that died left behind: two recent messages in one chat, an old one ...
    first = await left("700", "11", "first", 60)
    second = await left("700", "12", "second", 30, link=False)
    old = await left("701", "13", "from long ago", 3600)
    # ... and a reply that was streaming: Telegram shows it half-written, without buttons.
    asked = await left("702", "14", "tell me", 20)
    half = await fake._api_sendMessage({"chat_id": 702, "text": "Aria\nOnce upon a"})
    await store.begin_reply(
        ReplyAddress(asked.conversation_id, "telegram", "702", asked.message_id, "Aria"),
        text="Once upon a",
        platform_message_id=str(half["message_id"]),
    )
    await store.close()

    adapter, core = await bots.start(FakeModel(["one", "two"]))
    await until(lambda: len(fake.calls("sendMessage")) == 2)
    in_order = fake.calls("sendMessage")
    assert [c.params["text"] for c in in_order] == ["<b>Aria</b>\none", "<b>Aria</b>\ntwo"]
    assert [c.params["reply_parameters"]["message_id"] for c in in_order] == [11, 12]
    assert fake.messages[(702, half["message_id"])]["text"].endswith("Once upon a [interrupted]")
    assert "reply_markup" in fake.messages[(702, half["message_id"])]

    await until(lambda: _all_answered_but(core, old.message_id))
    by_id = {r.id: r for r in await core.store.list_messages()}
    assert by_id[first.message_id].progress == by_id[second.message_id].progress == "answered"
    assert by_id[asked.message_id].progress == "answered"
    assert by_id[old.message_id].progress == "skipped"
    counts = await intake_counts(core.store)
    assert counts == {"pending": 0, "skipped": 1, "interrupted": 1}
    await bots.stop(adapter, core)

    # Another restart answers nothing again.
    await bots.start(FakeModel(["never"]))
    await asyncio.sleep(1.0)
    assert len(fake.calls("sendMessage")) == 2


# -- a busy database -------------------------------------------------------------------------


async def test_foreign_exclusive_lock_past_the_busy_timeout_delays_but_drops_nothing(
    fake: FakeTelegram, bots: Bots
) -> None:
    _, core = await bots.start(busy_timeout_s=0.2, max_wait_s=30)
    await until(lambda: fake.calls("getUpdates"))
    path = bots.db_url.removeprefix("sqlite:///")
    foreign = sqlite3.connect(path, isolation_level=None)  # a backup, a shell, another bot
    foreign.execute("BEGIN EXCLUSIVE")
    try:
        said = [fake.user_says(f"while locked {n}", user_id=960 + n) for n in range(3)]
        await until(lambda: any("trouble saving" in t for t in _sent_texts(fake)))
        await asyncio.sleep(1.0)  # held for five busy timeouts
        assert fake.confirmed < _update_id(fake, said[0])  # not confirmed while not stored
    finally:
        foreign.execute("COMMIT")
        foreign.close()
    await until(
        lambda: (
            sum("while locked" in t for t in _sent_texts(fake)) == 0
            and len([t for t in _sent_texts(fake) if "trouble saving" not in t]) == 3
        )
    )
    users = await rows(core, "user")
    assert sorted(r.text for r in users) == [f"while locked {n}" for n in range(3)]
    await until(lambda: _all_answered(core, 3))
    await until(lambda: fake.confirmed >= _update_id(fake, said[-1]))


async def _all_answered_but(core: Core, skipped: int) -> bool:
    users = await rows(core, "user")
    return all(r.progress == "answered" for r in users if r.id != skipped)


def _sent_texts(fake: FakeTelegram) -> list[str]:
    return [c.params["text"] for c in fake.calls("sendMessage")]


# -- malformed events ------------------------------------------------------------------------


async def test_malformed_updates_never_stop_the_bot(fake: FakeTelegram, bots: Bots) -> None:
    _, core = await bots.start()
    no_chat = {"message_id": 5, "date": int(time.time()), "from": fake.user(970), "text": "hi"}
    fake.push({"message": no_chat})
    fake.user_says("broken \ud800 half of a pair", user_id=971)
    await until(lambda: _all_answered(core, 1))
    (row,) = await rows(core, "user")
    assert row.text == "broken \ufffd half of a pair"  # kept, with the replacement character


async def test_stop_while_the_database_stays_locked_leaves_the_update_for_telegram(
    fake: FakeTelegram, bots: Bots
) -> None:
    """What cannot be stored is not confirmed: Telegram delivers it again after a restart."""
    adapter, _ = await bots.start(busy_timeout_s=0.1, max_wait_s=0.5)
    adapter._ledger.stop_wait_s = 0.5
    await until(lambda: fake.calls("getUpdates"))
    foreign = sqlite3.connect(bots.db_url.removeprefix("sqlite:///"), isolation_level=None)
    foreign.execute("BEGIN EXCLUSIVE")
    try:
        said = fake.user_says("during the outage", user_id=990)
        await until(lambda: any("trouble saving" in t for t in _sent_texts(fake)))
        await bots.stop(*bots.running[0], grace_s=0.5)
    finally:
        foreign.execute("COMMIT")
        foreign.close()
    assert fake.confirmed < _update_id(fake, said)

    _, core = await bots.start()
    await until(lambda: _all_answered(core, 1))
    (row,) = await rows(core, "user")
    assert row.text == "during the outage"
