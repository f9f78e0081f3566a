"""The Telegram adapter end to end: the real python-telegram-bot Application against a local
fake Bot API server (tests/fake_telegram.py) and a real Core over a temporary SQLite file.

Each test pushes updates into the fake's getUpdates queue and asserts on what the fake
received and on the stored rows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from adapters.telegram_adapter import TelegramAdapter
from adapters.telegram_logging import REDACTED
from adapters.telegram_reply import FIX, REGEN, TELEGRAM_LIMIT, VOTE_DOWN, VOTE_UP
from bot.characters import Character
from bot.config import TelegramSettings
from bot.core import Core
from bot.errors import CharbotError
from tests.fake_telegram import BOT_USERNAME, FakeTelegram, Recorded
from tests.fakes import FakeModel
from tests.polling import until

TOKEN = "123456789:AAH-fake-telegram-token_s3cr3tZm9vYmFy"
GROUP = -1001234567
ALICE, BOB = 501, 502
CHARACTERS = [
    Character(name="Aria", description="A starship navigator.", greeting="Hello {{user}}!"),
    Character(name="Bram", description="A lighthouse keeper."),
]

StartBot = Callable[..., Awaitable[tuple[TelegramAdapter, Core]]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram(TOKEN)
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def start_bot(fake: FakeTelegram, make_core: Any) -> AsyncIterator[StartBot]:
    """``adapter, core = await start_bot([replies], delay=..., memory=..., **telegram_settings)``
    (``memory``: MemorySettings turn memory on)."""
    started: list[TelegramAdapter] = []

    async def factory(
        replies: list[str] | None = None,
        *,
        delay: float = 0.0,
        token: str = TOKEN,
        memory: Any = None,
        **settings: Any,
    ) -> tuple[TelegramAdapter, Core]:
        model = FakeModel(replies, delay=delay)
        core = await make_core(model=model, characters=CHARACTERS, memory=memory)
        config = TelegramSettings(enabled=True, base_url=fake.base_url, **settings)
        adapter = TelegramAdapter(config, core, token)
        adapter.poll_timeout = 1.0
        started.append(adapter)
        await adapter.start()
        return adapter, core

    yield factory
    for adapter in started:
        await adapter.stop()


async def replies_stored(core: Core, count: int = 1) -> list[Any]:
    """Wait until ``count`` assistant rows exist (a reply row is written once it is shown)."""

    async def assistant_rows() -> list[Any]:
        rows = [r for r in await core.store.list_messages() if r.role == "assistant"]
        return rows if len(rows) >= count else []

    return await until(assistant_rows)


def texts(calls: list[Recorded]) -> list[str]:
    return [c.params["text"] for c in calls]


async def settle(fake: FakeTelegram) -> None:
    """Let the bot poll twice more, so whatever it would do with earlier updates is done."""
    polls = len(fake.calls("getUpdates"))
    await until(lambda: len(fake.calls("getUpdates")) >= polls + 2)
    await asyncio.sleep(0.1)


# -- answering ------------------------------------------------------------------------------


async def test_private_message_streams_a_reply_and_stores_both_messages(
    fake: FakeTelegram, start_bot: StartBot
) -> None:
    words = " ".join(f"word{i}" for i in range(24)) + "."
    _, core = await start_bot([words], delay=0.06)  # ~1.5 s: at least one timed edit

    said = fake.user_says("hello there", user_id=ALICE)
    user_row, reply = await until(
        lambda: _rows_when_replied(core),
    )

    # Started by the polling loop: the long poll asked for reactions and buttons too.
    assert set(fake.calls("getUpdates")[-1].params["allowed_updates"]) >= {
        "message",
        "callback_query",
        "message_reaction",
    }
    assert fake.calls("sendChatAction")[0].params["action"] == "typing"
    (sent,) = fake.calls("sendMessage")
    assert sent.params["reply_parameters"]["message_id"] == said["message_id"]
    assert sent.params["parse_mode"] == "HTML"
    edits = fake.calls("editMessageText")
    assert edits, "a reply streamed over 1.5 s must grow by edits"
    gaps = [b.at - a.at for a, b in zip([sent, *edits], edits, strict=False)]
    assert all(gap > 0.8 for gap in gaps[:-1]), gaps  # throttled; only the final edit is free
    (bot_message,) = fake.bot_messages(ALICE)
    assert bot_message["text"] == f"Aria\n{words}"
    # The rating keyboard sits under the finished reply.
    buttons = [b["callback_data"] for b in bot_message["reply_markup"]["inline_keyboard"][0]]
    assert buttons == [VOTE_UP, VOTE_DOWN, REGEN, FIX]

    assert (user_row.text, user_row.author_id, user_row.author_name) == (
        "hello there",
        str(ALICE),
        "Alice",
    )
    assert user_row.platform_message_id == str(said["message_id"])
    assert (reply.text, reply.character, reply.status) == (words, "Aria", "ok")
    assert reply.platform_message_id == str(bot_message["message_id"])
    assert reply.parent_id == user_row.id
    assert await core.store.platform_ids(reply.id) == [str(bot_message["message_id"])]


async def _rows_when_replied(core: Core) -> tuple[Any, Any] | None:
    rows = await core.store.list_messages(platform="telegram")
    users = [r for r in rows if r.role == "user"]
    replies = [r for r in rows if r.role == "assistant"]
    return (users[0], replies[0]) if users and replies else None


async def test_group_message_not_addressed_is_context_only(
    fake: FakeTelegram, start_bot: StartBot
) -> None:
    _, core = await start_bot(["I heard you.", "Still here."])

    fake.user_says("just chatting among ourselves", chat_id=GROUP, group=True)
    await settle(fake)
    assert fake.calls("sendMessage") == []
    (row,) = await core.store.list_messages(platform="telegram")
    assert row.text == "just chatting among ourselves"  # stored as context

    fake.user_says(f"@{BOT_USERNAME} are you there?", chat_id=GROUP, group=True)
    (first,) = await replies_stored(core)
    question = (await core.store.list_messages(platform="telegram"))[1]
    assert question.text == "are you there?"  # the mention is not part of what was said

    # A reply to the bot's message addresses it without a mention.
    fake.user_says("and now?", chat_id=GROUP, group=True, reply_to=int(first.platform_message_id))
    await replies_stored(core, 2)
    shown = [m["text"] for m in fake.bot_messages(GROUP)]
    assert shown == ["Aria\nI heard you.", "Aria\nStill here."]


async def test_ask_command_answers_in_a_group(fake: FakeTelegram, start_bot: StartBot) -> None:
    _, core = await start_bot(["Aye."])
    fake.user_says(f"/ask@{BOT_USERNAME} what is the weather", chat_id=GROUP, group=True)
    (reply,) = await replies_stored(core)
    asked = [r for r in await core.store.list_messages() if r.role == "user"]
    assert [r.text for r in asked] == ["what is the weather"]
    assert reply.text == "Aye."


async def test_forum_topic_reply_stays_in_the_topic(
    fake: FakeTelegram, start_bot: StartBot
) -> None:
    _, core = await start_bot(["In the topic."], delay=0.1)  # slow enough to show typing
    fake.user_says(f"@{BOT_USERNAME} hi", chat_id=GROUP, group=True, thread_id=77)
    await replies_stored(core)
    assert {c.params.get("message_thread_id") for c in fake.calls("sendMessage")} == {"77"}
    assert fake.calls("sendChatAction")[0].params["message_thread_id"] == "77"


async def test_user_and_model_text_is_escaped(fake: FakeTelegram, start_bot: StartBot) -> None:
    nasty = 'Look: <b>bold</b> & <a href="https://evil.example">click</a> 1 < 2'
    _, core = await start_bot([nasty])

    fake.user_says(nasty, user_id=ALICE)
    (reply,) = await replies_stored(core)

    for call in [*fake.calls("sendMessage"), *fake.calls("editMessageText")]:
        raw = call.params["text"]
        assert "<a" not in raw and "<b>bold" not in raw, raw
        assert raw.startswith("<b>Aria</b>\n")
    (bot_message,) = fake.bot_messages(ALICE)
    assert bot_message["text"] == f"Aria\n{nasty}"  # the fake parsed it: shown as written
    assert "&lt;a href=&quot;" not in bot_message["raw_text"]  # quotes need no escaping
    assert "&lt;a href=" in bot_message["raw_text"]
    assert reply.text == nasty


async def test_long_reply_is_split_into_parts_of_one_stored_reply(
    fake: FakeTelegram, start_bot: StartBot
) -> None:
    sentence = "The lighthouse keeps its light burning through the night. "
    long_reply = (sentence * 160).strip()  # ~9,300 characters
    _, core = await start_bot([long_reply])

    fake.user_says("tell me everything", user_id=ALICE)
    (reply,) = await replies_stored(core)

    messages = fake.bot_messages(ALICE)
    assert len(messages) == 3
    for message in messages:
        assert len(message["text"]) <= TELEGRAM_LIMIT
        body = message["text"].removeprefix("Aria\n")
        assert body.endswith("night."), body[-40:]  # cut on a sentence boundary
    shown = " ".join(m["text"].removeprefix("Aria\n") for m in messages)
    assert shown == long_reply
    assert await core.store.platform_ids(reply.id) == [str(m["message_id"]) for m in messages]
    assert [("reply_markup" in m) for m in messages] == [False, False, True]
    assert len([r for r in await core.store.list_messages() if r.role == "assistant"]) == 1


async def test_flood_wait_on_an_edit_still_delivers_the_final_text(
    fake: FakeTelegram, start_bot: StartBot
) -> None:
    words = " ".join(f"w{i}" for i in range(30)) + "."
    _, core = await start_bot([words], delay=0.05)
    fake.fail_next("editMessageText", retry_after=1)

    fake.user_says("go", user_id=ALICE)
    (reply,) = await replies_stored(core)

    edits = fake.calls("editMessageText")
    assert edits and edits[0].params["text"] != f"<b>Aria</b>\n{words}"  # the refused one
    after_wait = [e for e in edits[1:] if e.at - edits[0].at >= 0.95]
    assert after_wait, "the flood wait must be respected"
    assert all(e.at - edits[0].at >= 0.95 for e in edits[1:])  # nothing sent while blocked
    (bot_message,) = fake.bot_messages(ALICE)
    assert bot_message["text"] == f"Aria\n{words}"
    assert "reply_markup" in bot_message
    assert reply.status == "ok"


# -- feedback ----------------------------------------------------------------------------


async def _one_reply(fake: FakeTelegram, core: Core) -> tuple[Any, int]:
    """Alice says "hi" in her private chat; returns the reply row and its message id."""
    fake.user_says("hi", user_id=ALICE)
    (reply,) = await replies_stored(core)
    return reply, int(reply.platform_message_id)


async def test_thumbs_down_button_stores_a_rating_and_answers(
    fake: FakeTelegram, start_bot: StartBot
) -> None:
    _, core = await start_bot(["A reply."])
    reply, message_id = await _one_reply(fake, core)

    fake.press(message_id, VOTE_DOWN, chat_id=ALICE, user_id=BOB)
    await until(lambda: fake.calls("answerCallbackQuery"))
    ratings = await until(core.store.list_votes)
    assert [(r.message_id, r.user_id, r.value) for r in ratings] == [(reply.id, str(BOB), -1)]
    (answer,) = fake.calls("answerCallbackQuery")
    assert "👎" in answer.params["text"]

    # One vote per user per reply: 👍 replaces the 👎.
    fake.press(message_id, VOTE_UP, chat_id=ALICE, user_id=BOB)
    await until(lambda: len(fake.calls("answerCallbackQuery")) == 2)
    assert [r.value for r in await core.store.list_votes()] == [1]


async def test_reactions_rate_and_removing_them_removes_the_vote(
    fake: FakeTelegram, start_bot: StartBot
) -> None:
    _, core = await start_bot(["Ahoy."])
    fake.user_says(f"@{BOT_USERNAME} hi", chat_id=GROUP, group=True, user_id=ALICE)
    (reply,) = await replies_stored(core)
    message_id = int(reply.platform_message_id)

    fake.react(message_id, chat_id=GROUP, new=["👍"], user_id=BOB)
    ratings = await until(core.store.list_votes)
    assert [(r.message_id, r.user_id, r.value) for r in ratings] == [(reply.id, str(BOB), 1)]

    fake.react(message_id, chat_id=GROUP, old=["👍"], new=["👎"], user_id=BOB)
    await until(lambda: _values(core, [-1]))

    fake.react(message_id, chat_id=GROUP, old=["👎"], new=["❤"], user_id=ALICE)  # not a vote
    fake.react(message_id, chat_id=GROUP, old=["👎"], new=[], user_id=BOB)
    await until(lambda: _values(core, []))


async def _values(core: Core, expected: list[int]) -> bool:
    return [r.value for r in await core.store.list_votes()] == expected


async def test_fix_command_on_a_reply_stores_a_correction(
    fake: FakeTelegram, start_bot: StartBot
) -> None:
    _, core = await start_bot(["A weak answer."])
    reply, message_id = await _one_reply(fake, core)

    fix = fake.user_says(
        "/fix A much better answer.", user_id=BOB, chat_id=ALICE, reply_to=message_id
    )
    corrections = await until(core.store.list_corrections)
    assert [(c.message_id, c.user_id, c.text) for c in corrections] == [
        (reply.id, str(BOB), "A much better answer.")
    ]
    (ack,) = await until(lambda: fake.calls("setMessageReaction"))
    assert int(ack.params["message_id"]) == fix["message_id"]
    # The /fix message is not a turn of the conversation and gets no character reply.
    assert len(fake.calls("sendMessage")) == 1


async def test_pencil_button_asks_for_a_reply_that_becomes_a_correction(
    fake: FakeTelegram, start_bot: StartBot
) -> None:
    _, core = await start_bot(["A weak answer."])
    reply, message_id = await _one_reply(fake, core)

    fake.press(message_id, FIX, chat_id=ALICE, user_id=ALICE)
    prompt = await until(lambda: fake.calls("sendMessage")[1:])
    assert prompt[0].params["reply_markup"]["force_reply"] is True
    prompt_id = fake.bot_messages(ALICE)[-1]["message_id"]

    fake.user_says("Better: this.", user_id=ALICE, reply_to=prompt_id)
    corrections = await until(core.store.list_corrections)
    assert [(c.message_id, c.text) for c in corrections] == [(reply.id, "Better: this.")]
    assert len([r for r in await core.store.list_messages() if r.role == "assistant"]) == 1


async def test_regenerate_button_posts_a_sibling_reply(
    fake: FakeTelegram, start_bot: StartBot
) -> None:
    _, core = await start_bot(["First take.", "Second take."])
    first, message_id = await _one_reply(fake, core)

    fake.press(message_id, REGEN, chat_id=ALICE)
    rows = await replies_stored(core, 2)
    second = rows[1]
    assert second.text == "Second take."
    assert second.parent_id == first.parent_id
    assert fake.bot_messages(ALICE)[-1]["text"] == "Aria\nSecond take."


# -- commands, access, robustness ------------------------------------------------------------


async def test_commands_choose_list_and_greet(fake: FakeTelegram, start_bot: StartBot) -> None:
    _, core = await start_bot(["Grumble."])

    fake.user_says("/start", user_id=ALICE)
    await until(lambda: fake.calls("sendMessage"))
    assert texts(fake.calls("sendMessage")) == ["<b>Aria</b>\nHello Alice!"]

    fake.user_says("/character Bram", user_id=ALICE)
    await until(lambda: len(fake.calls("sendMessage")) == 2)
    fake.user_says("/characters", user_id=ALICE)
    await until(lambda: len(fake.calls("sendMessage")) == 3)
    listing = fake.calls("sendMessage")[2].params["text"]
    assert "▶ <b>Bram</b>" in listing and "• <b>Aria</b>" in listing

    fake.user_says("/character Nobody", user_id=ALICE)
    await until(lambda: len(fake.calls("sendMessage")) == 4)
    assert "unknown character" in fake.calls("sendMessage")[3].params["text"]

    fake.user_says("hello", user_id=ALICE)
    greeting, reply = await replies_stored(core, 2)
    # The greeting is the conversation's first turn: the reply's history starts with it.
    assert (greeting.character, greeting.text) == ("Aria", "Hello Alice!")
    first, *_ = await core.store.history(reply.id)
    assert first.text == "Hello Alice!"
    assert reply.character == "Bram"
    assert fake.calls("sendMessage")[-1].params["text"] == "<b>Bram</b>\nGrumble."
    assert not [r for r in await core.store.list_messages() if r.text.startswith("/")]


async def test_group_admin_commands_need_an_admin(fake: FakeTelegram, start_bot: StartBot) -> None:
    _, core = await start_bot(admins=(str(BOB),))

    fake.user_says("/character Bram", chat_id=GROUP, group=True, user_id=ALICE)
    await until(lambda: fake.calls("sendMessage"))
    assert "Only an admin" in fake.calls("sendMessage")[0].params["text"]
    assert (await core.current_character("telegram", str(GROUP))).name == "Aria"

    fake.user_says("/character Bram", chat_id=GROUP, group=True, user_id=BOB)
    await until(lambda: len(fake.calls("sendMessage")) == 2)
    assert (await core.current_character("telegram", str(GROUP))).name == "Bram"


async def test_reset_starts_a_fresh_conversation(fake: FakeTelegram, start_bot: StartBot) -> None:
    model_replies = ["One.", "Two."]
    _, core = await start_bot(model_replies)
    await _one_reply(fake, core)
    fake.user_says("/reset", user_id=ALICE)
    await until(lambda: "fresh" in fake.calls("sendMessage")[-1].params["text"])
    fake.user_says("again", user_id=ALICE)
    await replies_stored(core, 2)
    second_prompt = core.model.requests[-1].messages  # type: ignore[attr-defined]
    assert not any(m["content"] == "hi" for m in second_prompt if m["role"] == "user")


async def test_allow_lists_drop_everything_else(fake: FakeTelegram, start_bot: StartBot) -> None:
    _, core = await start_bot(["Welcome."], allowed_chats=(str(GROUP),))

    fake.user_says("hello from a stranger", user_id=BOB)  # a private chat, not listed
    fake.user_says(f"@{BOT_USERNAME} hi", chat_id=-100999, group=True, user_id=ALICE)
    await settle(fake)
    assert fake.calls("sendMessage") == []
    assert await core.store.list_messages() == []

    fake.user_says(f"@{BOT_USERNAME} hi", chat_id=GROUP, group=True, user_id=ALICE)
    await replies_stored(core)


async def test_unknown_commands_and_odd_updates_are_ignored(
    fake: FakeTelegram, start_bot: StartBot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="adapters")
    _, core = await start_bot(["Still fine."])
    _, message_id = await _one_reply(fake, core)

    fake.user_says("/frobnicate now", user_id=ALICE)
    fake.user_says("/start@some_other_bot", chat_id=GROUP, group=True, user_id=ALICE)
    sticker = fake.user_says("x", user_id=ALICE)
    del sticker["text"]
    sticker["sticker"] = {"file_id": "f", "file_unique_id": "u", "width": 1, "height": 1}
    fake.press(message_id, "something-else", chat_id=ALICE)
    fake.push(
        {
            "message_reaction": {
                **fake.react(message_id, chat_id=ALICE, new=["👍"])["message_reaction"],
                "user": None,
            }
        }
    )
    fake.push({"poll": {"id": "p", "question": "?", "options": []}})
    await settle(fake)

    assert len(fake.calls("sendMessage")) == 1  # only the first reply
    assert [r.value for r in await core.store.list_votes()] == [1]  # the one real reaction
    assert "ignoring update" in caplog.text  # the unknown command
    assert "does not parse" in caplog.text  # the sticker and poll PTB cannot read
    fake.user_says("are you alive?", user_id=ALICE)
    await replies_stored(core, 2)


# -- safety --------------------------------------------------------------------------------


async def test_token_never_reaches_the_logs(
    fake: FakeTelegram, start_bot: StartBot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # `charbot` quiets httpx (cli.main); a test that ran it in this process left it quiet.
    caplog.set_level(logging.DEBUG, logger="httpx")
    adapter, core = await start_bot(["Secret-free."])
    await _one_reply(fake, core)
    await adapter.stop()

    secret = TOKEN.split(":", 1)[1]
    assert secret not in caplog.text
    assert all(secret not in r.getMessage() for r in caplog.records)
    # The test would notice a leak: the HTTP client did log the request URLs.
    logged_urls = [r.getMessage() for r in caplog.records if r.name.startswith("httpx")]
    assert any(f"/bot{REDACTED}/sendMessage" in m for m in logged_urls), logged_urls[:3]
    assert secret not in repr(adapter)


async def test_a_refused_token_is_reported_without_the_token(
    fake: FakeTelegram, start_bot: StartBot
) -> None:
    wrong = "999999:AAwrong-token-that-must-stay-secret"
    with pytest.raises(CharbotError) as raised:
        await start_bot(token=wrong)
    assert "refused the token" in str(raised.value)
    assert wrong.split(":")[1] not in str(raised.value)


async def test_stop_during_a_reply_shuts_down_cleanly(
    fake: FakeTelegram, start_bot: StartBot
) -> None:
    words = " ".join(f"w{i}" for i in range(200))
    adapter, _ = await start_bot([words], delay=0.05)  # ~10 s if left to finish
    fake.user_says("tell me a long story", user_id=ALICE)
    await until(lambda: fake.calls("sendMessage"))

    started = time.monotonic()
    await adapter.stop()
    assert time.monotonic() - started < 3.0
    assert adapter.app is None
    polls = len(fake.calls("getUpdates"))
    await asyncio.sleep(0.3)
    assert len(fake.calls("getUpdates")) == polls  # no longer polling
    await adapter.stop()  # a second stop is harmless


# -- scenes ---------------------------------------------------------------------------------


async def test_a_message_naming_two_characters_of_the_scene_gets_both_in_order(
    fake: FakeTelegram, start_bot: StartBot
) -> None:
    from training.export import iter_records

    _, core = await start_bot(["The lamp is lit.", "And the course is set."])
    fake.user_says("/join Bram", user_id=ALICE)
    await until(lambda: fake.calls("sendMessage"))
    assert "Bram joins the scene" in fake.calls("sendMessage")[0].params["text"]

    fake.user_says("Bram and Aria, good evening!", user_id=ALICE)
    bram, aria = await replies_stored(core, 2)
    assert [(bram.character, bram.text), (aria.character, aria.text)] == [
        ("Bram", "The lamp is lit."),
        ("Aria", "And the course is set."),
    ]
    shown = [m["text"] for m in fake.bot_messages(ALICE)][1:]
    assert shown == ["Bram\nThe lamp is lit.", "Aria\nAnd the course is set."]

    # Each line is rated and corrected on its own: the 👎 is Bram's, the fix is Aria's.
    fake.press(int(bram.platform_message_id), VOTE_DOWN, chat_id=ALICE, user_id=BOB)
    await until(core.store.list_votes)
    fake.user_says(
        "/fix The course is set for home.", chat_id=ALICE, reply_to=int(aria.platform_message_id)
    )
    await until(core.store.list_corrections)
    assert [v.message_id for v in await core.store.list_votes()] == [bram.id]
    assert [c.message_id for c in await core.store.list_corrections()] == [aria.id]
    records = await asyncio.to_thread(lambda: list(iter_records(core.store, "sft")))
    ((record,),) = [[r for r in records if r["meta"]["character"] == "Aria"]]
    assert record["completion"][0]["content"] == "The course is set for home."
    # Aria's prompt holds Bram's line as another speaker's turn, never as her own.
    bram_turn = [m for m in record["prompt"] if "The lamp is lit." in m["content"]]
    assert [m["role"] for m in bram_turn] == ["user"]
