"""/remember, /memory and /forget on Telegram (the real python-telegram-bot client against the
local fake): a note made in a private chat is listed and used there, and neither listed nor
used in a group; /forget removes it; an overlong note gets the one-line limit answer."""

from __future__ import annotations

import json

from bot.config import MemorySettings
from bot.core import Core
from tests.test_telegram import ALICE, GROUP, fake, start_bot, until  # noqa: F401 - fixtures
from tests.test_versions_telegram import sent_texts

MEMORY = MemorySettings(summarize_every=0, recall_tokens=0)
NOTE = "I am allergic to cats"


async def prompts(core: Core, chat_id: int, count: int) -> list[str]:
    """The stored prompts of the replies in ``chat_id``, once there are ``count``."""

    async def stored() -> list[str]:
        rows = await core.store.list_messages(platform="telegram", chat_id=str(chat_id))
        found = [r.prompt_json or "" for r in rows if r.role == "assistant"]
        return found if len(found) >= count else []

    return await until(stored)


async def test_a_private_note_is_listed_and_used_only_in_its_chat(fake, start_bot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, core = await start_bot(["Noted.", "Hello, group."], memory=MEMORY)

    def sent() -> list[str]:
        return sent_texts(fake)

    async def answer(text: str, **where: object) -> str:
        count = len(sent())
        fake.user_says(text, user_id=ALICE, **where)  # type: ignore[arg-type]
        await until(lambda: len(sent()) > count)
        return sent()[count]

    remembered = await answer(f"/remember {NOTE}")
    assert remembered.startswith("Aria will remember that (note 1) (only in this private chat;")
    assert "/remember --public TEXT" in remembered
    assert f"1. {NOTE} (private)" in await answer("/memory")

    fake.user_says("Any pets on board?", user_id=ALICE)
    (private_prompt,) = await prompts(core, ALICE, 1)
    assert NOTE in json.loads(private_prompt)[0]["content"]

    in_group = {"chat_id": GROUP, "group": True}
    assert "doesn't remember anything about you" in await answer("/memory", **in_group)
    fake.user_says("/ask Any pets on board?", user_id=ALICE, chat_id=GROUP, group=True)
    (group_prompt,) = await prompts(core, GROUP, 1)
    assert "allergic" not in group_prompt
    assert "There is no note 1" in await answer("/forget 1", **in_group)  # not listed here

    assert await answer("/forget 1") == f"Aria forgot: {NOTE}"
    assert "doesn't remember anything about you" in await answer("/memory")


async def test_public_notes_reach_the_group_and_overlong_ones_are_refused(fake, start_bot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    await start_bot(memory=MEMORY)

    def sent() -> list[str]:
        return sent_texts(fake)

    fake.user_says("/remember --public I play the violin", user_id=ALICE)
    await until(lambda: sent())
    assert sent()[0] == "Aria will remember that (note 1). /memory lists them."
    fake.user_says("/memory", user_id=ALICE, chat_id=GROUP, group=True)
    await until(lambda: len(sent()) == 2)
    assert sent()[1].splitlines()[1] == "1. I play the violin"

    fake.user_says("/remember " + "x" * (MEMORY.note_chars + 1), user_id=ALICE)
    await until(lambda: len(sent()) == 3)
    assert sent()[2] == (
        f"That note is {MEMORY.note_chars + 1} characters; a note holds at most "
        f"{MEMORY.note_chars}. Say it shorter, or as two notes."
    )


async def test_the_commands_are_in_the_menu_and_help(fake, start_bot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    await start_bot()
    (published,) = fake.calls("setMyCommands")
    menu = [c["command"] for c in published.params["commands"]]
    assert {"remember", "memory", "forget"} <= set(menu)
    fake.user_says("/help", user_id=ALICE)
    await until(lambda: sent_texts(fake))
    assert "/remember TEXT" in sent_texts(fake)[0] and "/forget N|all" in sent_texts(fake)[0]


async def test_a_note_taken_from_a_private_message_stays_private(fake, start_bot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, core = await start_bot(["Nice."], memory=MEMORY)
    fake.user_says("I have a cat named Miso.", user_id=ALICE)
    await prompts(core, ALICE, 1)
    assert core.memory is not None
    await core.memory.settled()

    fake.user_says("/memory", user_id=ALICE)
    await until(lambda: len(sent_texts(fake)) == 2)
    assert "1. I have a cat named Miso. (private)" in sent_texts(fake)[1]
    fake.user_says("/memory", user_id=ALICE, chat_id=GROUP, group=True)
    await until(lambda: len(sent_texts(fake)) == 3)
    assert "doesn't remember anything about you" in sent_texts(fake)[2]
