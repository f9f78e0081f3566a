"""Discord shards: a bot in many guilds split over processes, each running some shards.

The fake gateway honours IDENTIFY's ``shard`` field the way Discord does: a guild's events
go only to shard ``(guild_id >> 22) % shard_count``, DMs to shard 0. Two bot instances over
one database (as two processes would be) each get only their own guilds' messages.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.discord_adapter import DiscordAdapter
from bot.config import DiscordSettings
from bot.core import Core
from tests.fake_discord import FakeDiscord
from tests.fakes import FakeModel
from tests.test_discord import CHARACTERS, TOKEN, mention


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord(TOKEN)
    await server.start()
    yield server
    await server.close()


async def _bot(fake: FakeDiscord, make_core: Any, **shards: Any) -> tuple[DiscordAdapter, Core]:
    core = await make_core(model=FakeModel(["Hi."] * 5), characters=CHARACTERS)
    settings = DiscordSettings(
        enabled=True, api_base_url=fake.api_base_url, gateway_url=fake.gateway_url, **shards
    )
    adapter = DiscordAdapter(settings, core, TOKEN)
    await adapter.start()
    return adapter, core


def _asked(core: Core) -> list[str]:
    """The last user message of every prompt the core's model was given."""
    model: FakeModel = core.model  # type: ignore[assignment]
    return [[m for m in r.messages if m["role"] == "user"][-1]["content"] for r in model.requests]


async def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_two_shards_each_receive_only_their_guilds(fake: FakeDiscord, make_core: Any) -> None:
    second_guild, second_channel = fake.add_guild()
    first_shard = fake.shard_of(fake.guild_id, 2)
    assert fake.shard_of(second_guild, 2) == 1 - first_shard
    bots = [await _bot(fake, make_core, shard_count=2, shard_ids=(n,)) for n in (0, 1)]
    try:
        assert sorted(fake.shards.values()) == [(0, 2), (1, 2)]
        on_first = bots[first_shard]
        on_second = bots[1 - first_shard]
        # Each shard's client knows only its own guild.
        assert [g.id for g in on_first[0].client.guilds] == [fake.guild_id]
        assert [g.id for g in on_second[0].client.guilds] == [second_guild]

        await fake.user_says(mention(fake, "in the first guild"), mentions=[fake.bot])
        await fake.user_says(
            mention(fake, "in the second guild"), mentions=[fake.bot], channel_id=second_channel
        )
        dm = fake.snowflake()
        await fake.user_says("a direct message", channel_id=dm)
        await _until(lambda: sum(len(_asked(core)) for _, core in bots) == 3)
        await asyncio.sleep(0.3)  # nothing else arrives late
        dms = ["a direct message"]
        assert _asked(on_first[1]) == ["in the first guild", *(dms if first_shard == 0 else [])]
        assert _asked(on_second[1]) == ["in the second guild", *(dms if first_shard == 1 else [])]
        # One database for both: every message stored once, each answered once.
        rows = await bots[0][1].store.list_messages(platform="discord")
        assert sorted(r.text for r in rows if r.role == "user") == sorted(
            ["in the first guild", "in the second guild", "a direct message"]
        )
        assert len([r for r in rows if r.role == "assistant"]) == 3
        # Only the process with shard 0 syncs the (global) slash commands.
        assert len(fake.sent("PUT", r"/commands$")) == 1
        assert bots[0][0].owns(str(dm)) and not bots[1][0].owns(str(dm))
    finally:
        for adapter, _ in reversed(bots):  # endpoint overrides are undone in reverse
            await adapter.stop()


async def test_one_process_can_run_several_shards(fake: FakeDiscord, make_core: Any) -> None:
    """shard_count without shard_ids: discord.py's AutoShardedBot runs every shard here.
    (discord.py waits 5 s between two IDENTIFYs, as Discord requires.)"""
    _, second_channel = fake.add_guild()
    adapter, core = await _bot(fake, make_core, shard_count=2)
    try:
        await _until(lambda: len(fake.shards) == 2, timeout=20)
        await _until(lambda: len(adapter.client.guilds) == 2)
        await fake.user_says(mention(fake, "one"), mentions=[fake.bot])
        await fake.user_says(mention(fake, "two"), mentions=[fake.bot], channel_id=second_channel)
        await _until(lambda: len(_asked(core)) == 2)
        assert sorted(_asked(core)) == ["one", "two"]
        assert sorted(fake.shards.values()) == [(0, 2), (1, 2)]
    finally:
        await adapter.stop()


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        ("shard_count = 0", "[discord] shard_count: must be at least 1"),
        ("shard_ids = [0]", "[discord] shard_ids: needs [discord] shard_count"),
        ("shard_count = 2\nshard_ids = [2]", "2 is not a shard of 2; shard ids run from 0 to 1"),
        ("shard_count = 2\nshard_ids = [1, 1]", "[discord] shard_ids: names a shard twice"),
        ('shard_count = 2\nshard_ids = ["0"]', "expected a list of whole numbers"),
    ],
)
def test_shard_settings_are_checked(tmp_path: Any, lines: str, error: str) -> None:
    from bot.config import load_config
    from bot.errors import CharbotError

    path = tmp_path / "config.toml"
    path.write_text(f"[discord]\n{lines}\n", encoding="utf-8")
    with pytest.raises(CharbotError) as raised:
        load_config(path)
    assert error in str(raised.value) and str(path) in str(raised.value)


def test_shard_settings_are_read(tmp_path: Any) -> None:
    from bot.config import load_config
    from tests.test_console import write_config

    path = write_config(tmp_path)
    text = path.read_text(encoding="utf-8")
    assert '\nenabled = false\ntoken_env = "DISCORD_TOKEN"' in text
    text = text.replace(
        '\nenabled = false\ntoken_env = "DISCORD_TOKEN"',
        '\nenabled = false\nshard_count = 4\nshard_ids = [1, 3]\ntoken_env = "DISCORD_TOKEN"',
        1,
    )
    path.write_text(text, encoding="utf-8")
    discord = load_config(path).discord
    assert (discord.shard_count, discord.shard_ids) == (4, (1, 3))
