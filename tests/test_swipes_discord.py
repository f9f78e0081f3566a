"""Swipes on Discord through the real discord.py client against the local fake: ◀ ▶
reactions page a regenerated reply in place, and the conversation continues from the one
shown."""

from __future__ import annotations

from adapters.discord_reply import visible_text
from storage.swipes import choices
from tests.fake_discord import FakeDiscord
from tests.test_discord import StartBot, fake, mention, replies_stored, start_bot

__all__ = ["fake", "start_bot"]  # fixtures, imported to be used here


async def test_discord_swipe_reactions_page_the_new_sibling_in_place(
    fake: FakeDiscord, start_bot: StartBot
) -> None:
    _, core = await start_bot(["First take.", "Second take.", "On we go."])
    await fake.user_says(mention(fake, "go"), mentions=[fake.bot])
    (first,) = await replies_stored(core)
    await fake.react(int(fake.bot_messages()[0]["id"]), "🔁")
    await replies_stored(core, 2)
    second_id = int(fake.bot_messages()[1]["id"])
    await fake.wait_for(lambda: len(fake.bot_reactions) == 2)
    assert [e for m, e in fake.bot_reactions if m == second_id] == ["◀️", "▶️"]

    def shown() -> str:
        return visible_text(fake.messages[second_id]["content"])

    await fake.react(second_id, "◀️")
    await fake.wait_for(lambda: shown().endswith("First take."))
    assert shown().startswith("-# 1/2")
    await fake.react(second_id, "▶️")
    await fake.wait_for(lambda: shown().endswith("Second take."))
    await fake.react(second_id, "◀️", remove=True)  # taking it back presses it again
    await fake.wait_for(lambda: shown().endswith("First take."))

    await fake.user_says(mention(fake, "and then?"), mentions=[fake.bot])
    rows = await replies_stored(core, 3)
    history = [t.text for t in await core.store.history(rows[-1].id)]
    assert history[-3:-1] == ["First take.", history[-2]] and "Second take." not in history
    (choice,) = await choices(core.store)
    assert choice[:2] == (first.id, first.parent_id)
