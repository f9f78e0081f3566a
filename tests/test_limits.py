"""Limits and fair turns in the core: beyond a person's limit a message is stored but not
answered, told once per window; a restart does not answer it; the count survives a restart;
in a chat's line people take turns, so a flood delays someone else by at most one reply;
[limits] in config.toml. The platforms' side is tests/test_limits_platforms.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bot.config import ConfigError, LimitRules, LimitsSettings, load_config
from bot.limits import DAY, LIMITED, quota_text
from bot.sequencer import ChatLines
from tests.conftest import MakeCore
from tests.fakes import FakeModel, RecordingTarget
from tests.test_core import inbound


class Clock:
    """Unix time that a test moves on instead of sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def rules(**values: object) -> LimitRules:
    return LimitRules(base=LimitsSettings(**values))  # type: ignore[arg-type]


async def flood(core, count: int, target: RecordingTarget, **kw: object) -> list[object]:  # type: ignore[no-untyped-def]
    """``count`` messages at once from one person in a group; what answering each came to."""
    tasks = [
        await core.receive(inbound(f"message {i}", **{"private": False, **kw}), target)
        for i in range(count)
    ]
    return list(await asyncio.gather(*tasks))


async def progress(core) -> list[str | None]:  # type: ignore[no-untyped-def]
    rows = await core.store.list_messages()
    return [r.progress for r in rows if r.role == "user"]


# -- the line ---------------------------------------------------------------------------


async def test_people_take_turns_in_a_chats_line() -> None:
    lines = ChatLines()
    order: list[str] = []

    async def one(name: str, who: str) -> None:
        place = lines.enter("chat", who)
        await place.wait()
        order.append(name)
        await asyncio.sleep(0)
        place.done()

    tasks = [asyncio.create_task(one(f"A{i}", "A")) for i in range(1, 5)]
    tasks += [asyncio.create_task(one("B1", "B")), asyncio.create_task(one("C1", "C"))]
    tasks.append(asyncio.create_task(one("B2", "B")))
    await asyncio.gather(*tasks)
    # A1 had the turn when B and C came: each goes before A's next, then round and round.
    assert order == ["A1", "B1", "C1", "A2", "B2", "A3", "A4"]
    assert not lines.busy("chat")


async def test_a_place_given_up_before_its_turn_leaves_the_line() -> None:
    lines = ChatLines()
    first, second, third = lines.enter("c", "A"), lines.enter("c", "B"), lines.enter("c", "C")
    assert first.first and not second.first
    second.done()  # its task was cancelled while waiting
    first.done()
    assert third.first
    third.done()
    assert not lines.busy("c")


async def test_a_flood_delays_someone_else_by_at_most_one_reply(make_core: MakeCore) -> None:
    model = FakeModel([f"reply {i}" for i in range(1, 10)], delay=0.02)
    core = await make_core(model=model)
    target = RecordingTarget()
    flooded = [await core.receive(inbound(f"A says {i}", author_id="A"), target) for i in range(8)]
    other = await core.receive(inbound("B says hi", author_id="B", author_name="Bo"), target)
    await asyncio.gather(*flooded, other)  # type: ignore[arg-type]

    asked = [[t for t in r.messages if t["role"] == "user"][-1]["content"] for r in model.requests]
    asked = [text.rpartition("] ")[2] for text in asked]  # without the "[Name] " tags
    # A's first was being written when B came; B's goes next, then A's backlog.
    assert asked[:3] == ["A says 0", "B says hi", "A says 1"]
    assert sorted(asked) == sorted([f"A says {i}" for i in range(8)] + ["B says hi"])
    # One story in the order of answering: each prompt holds the reply before it.
    second, third = (str(r.messages) for r in model.requests[1:3])
    assert "reply 1" in second and "B says hi" in third and "reply 2" in third
    assert "A says 1" not in second  # still waiting then: not part of B's history


# -- limits -----------------------------------------------------------------------------


async def test_a_flood_is_stored_answered_up_to_the_limit_and_told_once(
    make_core: MakeCore,
) -> None:
    clock = Clock()
    core = await make_core(limits=rules(messages_per_minute=3), clock=clock)
    target = RecordingTarget()
    results = await flood(core, 8, target)

    assert sum(r is not None for r in results) == 3
    assert (await progress(core)).count(LIMITED) == 5  # stored, all eight
    (told,) = target.notices
    assert told.startswith("Sam, that's 3 answered messages this minute, your limit here.")
    assert "I'll answer you again in" in told and "kept, not answered" in told

    # An admin floods too: no limit applies.
    admin = await flood(core, 5, RecordingTarget(), author_id="7", exempt=True)
    assert all(r is not None for r in admin)

    # A minute on, the person is answered again; over the limit again: told once more.
    clock.now += 61
    again = await flood(core, 4, target)
    assert sum(r is not None for r in again) == 3
    assert len(target.notices) == 2


async def test_limited_messages_are_not_answered_after_a_restart(make_core: MakeCore) -> None:
    core = await make_core(limits=rules(messages_per_minute=1))
    await flood(core, 3, RecordingTarget())
    after = await make_core(limits=rules(messages_per_minute=1))
    recovered = await after.recover("test", lambda *_: RecordingTarget())
    assert recovered.answered == 0 and recovered.skipped == 0
    assert (await progress(after)).count(LIMITED) == 2
    # The minute's answer was counted from the database: still over the limit.
    assert after.limits is not None
    standing = await after.limits.standing("test", "c1", "42", False, "Aria")
    assert standing.answered == 1 and standing.over == "minute"


async def test_the_day_budget_counts_reply_tokens_and_resets_at_midnight(
    make_core: MakeCore,
) -> None:
    clock = Clock()
    model = FakeModel(["one two three"] * 3, default="four five six")
    limits = rules(tokens_per_day=5, messages_per_minute=0)
    core = await make_core(model=model, limits=limits, clock=clock)
    target = RecordingTarget()
    results = await flood(core, 3, target)
    assert sum(r is not None for r in results) == 2  # 3 + 3 tokens: the third is over
    (told,) = target.notices
    assert "you've used today's 5 reply tokens" in told and "after 00:00 UTC" in told

    restarted = await make_core(model=model, limits=limits, clock=clock)
    assert restarted.limits is not None
    standing = await restarted.limits.standing("test", "c1", "42", False, None)
    assert standing.tokens == 6 and standing.over == "day"
    text = quota_text(standing, clock.now)
    assert "Reply tokens today: 6 of 5" in text and "Over today's limit" in text

    clock.now = (clock.now // DAY + 1) * DAY + 1  # just past midnight UTC
    assert await (await restarted.receive(inbound("a new day", private=False), target))  # type: ignore[misc]


async def test_private_chats_have_their_own_budget_and_chats_a_share(make_core: MakeCore) -> None:
    model = FakeModel(delay=0.02)
    limits = rules(messages_per_minute=1, private_messages_per_minute=4, replies_per_chat=1)
    core = await make_core(model=model, limits=limits)
    private = await flood(core, 4, RecordingTarget(), private=True, chat="dm")
    assert all(r is not None for r in private)
    # Four threads of one chat, four people: one reply at a time in the chat all the same.
    tasks = [
        await core.receive(inbound("hi", chat="g", thread_id=f"t{i}", author_id=f"p{i}"), t)
        for i, t in enumerate(RecordingTarget() for _ in range(4))
    ]
    assert all(await asyncio.gather(*tasks))  # type: ignore[arg-type]
    assert model.max_active == 1


# -- config.toml ------------------------------------------------------------------------

BASE = """
[model]
backend = "echo"
[[characters]]
name = "Aria"
description = "A navigator."
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(BASE + text, encoding="utf-8")
    return path


def test_limits_and_their_overrides_are_read(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
[limits]
messages_per_minute = 5
[limits.telegram]
messages_per_minute = 4
tokens_per_day = 1000
[limits.characters.Aria]
tokens_per_day = 2000
[limits.chats."telegram:-100"]
messages_per_minute = 0
""",
        )
    )
    limits = config.limits
    assert load_config(write(tmp_path, "")).limits.base == LimitsSettings()
    assert limits.settings_for("discord", "1").messages_per_minute == 5
    telegram = limits.settings_for("telegram", "1", "Aria")
    assert (telegram.messages_per_minute, telegram.tokens_per_day) == (4, 2000)
    chat = limits.settings_for("telegram", "-100", "aria")
    assert (chat.messages_per_minute, chat.tokens_per_day, chat.replies_per_chat) == (0, 2000, 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[limits]\nmessages_per_minte = 3", "[limits] messages_per_minte: unknown key; did you"),
        ("[limits]\ntokens_per_day = -1", "[limits] tokens_per_day: must be 0 (no limit) or more"),
        ("[limits.discord]\nreplies_per_chat = 'two'", "[limits.discord] replies_per_chat: exp"),
        ("[limits.characters.Bram]\ntokens_per_day = 1", "[limits.characters.Bram]: character"),
        ("[limits.characters.Aria]\nreplies_per_chat = 1", "replies_per_chat: is the chat's"),
        ('[limits.chats."irc:1"]\ntokens_per_day = 1', '[limits.chats."irc:1"]: name a chat'),
    ],
)
def test_limit_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
