"""Limits through the real clients: python-telegram-bot against tests/fake_telegram.py and
discord.py against tests/fake_discord.py. A flood beyond the limit is all stored, not all
answered, with exactly one notice; an admin is exempt; a minute on (the clock moved, not
slept) the person is answered again; /quota says where they stand (ephemeral on Discord)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from adapters.discord_adapter import DiscordAdapter
from adapters.telegram_adapter import TelegramAdapter
from bot.config import DiscordSettings, LimitRules, LimitsSettings, TelegramSettings
from bot.core import Core
from bot.limits import LIMITED
from tests import test_discord, test_telegram
from tests.fake_discord import FakeDiscord
from tests.fake_telegram import FakeTelegram
from tests.fakes import FakeModel
from tests.test_console import run_script
from tests.test_limits import Clock
from tests.test_memory_discord import ask
from tests.test_versions_telegram import sent_texts

RULES = LimitRules(base=LimitsSettings(messages_per_minute=3))
NOTICE = "answered messages this minute, your limit here"
GROUP, ALICE, BOB = test_telegram.GROUP, test_telegram.ALICE, test_telegram.BOB


async def progress(core: Core, author: str) -> list[str | None]:
    rows = await core.store.list_messages()
    return [r.progress for r in rows if r.role == "user" and r.author_id == author]


async def settled(core: Core, author: str, count: int) -> list[str | None]:
    """The progress of ``author``'s messages, once ``count`` are stored and none pending."""

    async def check() -> list[str | None]:
        found = await progress(core, author)
        return found if len(found) == count and "pending" not in found else []

    return await test_telegram.until(check)


# -- Telegram -------------------------------------------------------------------------------


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram(test_telegram.TOKEN)
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def telegram_bot(
    telegram: FakeTelegram, make_core: Any
) -> AsyncIterator[Callable[..., Awaitable[Core]]]:
    started: list[TelegramAdapter] = []

    async def factory(clock: Clock, **settings: Any) -> Core:
        core = await make_core(
            model=FakeModel(), characters=test_telegram.CHARACTERS, limits=RULES, clock=clock
        )
        config = TelegramSettings(enabled=True, base_url=telegram.base_url, **settings)
        adapter = TelegramAdapter(config, core, test_telegram.TOKEN)
        adapter.poll_timeout = 1.0
        started.append(adapter)
        await adapter.start()
        return core

    yield factory
    for adapter in started:
        await adapter.stop()


def notices(server: FakeTelegram) -> list[str]:
    return [t for t in sent_texts(server) if NOTICE in t]


async def test_telegram_flood_is_stored_answered_to_the_limit_and_told_once(
    telegram: FakeTelegram, telegram_bot: Callable[..., Awaitable[Core]]
) -> None:
    clock = Clock()
    core = await telegram_bot(clock, admins=(str(BOB),))
    for i in range(8):
        telegram.user_says(f"/ask flood {i}", user_id=ALICE, chat_id=GROUP, group=True)
    found = await settled(core, str(ALICE), 8)
    assert found.count("answered") == 3 and found.count(LIMITED) == 5
    (told,) = notices(telegram)
    assert told.startswith("Alice, that's 3 answered messages this minute")

    telegram.user_says("/quota", user_id=ALICE, chat_id=GROUP, group=True)
    answer = await test_telegram.until(lambda: [t for t in sent_texts(telegram) if "of 3" in t])
    assert "Answered this minute: 3 of 3" in answer[0]
    assert "Reply tokens today: 3 of 20,000" in answer[0]
    assert "Over the limit: I'll answer you again in" in answer[0]

    for i in range(5):  # an admin: no limit
        telegram.user_says(f"/ask admin {i}", user_id=BOB, name="Bob", chat_id=GROUP, group=True)
    assert (await settled(core, str(BOB), 5)).count("answered") == 5

    clock.now += 61
    telegram.user_says("/ask back again", user_id=ALICE, chat_id=GROUP, group=True)
    assert (await settled(core, str(ALICE), 9))[-1] == "answered"
    assert len(notices(telegram)) == 1


async def test_telegram_quota_in_a_private_chat_and_for_an_admin(
    telegram: FakeTelegram, telegram_bot: Callable[..., Awaitable[Core]]
) -> None:
    await telegram_bot(Clock(), admins=(str(BOB),))
    telegram.user_says("/quota", user_id=ALICE)
    telegram.user_says("/quota", user_id=BOB, name="Bob")
    texts = await test_telegram.until(
        lambda: len(sent_texts(telegram)) == 2 and sent_texts(telegram)
    )
    alice, bob = sorted(texts, key=lambda t: "admins" in t)
    assert "Answered this minute: 0 of 20" in alice  # the private budget
    assert bob.startswith("You're one of the bot's admins: no limits apply to you.")
    (published,) = telegram.calls("setMyCommands")
    assert "quota" in [c["command"] for c in published.params["commands"]]


# -- Discord --------------------------------------------------------------------------------


@pytest.fixture
async def discord_fake() -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord(test_discord.TOKEN)
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def discord_bot(
    discord_fake: FakeDiscord, make_core: Any
) -> AsyncIterator[Callable[..., Awaitable[Core]]]:
    started: list[DiscordAdapter] = []

    async def factory(clock: Clock, **settings: Any) -> Core:
        core = await make_core(
            model=FakeModel(), characters=test_discord.CHARACTERS, limits=RULES, clock=clock
        )
        config = DiscordSettings(
            enabled=True,
            api_base_url=discord_fake.api_base_url,
            gateway_url=discord_fake.gateway_url,
            **settings,
        )
        adapter = DiscordAdapter(config, core, test_discord.TOKEN)
        started.append(adapter)
        await adapter.start()
        return core

    yield factory
    for adapter in started:
        await adapter.stop()


def discord_notices(server: FakeDiscord) -> list[str]:
    return [
        r.body["content"]
        for r in server.sent("POST", r"^/channels/\d+/messages$")
        if isinstance(r.body, dict) and NOTICE in (r.body.get("content") or "")
    ]


async def test_discord_flood_is_stored_answered_to_the_limit_and_told_once(
    discord_fake: FakeDiscord, discord_bot: Callable[..., Awaitable[Core]]
) -> None:
    fake = discord_fake
    clock = Clock()
    core = await discord_bot(clock, admins=(str(fake.bob.id),))
    alice, bob = str(fake.alice.id), str(fake.bob.id)
    for i in range(8):
        await fake.user_says(test_discord.mention(fake, f"flood {i}"), mentions=[fake.bot])
    found = await settled(core, alice, 8)
    assert found.count("answered") == 3 and found.count(LIMITED) == 5
    (told,) = discord_notices(fake)
    assert told.startswith("alice, that's 3 answered messages this minute")

    answer = await ask(fake, "quota")  # asserts it is ephemeral
    assert "Answered this minute: 3 of 3" in answer and "of 20,000" in answer

    for i in range(5):
        await fake.user_says(
            test_discord.mention(fake, f"admin {i}"), author=fake.bob, mentions=[fake.bot]
        )
    assert (await settled(core, bob, 5)).count("answered") == 5
    assert "no limits apply to you" in await ask(fake, "quota", user=fake.bob)

    clock.now += 61
    await fake.user_says(test_discord.mention(fake, "back again"), mentions=[fake.bot])
    assert (await settled(core, alice, 9))[-1] == "answered"
    assert len(discord_notices(fake)) == 1


# -- the console ----------------------------------------------------------------------------


async def test_console_quota(make_core: Any) -> None:
    core = await make_core(model=FakeModel(["one two"]), limits=RULES)
    output = await run_script(core, "Hello!\n/quota\n/quit\n")
    assert "[Answered this minute: 1 of 20" in output  # the console is a private chat
    assert "Reply tokens today: 2 of 50,000" in output
    without = await make_core(model=FakeModel())
    assert "[There are no limits on answers here.]" in await run_script(without, "/quota\n")
