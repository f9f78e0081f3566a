"""/adapter on Discord (the real discord.py client against the local fake): bot admins list
and switch LoRA versions, everyone else is refused and nothing changes."""

from __future__ import annotations

from pathlib import Path

from bot.loras import BaseIdentity, LoraSwitcher
from storage import lora_choices
from tests.test_discord import fake, start_bot  # noqa: F401 - fixtures
from tests.test_versions import fake_run, metadata
from training.versions import publish


async def test_only_bot_admins_list_and_switch_versions(fake, start_bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, core = await start_bot(admins=(str(fake.bob.id),))
    loras = tmp_path / "loras"
    v1 = publish(fake_run(loras), loras, metadata())
    core.loras = LoraSwitcher(core, core.store, loras, BaseIdentity("tiny", "abc"), poll_seconds=0)
    await core.loras.start()

    async def answer(count: int) -> str:
        found = await fake.wait_for(lambda: fake.sent("POST", r"^/interactions/")[count:])
        return found[0].body["data"]["content"]

    use_v1 = [{"name": "version", "type": 3, "value": "v1"}]
    await fake.slash("adapter", use_v1, user=fake.alice)
    assert "Only the bot's admins" in await answer(0)
    assert await lora_choices.current_choices(core.store) == {}

    await fake.slash("adapter", user=fake.bob)
    listing = await answer(1)
    assert "Aria speaks with base" in listing and f"• {v1.id}" in listing

    await fake.slash("adapter", use_v1, user=fake.bob)
    assert await answer(2) == f"Aria now speaks with {v1.id}."
    assert core.model.loras == {"Aria": str(v1.path)}  # type: ignore[attr-defined]

    rollback = [{"name": "version", "type": 3, "value": "rollback"}]
    await fake.slash("adapter", rollback, user=fake.bob)
    assert await answer(3) == "Aria rolled back; it now speaks with base."
    assert core.model.loras == {}  # type: ignore[attr-defined]
