"""The Discord adapter end to end: the real discord.py client against a local fake Discord.

Every test starts the adapter on a fake REST + gateway server (tests/fake_discord.py) and a
real Core over a temporary SQLite file, pushes gateway events, and asserts on what the fake
received and on the stored rows.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from adapters.discord_access import AccessPolicy, Place
from adapters.discord_adapter import DiscordAdapter
from adapters.discord_reply import DISCORD_LIMIT, visible_text
from bot.characters import Character
from bot.config import DiscordSettings
from bot.core import Core
from bot.errors import CharbotError
from tests.fake_discord import FakeDiscord, Recorded
from tests.fakes import FakeModel

TOKEN = "MTIzNDU2Nzg5.fake-discord-token.s3cr3t-Zm9vYmFy"
CHARACTERS = [
    Character(name="Aria", description="A starship navigator.", avatar_url="http://x/a.png"),
    Character(name="Bram", description="A lighthouse keeper.", avatar_url="http://x/b.png"),
]

StartBot = Callable[..., Awaitable[tuple[DiscordAdapter, Core]]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord(TOKEN)
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def start_bot(fake: FakeDiscord, make_core: Any) -> AsyncIterator[StartBot]:
    """``adapter, core = await start_bot([replies], token=..., memory=..., **discord_settings)``
    (``memory``: MemorySettings turn memory on)."""
    started: list[DiscordAdapter] = []

    async def factory(
        replies: list[str] | None = None,
        *,
        delay: float = 0.0,
        token: str = TOKEN,
        memory: Any = None,
        **settings: Any,
    ) -> tuple[DiscordAdapter, Core]:
        model = FakeModel(replies, delay=delay)
        core = await make_core(model=model, characters=CHARACTERS, memory=memory)
        config = DiscordSettings(
            enabled=True,
            api_base_url=fake.api_base_url,
            gateway_url=fake.gateway_url,
            **settings,
        )
        adapter = DiscordAdapter(config, core, token)
        started.append(adapter)
        await adapter.start()
        return adapter, core

    yield factory
    for adapter in started:
        await adapter.stop()


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 5.0) -> Any:
    """Poll an async check until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {check.__name__}")
        await asyncio.sleep(0.02)


async def replies_stored(core: Core, count: int = 1) -> list[Any]:
    """Wait until ``count`` assistant rows exist (a reply row is written once it is shown)."""

    async def assistant_rows() -> list[Any]:
        rows = [r for r in await core.store.list_messages() if r.role == "assistant"]
        return rows if len(rows) >= count else []

    return await until(assistant_rows)


def mention(fake: FakeDiscord, text: str) -> str:
    return f"<@{fake.bot.id}> {text}"


def message_payloads(fake: FakeDiscord) -> list[Recorded]:
    """Every request that posts or edits a message (channel, webhook or interaction)."""
    return [
        r
        for r in fake.requests
        if r.method in ("POST", "PATCH")
        and isinstance(r.body, dict)
        and ("content" in r.body or "data" in r.body)
    ]


async def test_mention_streams_a_webhook_reply_and_stores_both_messages(
    fake: FakeDiscord, start_bot: StartBot
) -> None:
    words = " ".join(f"word{i}" for i in range(30)) + "."
    _, core = await start_bot([words], delay=0.05)  # ~1.5 s of streaming: edits must happen

    sent = await fake.user_says(mention(fake, "hello there"), mentions=[fake.bot])
    (reply,) = await replies_stored(core)

    assert fake.sent("POST", rf"^/channels/{fake.channel_id}/typing$")
    (bot_message,) = fake.bot_messages()
    assert visible_text(bot_message["content"]) == words
    assert bot_message["author"]["username"] == "Aria"
    assert bot_message["avatar_url"] == "http://x/a.png"
    # Webhooks cannot reply natively: the first part quotes and links the user's message.
    assert f"/{fake.channel_id}/{sent['id']}" in bot_message["content"]
    assert "hello there" in bot_message["content"]

    # Streamed: a first short text, then edits, never more often than about once a second.
    (first,) = fake.sent("POST", r"^/webhooks/")
    edits = fake.sent("PATCH", r"^/webhooks/")
    assert len(visible_text(first.body["content"])) < len(words)
    assert len(edits) >= 2  # at least one edit mid-stream, then the final text
    shown_at = [first.at] + [e.at for e in edits[:-1]]  # the final edit is not throttled
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(shown_at))

    rows = await core.store.list_messages(platform="discord", chat_id=str(fake.channel_id))
    user = next(r for r in rows if r.role == "user")
    assert (user.platform_message_id, user.author_id, user.text) == (
        sent["id"],
        str(fake.alice.id),
        "hello there",  # the bot's mention is stripped
    )
    assert reply.text == words and reply.character == "Aria"
    assert await core.store.platform_ids(reply.id) == [bot_message["id"]]


async def test_without_manage_webhooks_a_plain_reply_starts_with_the_name(
    fake: FakeDiscord, start_bot: StartBot
) -> None:
    fake.manage_webhooks = False
    _, core = await start_bot(["Plain answer."])

    sent = await fake.user_says(mention(fake, "hi"), mentions=[fake.bot])
    (reply,) = await replies_stored(core)

    (bot_message,) = fake.bot_messages()
    assert bot_message["content"] == "**Aria**: Plain answer."
    assert bot_message["message_reference"]["message_id"] == sent["id"]  # a native reply
    assert not fake.sent(None, r"webhooks")  # the permission was checked before any call
    assert await core.store.platform_ids(reply.id) == [bot_message["id"]]


async def test_thumbs_up_becomes_a_rating_and_removing_it_removes_it(
    fake: FakeDiscord, start_bot: StartBot
) -> None:
    _, core = await start_bot(["Rate me."])
    await fake.user_says(mention(fake, "hi"), mentions=[fake.bot])
    (reply,) = await replies_stored(core)
    (bot_message,) = fake.bot_messages()
    message_id = int(bot_message["id"])  # never in discord.py's cache: raw events needed

    await fake.react(message_id, "👍🏽")  # a skin tone is still a thumbs-up

    async def ratings() -> list[Any]:
        return list(await core.store.list_votes())

    (rating,) = await until(ratings)
    assert (rating.message_id, rating.user_id, rating.value) == (reply.id, str(fake.alice.id), 1)

    await fake.react(message_id, "👍🏽", remove=True)

    async def no_ratings() -> bool:
        return not await core.store.list_votes()

    await until(no_ratings)


async def test_removing_one_of_two_votes_keeps_the_other(
    fake: FakeDiscord, start_bot: StartBot
) -> None:
    _, core = await start_bot(["Rate me twice."])
    await fake.user_says(mention(fake, "hi"), mentions=[fake.bot])
    await replies_stored(core)
    message_id = int(fake.bot_messages()[0]["id"])

    async def values() -> list[int]:
        return [r.value for r in await core.store.list_votes()]

    await fake.react(message_id, "👍")
    await until(lambda: _equals(values, [1]))
    await fake.react(message_id, "👎")
    await until(lambda: _equals(values, [-1]))
    await fake.react(message_id, "👎", remove=True)  # 👍 is still there
    await until(lambda: _equals(values, [1]))


async def _equals(check: Callable[[], Awaitable[Any]], expected: Any) -> bool:
    return await check() == expected


@pytest.mark.parametrize("webhooks", [True, False], ids=["webhook", "plain"])
async def test_a_429_on_send_is_retried_and_the_reply_arrives(
    fake: FakeDiscord, start_bot: StartBot, webhooks: bool
) -> None:
    fake.manage_webhooks = webhooks
    _, core = await start_bot(["Patience pays."])
    route = r"^/webhooks/\d+/[^/]+$" if webhooks else rf"^/channels/{fake.channel_id}/messages$"
    fake.fail_next("POST", route, retry_after=0.2)

    await fake.user_says(mention(fake, "hi"), mentions=[fake.bot])
    (reply,) = await replies_stored(core)

    attempts = fake.sent("POST", route)
    assert [a.status for a in attempts] == [429, 200]
    assert attempts[1].at - attempts[0].at >= 0.15  # it waited retry_after
    (bot_message,) = fake.bot_messages()
    assert visible_text(bot_message["content"]) == "Patience pays."
    assert reply.status == "ok"


async def test_everyone_in_user_text_and_reply_pings_no_one(
    fake: FakeDiscord, start_bot: StartBot
) -> None:
    echo = f"You said @everyone and @here and <@&{fake.member_role_id}> and <@{fake.bob.id}>."
    _, core = await start_bot([echo])

    await fake.user_says(
        mention(fake, "say @everyone @here"), mentions=[fake.bot], mention_everyone=True
    )
    await replies_stored(core)

    payloads = message_payloads(fake)
    assert payloads  # the check below must have something to check
    for request in payloads:
        body = request.body.get("data", request.body)  # interaction callbacks nest it
        assert body["allowed_mentions"]["parse"] == [], request
        assert not body["allowed_mentions"].get("users")
        assert not body["allowed_mentions"].get("roles")
        assert not body["allowed_mentions"].get("replied_user")


async def test_a_long_reply_is_split_into_parts_stored_as_one_reply(
    fake: FakeDiscord, start_bot: StartBot
) -> None:
    sentences = [f"This is sentence number {i} of a rather long reply." for i in range(100)]
    long_reply = " ".join(sentences)  # ~5,000 characters
    _, core = await start_bot([long_reply])

    await fake.user_says(mention(fake, "tell me everything"), mentions=[fake.bot])
    (reply,) = await replies_stored(core)

    parts = fake.bot_messages()
    assert len(parts) >= 3
    assert all(len(p["content"]) <= DISCORD_LIMIT for p in parts)
    texts = [visible_text(p["content"]) for p in parts]
    assert all(t.endswith(".") for t in texts)  # cut on sentence boundaries
    assert " ".join(texts) == long_reply
    assert await core.store.platform_ids(reply.id) == [p["id"] for p in parts]
    assert reply.text == long_reply


async def test_a_reply_to_a_characters_message_continues_with_it(
    fake: FakeDiscord, start_bot: StartBot
) -> None:
    adapter, core = await start_bot(["The sea is grey.", "The light still turns."])
    await fake.user_says(mention(fake, "Bram, how is the sea?"), mentions=[fake.bot])
    (first,) = await replies_stored(core)
    assert first.character == "Bram"
    bram_message = fake.bot_messages()[0]

    # No mention, and the channel's character is Aria: only the reply makes Bram answer.
    answer = await fake.user_says(
        "and the light?", author=fake.bob, reply_to=int(bram_message["id"])
    )
    rows = await replies_stored(core, 2)

    second = rows[-1]
    assert second.character == "Bram"
    assert fake.bot_messages()[1]["author"]["username"] == "Bram"
    stored_answer = next(
        r for r in await core.store.list_messages() if r.platform_message_id == answer["id"]
    )
    assert stored_answer.parent_id == first.id
    model: FakeModel = core.model  # type: ignore[assignment]
    prompt = " ".join(m["content"] for m in model.requests[1].messages)
    assert "how is the sea?" in prompt and "The sea is grey." in prompt
    assert adapter.webhooks.ids  # the webhook is known, so its messages are never answered


async def test_ignored_senders_and_places_get_no_answer_and_no_error(
    fake: FakeDiscord, start_bot: StartBot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, core = await start_bot(["Only this one."], allowed_channels=(str(fake.channel_id),))
    await fake.user_says(
        mention(fake, "anyone?"), mentions=[fake.bot], channel_id=fake.other_channel_id
    )
    await fake.user_says(mention(fake, "beep"), author=fake.other_bot, mentions=[fake.bot])
    await fake.user_says("just chatting", author=fake.bob)  # not addressed: context only
    await fake.user_says(mention(fake, "from the allowed place"), mentions=[fake.bot])
    await replies_stored(core)
    await asyncio.sleep(0.1)  # give anything wrongly scheduled a chance to show up

    assert not fake.sent(None, str(fake.other_channel_id))
    assert len(fake.bot_messages()) == 1
    rows = await core.store.list_messages()
    assert [r.text for r in rows if r.role == "user"] == ["just chatting", "from the allowed place"]
    assert "not allowed" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_direct_message_is_answered_by_the_chosen_character(
    fake: FakeDiscord, start_bot: StartBot
) -> None:
    dm_channel = fake.snowflake()
    _, core = await start_bot(["Hello in private."])
    await core.set_character("discord", str(dm_channel), "Bram")

    await fake.user_says("hi, no mention needed", channel_id=dm_channel)
    (reply,) = await replies_stored(core)

    (bot_message,) = fake.bot_messages(dm_channel)
    assert bot_message["content"] == "**Bram**: Hello in private."  # no webhooks in DMs
    assert reply.character == "Bram"


async def test_regenerate_reaction_posts_a_sibling_reply(
    fake: FakeDiscord, start_bot: StartBot
) -> None:
    _, core = await start_bot(["First take.", "Second take."])
    await fake.user_says(mention(fake, "go"), mentions=[fake.bot])
    (first,) = await replies_stored(core)

    await fake.react(int(fake.bot_messages()[0]["id"]), "🔁")
    rows = await replies_stored(core, 2)

    second = rows[-1]
    assert second.text == "Second take." and second.parent_id == first.parent_id
    assert visible_text(fake.bot_messages()[1]["content"]) == "Second take."


async def test_slash_chat_answers_as_the_named_character(
    fake: FakeDiscord, start_bot: StartBot
) -> None:
    _, core = await start_bot(["Aye."])
    assert {c["name"] for c in fake.commands} >= {
        "chat",
        "character",
        "characters",
        "reset",
        "fix",
        "Suggest a better reply",
    }
    await fake.slash(
        "chat",
        [
            {"name": "character", "type": 3, "value": "Bram"},
            {"name": "message", "type": 3, "value": "ahoy @everyone"},
        ],
    )
    (reply,) = await replies_stored(core)

    assert reply.character == "Bram"
    (callback,) = fake.sent("POST", r"^/interactions/")
    assert callback.body["data"]["content"] == "ahoy @everyone"
    assert callback.body["data"]["allowed_mentions"]["parse"] == []
    hook_message = fake.bot_messages()[-1]
    assert hook_message["author"]["username"] == "Bram"
    assert visible_text(hook_message["content"]) == "Aye."


async def test_suggest_a_better_reply_modal_and_fix_store_corrections(
    fake: FakeDiscord, start_bot: StartBot
) -> None:
    _, core = await start_bot(["Meh."])
    await fake.user_says(mention(fake, "hi"), mentions=[fake.bot])
    (reply,) = await replies_stored(core)
    bot_message = fake.bot_messages()[0]

    # The message command opens a modal prefilled with the reply's text...
    await fake.slash(
        "Suggest a better reply",
        command_type=3,
        target_id=int(bot_message["id"]),
        resolved={"messages": {bot_message["id"]: bot_message}},
    )
    modal = await fake.wait_for(lambda: fake.sent("POST", r"^/interactions/"))
    assert modal[0].body["type"] == 9  # MODAL
    form = modal[0].body["data"]
    text_input = form["components"][0]["components"][0]
    assert text_input["value"] == "Meh."
    # ...and submitting it stores a correction.
    await fake.slash(
        "",
        interaction_type=5,
        data={
            "custom_id": form["custom_id"],
            "components": [
                {
                    "type": 1,
                    "components": [
                        {"type": 4, "custom_id": text_input["custom_id"], "value": "Much better."}
                    ],
                }
            ],
        },
    )

    async def corrections() -> list[Any]:
        return list(await core.store.list_corrections())

    (correction,) = await until(corrections)
    assert (correction.message_id, correction.text) == (reply.id, "Much better.")

    # /fix without a message corrects the latest reply in the channel.
    await fake.slash("fix", [{"name": "text", "type": 3, "value": "Even better."}])
    await until(lambda: _has_length(corrections, 2))
    assert {c.text for c in await core.store.list_corrections()} == {"Much better.", "Even better."}

    # Replying "/fix ..." to a character's message does the same, and is not answered.
    fixing = await fake.user_says("/fix Best of all.", reply_to=int(bot_message["id"]))
    await until(lambda: _has_length(corrections, 3))
    await fake.wait_for(lambda: fake.bot_reactions)
    assert fake.bot_reactions == [(int(fixing["id"]), "✅")]
    assert len(await core.store.list_messages()) == 2  # the /fix message is not a turn


async def _has_length(check: Callable[[], Awaitable[list[Any]]], n: int) -> bool:
    return len(await check()) == n


async def test_the_token_never_reaches_a_log_line(
    fake: FakeDiscord, start_bot: StartBot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: discord, aiohttp, ours, everything
    adapter, core = await start_bot(["Secret-free reply."])
    await fake.user_says(mention(fake, "hi"), mentions=[fake.bot])
    await replies_stored(core)
    await fake.react(int(fake.bot_messages()[0]["id"]), "👍")
    await until(core.store.list_votes)
    await adapter.stop()

    # A wrong token fails with our error, which names the variable and not the token.
    wrong = "WRONG" + TOKEN
    bad = DiscordAdapter(
        DiscordSettings(api_base_url=fake.api_base_url, gateway_url=fake.gateway_url), core, wrong
    )
    with pytest.raises(CharbotError) as failure:
        await bad.start()
    assert "DISCORD_TOKEN" in str(failure.value)

    assert fake.identified.is_set()  # the token really was used
    assert any(r.name.startswith("discord.") for r in caplog.records)  # logs were captured
    for secret in (TOKEN, wrong, TOKEN.split(".")[-1]):
        assert secret not in caplog.text
        assert secret not in str(failure.value) and secret not in repr(failure.value)
        assert secret not in repr(adapter)


async def test_character_and_reset_are_admin_commands_in_a_server(
    fake: FakeDiscord, start_bot: StartBot
) -> None:
    _, core = await start_bot(admins=(str(fake.bob.id),))
    chat_id = str(fake.channel_id)
    name_bram = [{"name": "name", "type": 3, "value": "Bram"}]

    async def callback_text(count: int) -> str:
        found = await fake.wait_for(lambda: fake.sent("POST", r"^/interactions/")[count:])
        return found[0].body["data"]["content"]

    await fake.slash("character", name_bram, user=fake.alice)
    assert "Only an admin" in await callback_text(0)
    assert (await core.current_character("discord", chat_id)).name == "Aria"

    await fake.slash("character", name_bram, user=fake.bob)
    assert await callback_text(1) == "**Bram** speaks here now."
    assert (await core.current_character("discord", chat_id)).name == "Bram"

    await fake.slash("reset", user=fake.alice)
    assert "Only an admin" in await callback_text(2)
    await fake.slash("characters", user=fake.alice)  # anyone may look
    assert "▶ **Bram**" in await callback_text(3)


@pytest.mark.parametrize(
    ("settings", "place", "allowed"),
    [
        ({}, Place("u1", "g1", "c1"), True),
        ({}, Place("u1"), True),  # a DM to an unrestricted bot
        ({"allowed_guilds": ("g1",)}, Place("u1", "g2", "c1"), False),
        ({"allowed_guilds": ("g1",)}, Place("u1"), False),  # strangers' DMs when restricted
        ({"allowed_guilds": ("g1",), "allowed_users": ("u1",)}, Place("u1"), True),
        ({"allowed_channels": ("c1",)}, Place("u1", "g1", "t9", parent_id="c1"), True),
        ({"allowed_channels": ("c1",)}, Place("u1", "g1", "c2"), False),
        ({"allowed_roles": ("r1",)}, Place("u1", "g1", "c1", role_ids=("r1",)), True),
        ({"allowed_roles": ("r1",)}, Place("u1", "g1", "c1"), False),
        ({"allowed_users": ("u2",)}, Place("u1", "g1", "c1"), False),
        ({"allowed_guilds": ("g1",), "admins": ("u1",)}, Place("u1", "g2", "c1"), True),
    ],
)
def test_access_policy(settings: dict[str, Any], place: Place, allowed: bool) -> None:
    assert AccessPolicy(DiscordSettings(**settings)).allows(place) is allowed


async def test_a_start_prints_no_voice_library_warnings_but_other_warnings(
    start_bot: StartBot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    await start_bot()
    logging.getLogger("discord.client").warning("a warning that matters")
    shown = [r.getMessage() for r in caplog.records]
    assert not [m for m in shown if "voice" in m], shown  # PyNaCl, davey: the bot sends no voice
    assert "a warning that matters" in shown


async def test_a_message_naming_two_characters_of_the_scene_gets_both_in_order(
    fake: FakeDiscord, start_bot: StartBot
) -> None:
    _, core = await start_bot(["The lamp is lit.", "Course set."], admins=(str(fake.bob.id),))
    name_bram = [{"name": "name", "type": 3, "value": "Bram"}]
    await fake.slash("join", name_bram, user=fake.alice)
    await fake.slash("join", name_bram, user=fake.bob)
    answers = await fake.wait_for(lambda: fake.sent("POST", r"^/interactions/")[1:])
    assert "Only an admin" in fake.sent("POST", r"^/interactions/")[0].body["data"]["content"]
    assert "Bram joins the scene" in answers[0].body["data"]["content"]

    await fake.user_says(mention(fake, "Bram, then Aria: good evening!"), mentions=[fake.bot])
    bram, aria = await replies_stored(core, 2)
    assert (bram.character, aria.character) == ("Bram", "Aria")
    assert aria.parent_id == bram.id  # Aria answers after Bram's line, and sees it
    shown = [m for m in fake.bot_messages() if m["author"]["username"] != "charbot"]
    assert [(m["author"]["username"], m["avatar_url"]) for m in shown] == [
        ("Bram", "http://x/b.png"),
        ("Aria", "http://x/a.png"),
    ]
    assert [visible_text(m["content"]) for m in shown] == ["The lamp is lit.", "Course set."]
    assert [await core.store.platform_ids(r.id) for r in (bram, aria)] == [
        [shown[0]["id"]],
        [shown[1]["id"]],
    ]
