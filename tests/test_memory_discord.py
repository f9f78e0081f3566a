"""/remember, /memory and /forget on Discord (the real discord.py client against the local
fake): answered only to the user; a note made in a DM is listed and used in that DM and
neither listed nor used in a server channel; what is said in a server is shared."""

from __future__ import annotations

from typing import Any

from bot.config import MemorySettings
from bot.core import Core
from tests.fake_discord import FakeDiscord
from tests.test_discord import fake, mention, start_bot, until  # noqa: F401 - fixtures

MEMORY = MemorySettings(summarize_every=0, recall_tokens=0)
NOTE = "I am allergic to cats"
EPHEMERAL = 64


def option(name: str, value: Any) -> dict[str, Any]:
    return {"name": name, "type": 5 if isinstance(value, bool) else 3, "value": value}


async def ask(server: FakeDiscord, command: str, *options: dict[str, Any], **where: Any) -> str:
    """Run a slash command; its answer, which only the user sees."""
    before = len(server.sent("POST", r"^/interactions/"))
    await server.slash(command, list(options), **where)
    found = await server.wait_for(lambda: server.sent("POST", r"^/interactions/")[before:])
    data = found[0].body["data"]
    assert data["flags"] & EPHEMERAL, f"/{command} must answer ephemerally"
    return data["content"]


async def prompt_of_reply(core: Core, channel_id: int, count: int = 1) -> str:
    """The stored prompt of the ``count``-th reply in a channel, once it is stored."""

    async def stored() -> list[str]:
        rows = await core.store.list_messages(platform="discord", chat_id=str(channel_id))
        found = [r.prompt_json or "" for r in rows if r.role == "assistant"]
        return found if len(found) >= count else []

    return (await until(stored))[count - 1]


async def test_a_dm_note_stays_in_the_dm_and_forget_removes_it(fake, start_bot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, core = await start_bot(["Noted.", "Hello, everyone."], memory=MEMORY)
    dm_channel = fake.snowflake()
    dm = {"channel_id": dm_channel, "dm": True}

    remembered = await ask(fake, "remember", option("text", NOTE), **dm)
    assert remembered.startswith("Aria will remember that (note 1) (only in this private chat;")
    assert f"1. {NOTE} (private)" in await ask(fake, "memory", **dm)
    await fake.user_says("Any pets on board?", channel_id=dm_channel)
    assert NOTE in await prompt_of_reply(core, dm_channel)

    # In the server channel the same person's note is neither listed nor used.
    assert "doesn't remember anything about you" in await ask(fake, "memory")
    await fake.user_says(mention(fake, "Any pets on board?"), mentions=[fake.bot])
    assert "allergic" not in await prompt_of_reply(core, fake.channel_id)
    assert "There is no note 1" in await ask(fake, "forget", option("which", "1"))

    assert await ask(fake, "forget", option("which", "1"), **dm) == f"Aria forgot: {NOTE}"
    assert "doesn't remember anything about you" in await ask(fake, "memory", **dm)


async def test_server_notes_are_shared_and_long_ones_refused(fake, start_bot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, core = await start_bot(["Nice."], memory=MEMORY)
    dm_channel = fake.snowflake()
    dm = {"channel_id": dm_channel, "dm": True}

    # Said in a server channel: the note taken from it is shared, so the DM lists it.
    await fake.user_says(mention(fake, "I work as a lighthouse painter."), mentions=[fake.bot])
    await prompt_of_reply(core, fake.channel_id)
    assert core.memory is not None
    await core.memory.settled()
    public = option("public", True)
    answer = await ask(fake, "remember", option("text", "I play the violin"), public, **dm)
    assert answer == "Aria will remember that (note 2). /memory lists them."
    listed = (await ask(fake, "memory")).splitlines()
    assert listed[1:3] == ["1. I work as a lighthouse painter.", "2. I play the violin"]
    assert "(private)" not in (await ask(fake, "memory", **dm))

    too_long = "x" * (MEMORY.note_chars + 1)
    assert await ask(fake, "remember", option("text", too_long)) == (
        f"That note is {MEMORY.note_chars + 1} characters; a note holds at most "
        f"{MEMORY.note_chars}. Say it shorter, or as two notes."
    )
    assert {"remember", "memory", "forget"} <= {c["name"] for c in fake.commands}
