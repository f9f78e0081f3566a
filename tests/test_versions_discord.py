"""/lora on Discord (the real discord.py client against the local fake): bot admins list and
switch LoRA versions, everyone else is refused and nothing changes. /adapter, its older
name, still works and says the new one."""

from __future__ import annotations

from pathlib import Path

from bot.core import Core
from bot.lora_admin import RENAMED
from bot.loras import BaseIdentity, LoraSwitcher, LoraVersion
from storage import lora_choices
from tests.fake_discord import FakeDiscord
from tests.test_discord import fake, start_bot  # noqa: F401 - fixtures
from tests.test_versions import fake_run, metadata
from training.versions import publish


async def serve_one_version(core: Core, tmp_path: Path) -> LoraVersion:
    loras = tmp_path / "loras"
    v1 = publish(fake_run(loras), loras, metadata())
    core.loras = LoraSwitcher(core, core.store, loras, BaseIdentity("tiny", "abc"), poll_seconds=0)
    await core.loras.start()
    return v1


async def answer(server: FakeDiscord, count: int) -> str:
    """The text of the bot's ``count``-th interaction response (from 0)."""
    found = await server.wait_for(lambda: server.sent("POST", r"^/interactions/")[count:])
    return found[0].body["data"]["content"]


async def test_only_bot_admins_list_and_switch_versions(fake, start_bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, core = await start_bot(admins=(str(fake.bob.id),))
    v1 = await serve_one_version(core, tmp_path)

    use_v1 = [{"name": "version", "type": 3, "value": "v1"}]
    await fake.slash("lora", use_v1, user=fake.alice)
    assert "Only the bot's admins" in await answer(fake, 0)
    assert await lora_choices.current_choices(core.store) == {}

    await fake.slash("lora", user=fake.bob)
    listing = await answer(fake, 1)
    assert "Aria speaks with base" in listing and f"• {v1.id}" in listing

    await fake.slash("lora", use_v1, user=fake.bob)
    assert await answer(fake, 2) == f"Aria now speaks with {v1.id}."
    assert core.model.loras == {"Aria": str(v1.path)}  # type: ignore[attr-defined]

    rollback = [{"name": "version", "type": 3, "value": "rollback"}]
    await fake.slash("lora", rollback, user=fake.bob)
    assert await answer(fake, 3) == "Aria rolled back; it now speaks with base."
    assert core.model.loras == {}  # type: ignore[attr-defined]


async def test_adapter_still_works_and_says_it_is_now_lora(fake, start_bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, core = await start_bot(admins=(str(fake.bob.id),))
    v1 = await serve_one_version(core, tmp_path)
    registered = {c["name"]: c for c in fake.commands}
    assert "/lora" in registered["adapter"]["description"]
    assert [o["name"] for o in registered["adapter"]["options"]] == [
        o["name"] for o in registered["lora"]["options"]
    ]

    use_v1 = [{"name": "version", "type": 3, "value": "v1"}]
    await fake.slash("adapter", use_v1, user=fake.alice)
    refused = (await answer(fake, 0)).splitlines()
    assert refused[0] == RENAMED and "Only the bot's admins" in refused[1]
    assert await lora_choices.current_choices(core.store) == {}

    await fake.slash("adapter", use_v1, user=fake.bob)
    assert await answer(fake, 1) == f"{RENAMED}\nAria now speaks with {v1.id}."
    assert core.model.loras == {"Aria": str(v1.path)}  # type: ignore[attr-defined]
