"""/lora on Telegram (the real python-telegram-bot client against the local fake): bot admins
list and switch LoRA versions, everyone else is refused and nothing changes. /adapter, its
older name, still works and says the new one, but only /lora is in the menu and /help."""

from __future__ import annotations

from pathlib import Path

from bot.core import Core
from bot.lora_admin import RENAMED
from bot.loras import BaseIdentity, LoraSwitcher, LoraVersion
from storage import lora_choices
from tests.fake_telegram import FakeTelegram
from tests.test_telegram import ALICE, BOB, GROUP, fake, start_bot, until  # noqa: F401 - fixtures
from tests.test_versions import fake_run, metadata
from training.versions import publish


async def serve_one_version(core: Core, tmp_path: Path) -> LoraVersion:
    loras = tmp_path / "loras"
    v1 = publish(fake_run(loras), loras, metadata())
    core.loras = LoraSwitcher(core, core.store, loras, BaseIdentity("tiny", "abc"), poll_seconds=0)
    await core.loras.start()
    return v1


def sent_texts(server: FakeTelegram) -> list[str]:
    return [c.params["text"] for c in server.calls("sendMessage")]


async def test_only_bot_admins_list_and_switch_versions(fake, start_bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, core = await start_bot(["Hi."], admins=(str(BOB),))
    v1 = await serve_one_version(core, tmp_path)

    def sent() -> list[str]:
        return sent_texts(fake)

    fake.user_says("/lora v1", chat_id=GROUP, group=True, user_id=ALICE)
    await until(lambda: sent())
    assert "Only the bot's admins" in sent()[0]
    fake.user_says("/lora v1", user_id=ALICE)  # a private chat is no way around it
    await until(lambda: len(sent()) == 2)
    assert "Only the bot's admins" in sent()[1]
    assert await lora_choices.current_choices(core.store) == {}

    fake.user_says("/lora", chat_id=GROUP, group=True, user_id=BOB)
    await until(lambda: len(sent()) == 3)
    assert "Aria speaks with base" in sent()[2] and f"• {v1.id}" in sent()[2]

    fake.user_says("/lora v1", chat_id=GROUP, group=True, user_id=BOB)
    await until(lambda: len(sent()) == 4)
    assert sent()[3] == f"Aria now speaks with {v1.id}."
    assert core.model.loras == {"Aria": str(v1.path)}  # type: ignore[attr-defined]
    (choice,) = (await lora_choices.current_choices(core.store)).values()
    assert (choice.version, choice.chosen_by) == (v1.id, f"telegram:{BOB}")

    fake.user_says("/lora rollback", chat_id=GROUP, group=True, user_id=BOB)
    await until(lambda: len(sent()) == 5)
    assert sent()[4] == "Aria rolled back; it now speaks with base."
    assert core.model.loras == {}  # type: ignore[attr-defined]


async def test_adapter_still_works_and_says_it_is_now_lora(fake, start_bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, core = await start_bot(["Hi."], admins=(str(BOB),))
    v1 = await serve_one_version(core, tmp_path)

    def sent() -> list[str]:
        return sent_texts(fake)

    fake.user_says("/adapter v1", chat_id=GROUP, group=True, user_id=ALICE)
    await until(lambda: sent())
    refused = sent()[0].splitlines()
    assert refused[0] == RENAMED and "Only the bot's admins" in refused[1]
    assert await lora_choices.current_choices(core.store) == {}

    fake.user_says("/adapter v1", chat_id=GROUP, group=True, user_id=BOB)
    await until(lambda: len(sent()) == 2)
    assert sent()[1] == f"{RENAMED}\nAria now speaks with {v1.id}."
    assert core.model.loras == {"Aria": str(v1.path)}  # type: ignore[attr-defined]

    (published,) = fake.calls("setMyCommands")
    menu = [c["command"] for c in published.params["commands"]]
    assert "lora" in menu and "adapter" not in menu
    fake.user_says("/help", user_id=ALICE)
    await until(lambda: len(sent()) == 3)
    assert "/lora [VERSION]" in sent()[2] and "/adapter" not in sent()[2]
