"""Swipes: siblings generated into one message, paged in place, the kept one continued from
and stored — through the core, and through the real python-telegram-bot client against the
local fake Bot API."""

from __future__ import annotations

from typing import Any

from adapters.telegram_reply import REGEN, SWIPE_BACK, SWIPE_ON, VOTE_UP
from storage.swipes import choices
from tests.conftest import MakeCore
from tests.fake_telegram import FakeTelegram
from tests.fakes import FakeModel, RecordingTarget
from tests.test_core import inbound
from tests.test_export import exported
from tests.test_telegram import ALICE, StartBot, fake, replies_stored, start_bot, until

__all__ = ["fake", "start_bot"]  # fixtures, imported to be used here


async def test_swipes_page_in_place_and_the_conversation_continues_from_the_kept_one(
    make_core: MakeCore,
) -> None:
    model = FakeModel(["One.", "Two.", "Three.", "Next."])
    core = await make_core(model=model)
    target = RecordingTarget()
    first = await core.handle(inbound("Hi"), target)
    assert first is not None
    (shown_in,) = first.message_ids
    for _ in range(2):  # two more takes, written into the same message
        again = core.swipes.in_place(RecordingTarget(), "test", "c1", shown_in)
        result = await core.regenerate("test", "c1", shown_in, again)
        assert result is not None and result.message_ids == [shown_in]
        await core.swipes.regenerated("test", "c1", shown_in)
    position = await core.swipes.position("test", "c1", shown_in)
    assert position is not None and (position.index, position.count) == (2, 3)
    assert position.sibling.text == "Three."

    back = await core.swipes.page("test", "c1", shown_in, -1)
    assert back is not None and (back.sibling.text, back.index) == ("Two.", 1)
    # Past either end it stays at the end.
    assert (await core.swipes.page("test", "c1", shown_in, +5)).sibling.text == "Three."  # type: ignore[union-attr]
    await core.swipes.page("test", "c1", shown_in, -1)
    # A rating on the message lands on the sibling it shows now.
    assert await core.vote("test", "c1", shown_in, "42", 1)
    ratings = await core.store.list_votes()
    two = back.sibling.id
    assert [r.message_id for r in ratings] == [two]

    await core.handle(inbound("Go on"), RecordingTarget())
    history = [(m["role"], m["content"]) for m in model.requests[-1].messages[1:]]
    assert history == [("user", "Hi"), ("assistant", "Two."), ("user", "Go on")]
    rows = await core.store.list_messages()
    user_row = next(r for r in rows if r.text == "Go on")
    assert user_row.parent_id == two
    (choice,) = await choices(core.store)
    assert choice == (two, first.reply_id - 1, "42")  # kept, the message it answers, who


async def test_without_swipes_nothing_is_stored(make_core: MakeCore) -> None:
    core = await make_core(model=FakeModel(["One.", "Two."]))
    await core.handle(inbound("Hi"), RecordingTarget())
    await core.handle(inbound("More"), RecordingTarget())
    assert await choices(core.store) == []


def keyboard(message: dict[str, Any]) -> list[list[str]]:
    markup = message.get("reply_markup") or {"inline_keyboard": []}
    return [[button["text"] for button in row] for row in markup["inline_keyboard"]]


async def test_telegram_regenerate_and_page_in_one_message(
    fake: FakeTelegram, start_bot: StartBot
) -> None:
    _, core = await start_bot(["First take.", "Second take.", "On we go."])
    fake.user_says("hi", user_id=ALICE)
    (first,) = await replies_stored(core)
    message_id = int(first.platform_message_id)
    assert keyboard(fake.bot_messages(ALICE)[-1]) == [["👍", "👎", "🔁", "✏️"]]

    fake.press(message_id, REGEN, chat_id=ALICE)
    await replies_stored(core, 2)

    def shown() -> dict[str, Any]:
        (message,) = fake.bot_messages(ALICE)  # still one message: edited in place
        return message

    await until(lambda: keyboard(shown())[0] == ["◀", "2/2", "▶"])
    assert shown()["text"] == "Aria\nSecond take."

    fake.press(message_id, SWIPE_BACK, chat_id=ALICE)
    await until(lambda: shown()["text"] == "Aria\nFirst take.")
    assert keyboard(shown())[0] == ["◀", "1/2", "▶"]
    fake.press(message_id, SWIPE_ON, chat_id=ALICE)
    await until(lambda: shown()["text"] == "Aria\nSecond take.")
    fake.press(message_id, SWIPE_BACK, chat_id=ALICE)
    await until(lambda: shown()["text"] == "Aria\nFirst take.")
    # ◀ on the first take says so instead of editing the message to itself.
    fake.press(message_id, SWIPE_BACK, chat_id=ALICE)
    answers = lambda: [c.params.get("text") for c in fake.calls("answerCallbackQuery")]  # noqa: E731
    await until(lambda: "1/2: the first version; ▶ goes on." in answers())

    fake.press(message_id, VOTE_UP, chat_id=ALICE)
    ratings = await until(core.store.list_votes)
    assert [r.message_id for r in ratings] == [first.id]

    fake.user_says("and then?", user_id=ALICE)
    rows = await replies_stored(core, 3)
    history = [t.text for t in await core.store.history(rows[-1].id)]
    assert history == ["hi", "First take.", "and then?", "On we go."]
    (choice,) = await choices(core.store)
    assert choice == (first.id, first.parent_id, str(ALICE))
    # The choice is a preference pair in the export: the kept take against the swiped-away.
    dpo, _ = await exported(core, "dpo")
    pairs = [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in dpo]
    assert pairs == [("First take.", "Second take.")]
