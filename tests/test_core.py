"""The core with a FakeModel over a real SQLite file."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

import pytest

from bot.characters import Character
from bot.errors import UnknownCharacter
from bot.messages import Inbound
from engine import LoraSpec
from engine.errors import Busy, LoraLoadError
from tests.conftest import MakeCore
from tests.fakes import BrokenReply, FakeModel, RecordingTarget

_counter = iter(range(1, 1_000_000))


def inbound(text: str, chat: str = "c1", **kw: object) -> Inbound:
    values: dict[str, object] = {
        "platform": "test",
        "chat_id": chat,
        "message_id": f"in{next(_counter)}",
        "author_id": "42",
        "author_name": "Sam",
        "text": text,
    }
    values.update(kw)
    return Inbound(**values)  # type: ignore[arg-type]


def turns(request) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(m["role"], m["content"]) for m in request.messages if m["role"] != "system"]


async def test_reply_is_streamed_and_stored_with_its_prompt(make_core: MakeCore) -> None:
    model = FakeModel(["Hello there, traveller."])
    core = await make_core(model=model, temperature=0.3)
    target = RecordingTarget()
    msg = inbound("Hi! 👋 안녕")
    result = await core.handle(msg, target)
    assert result is not None and result.status == "ok" and result.character == "Aria"
    assert target.text == "Hello there, traveller."
    user, reply = await core.store.list_messages()
    assert (user.role, user.text, user.platform_message_id) == ("user", msg.text, msg.message_id)
    assert reply.role == "assistant" and reply.parent_id == user.id
    assert reply.text == "Hello there, traveller." and reply.model == "fake"
    assert '"Hi! 👋 안녕"' in reply.prompt_json  # the exact prompt, unescaped unicode
    assert '"temperature": 0.3' in reply.sampling_json
    assert reply.prompt_tokens and reply.completion_tokens == 3 and reply.latency_ms >= 0
    assert await core.store.platform_ids(reply.id) == result.message_ids
    system = model.requests[0].messages[0]
    assert system["role"] == "system" and "starship navigator" in system["content"]


async def test_history_is_in_the_next_prompt_and_survives_restart(make_core: MakeCore) -> None:
    core = await make_core(model=FakeModel(["first answer"]))
    await core.handle(inbound("first question"), RecordingTarget())
    await core.close()
    model = FakeModel(["second answer"])
    restarted = await make_core(model=model)  # same database file: the bot after a restart
    await restarted.handle(inbound("second question"), RecordingTarget())
    assert turns(model.requests[0]) == [
        ("user", "first question"),
        ("assistant", "first answer"),
        ("user", "second question"),
    ]


async def test_reply_to_an_older_message_follows_that_chain(make_core: MakeCore) -> None:
    model = FakeModel(["A1", "A2", "A3"])
    core = await make_core(model=model)
    first = await core.handle(inbound("Q1"), RecordingTarget())
    await core.handle(inbound("Q2"), RecordingTarget())
    assert first is not None
    await core.handle(inbound("Q3", reply_to_platform_id=first.message_ids[0]), RecordingTarget())
    # Q2 and its answer are on another branch and stay out of the prompt.
    assert turns(model.requests[2]) == [("user", "Q1"), ("assistant", "A1"), ("user", "Q3")]


async def test_character_routing(make_core: MakeCore) -> None:
    core = await make_core(model=FakeModel(default="ok"))
    target = RecordingTarget()
    assert (await core.handle(inbound("hello"), target)).character == "Aria"  # default
    named = await core.handle(inbound("Bram, are you there?"), target)
    assert named.character == "Bram"
    assert (await core.handle(inbound("hey @bram"), target)).character == "Bram"
    # Merely talking about a character does not summon it.
    assert (await core.handle(inbound("I like Bram's lamp"), target)).character == "Aria"
    # A reply to Bram's message continues with Bram.
    cont = await core.handle(inbound("and?", reply_to_platform_id=named.message_ids[0]), target)
    assert cont.character == "Bram"
    assert (await core.handle(inbound("x", character="bram"), target)).character == "Bram"
    await core.set_character("test", "c1", "Bram")
    assert (await core.handle(inbound("who now?"), target)).character == "Bram"
    other_chat = await core.handle(inbound("hi", chat="c2", default_character="Bram"), target)
    assert other_chat.character == "Bram"


async def test_unknown_character_lists_known_ones_and_keeps_the_message(
    make_core: MakeCore,
) -> None:
    core = await make_core()
    with pytest.raises(UnknownCharacter, match="known characters: Aria, Bram"):
        await core.handle(inbound("hi", character="Zed"), RecordingTarget())
    assert [m.text for m in await core.store.list_messages()] == ["hi"]
    with pytest.raises(UnknownCharacter):
        await core.set_character("test", "c1", "Zed")


async def test_empty_message_is_ignored(make_core: MakeCore) -> None:
    model = FakeModel()
    core = await make_core(model=model)
    assert await core.handle(inbound("   \n"), RecordingTarget()) is None
    assert model.requests == [] and await core.store.list_messages() == []


async def test_unaddressed_message_is_context_not_answered(make_core: MakeCore) -> None:
    model = FakeModel(["answer"])
    core = await make_core(model=model)
    assert await core.handle(inbound("chatter", addressed=False), RecordingTarget()) is None
    await core.handle(inbound("now you"), RecordingTarget())
    assert turns(model.requests[0]) == [("user", "chatter\nnow you")]


async def test_huge_message_is_stored_whole_and_trimmed_in_the_prompt(
    make_core: MakeCore,
) -> None:
    model = FakeModel()
    core = await make_core(model=model, context_tokens=512)
    huge = "word " * 20_000  # 100,000 characters
    await core.handle(inbound(huge), RecordingTarget())
    assert (await core.store.list_messages())[0].text == huge
    assert model.count_tokens(model.requests[0].messages) <= 512


async def test_model_failure_apologises_stores_an_error_and_keeps_running(
    make_core: MakeCore,
) -> None:
    model = FakeModel([RuntimeError("out of memory"), "recovered"])
    core = await make_core(model=model)
    target = RecordingTarget()
    failed = await core.handle(inbound("first"), target)
    assert failed is not None and failed.status == "error"
    assert target.notices and "Sorry" in target.notices[0]
    ok = await core.handle(inbound("second"), RecordingTarget())
    assert ok is not None and ok.text == "recovered"
    rows = await core.store.list_messages()
    assert [(r.role, r.status) for r in rows] == [
        ("user", "ok"),
        ("assistant", "error"),
        ("user", "ok"),
        ("assistant", "ok"),
    ]
    assert "out of memory" in rows[1].error
    # The failed turn is not part of the story: the prompt has both questions, no error.
    assert turns(model.requests[1]) == [("user", "first\nsecond")]


async def test_a_model_failing_mid_reply_keeps_what_the_user_saw(make_core: MakeCore) -> None:
    model = FakeModel([BrokenReply("Once upon a time", RuntimeError("model process died"))])
    core = await make_core(model=model)
    target = RecordingTarget()
    failed = await core.handle(inbound("tell me a story"), target)
    assert failed is not None and failed.status == "error"
    shown = list(target.messages.values())
    assert shown == ["Once upon a time"] and "Sorry" in target.notices[0]
    row = (await core.store.list_messages())[1]
    assert (row.status, row.text) == ("error", "Once upon a time")
    assert "model process died" in row.error
    await core.handle(inbound("and then?"), RecordingTarget())
    assert turns(model.requests[1]) == [("user", "tell me a story\nand then?")]


async def test_busy_model_tells_the_user(make_core: MakeCore) -> None:
    core = await make_core(model=FakeModel([Busy("queue full")]))
    target = RecordingTarget()
    result = await core.handle(inbound("hi"), target)
    assert result is not None and result.status == "busy"
    assert "try again shortly" in target.notices[0]


async def test_replies_in_one_chat_come_in_order_chats_run_concurrently(
    make_core: MakeCore,
) -> None:
    model = FakeModel(default="reply", delay=0.01)
    core = await make_core(model=model)
    chats = [f"chat{i}" for i in range(8)]
    messages = [inbound(f"{chat}-m{n}", chat=chat) for n in range(5) for chat in chats]
    await asyncio.gather(*(core.handle(m, RecordingTarget()) for m in messages))
    expected_users = [f"{{chat}}-m{n}" for n in range(5)]
    for chat in chats:
        rows = await core.store.list_messages(chat_id=chat)
        by_id = {r.id: r for r in rows}
        users = [r.text for r in rows if r.role == "user"]
        assert users == [u.format(chat=chat) for u in expected_users]  # stored in arrival order
        # Replies were made in arrival order, each answering its own message.
        answered = [by_id[r.parent_id].text for r in rows if r.role == "assistant"]
        assert answered == users
        # The last reply's history is the whole chat, alternating, in order.
        history = await core.store.history(rows[-1].id)
        assert [r.role for r in history] == ["user", "assistant"] * 5
        assert [r.text for r in history if r.role == "user"] == users
    assert model.max_active > 1  # different chats generated at the same time
    assert model.max_active <= len(chats)  # at most one at a time per chat


async def test_ratings_corrections_regeneration_and_reset(make_core: MakeCore) -> None:
    model = FakeModel(["first try", "second try", "after reset"])
    core = await make_core(model=model)
    first = await core.handle(inbound("tell me a story"), RecordingTarget())
    part = first.message_ids[0]
    assert await core.vote("test", "c1", part, "u1", -1)
    assert await core.vote("test", "c1", part, "u1", -1)
    assert not await core.vote("test", "c1", "not-a-reply", "u1", 1)
    assert await core.correct("test", "c1", part, "u1", "A better story.")
    sibling = await core.regenerate("test", "c1", part, RecordingTarget())
    assert sibling is not None and sibling.text == "second try"
    # The sibling answers the same message with the same history.
    assert turns(model.requests[1]) == turns(model.requests[0])
    rows = {r.id: r for r in await core.store.list_messages()}
    assert rows[sibling.reply_id].regenerated_from_id == first.reply_id
    assert rows[sibling.reply_id].parent_id == rows[first.reply_id].parent_id
    assert [(r.message_id, r.value) for r in await core.store.list_votes()] == [
        (first.reply_id, -1)
    ]
    await core.reset("test", "c1")
    await core.handle(inbound("new topic"), RecordingTarget())
    assert turns(model.requests[2]) == [("user", "new topic")]


class SmallTarget(RecordingTarget):
    max_chars: ClassVar[int] = 60


async def test_long_reply_is_split_into_parts_of_one_stored_reply(make_core: MakeCore) -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(12))
    core = await make_core(model=FakeModel([text]))
    target = SmallTarget()
    result = await core.handle(inbound("talk a lot"), target)
    assert len(result.message_ids) > 3
    assert all(len(target.messages[i]) <= 60 for i in result.message_ids)
    assert " ".join(target.messages[i] for i in result.message_ids) == text
    assert await core.store.platform_ids(result.reply_id) == result.message_ids
    for part in result.message_ids:  # a vote on any part counts for the one reply
        assert await core.reply_character("test", "c1", part) == "Aria"


async def test_character_overrides_and_adapter_reach_the_model(make_core: MakeCore) -> None:
    model = FakeModel()
    special = Character(name="Vex", lora="/adapters/vex/v2", temperature=0.1, max_new_tokens=7)
    core = await make_core(model=model, characters=[special])
    await core.handle(inbound("hi"), RecordingTarget())
    request = model.requests[0]
    assert request.lora is not None and request.lora.path == "/adapters/vex/v2"
    assert (request.sampling.temperature, request.sampling.max_new_tokens) == (0.1, 7)


async def test_switching_a_characters_adapter_while_running(
    make_core: MakeCore, tmp_path: Path
) -> None:
    model = FakeModel()
    core = await make_core(model=model)
    v2 = tmp_path / "loras" / "aria" / "v2"
    v2.mkdir(parents=True)
    assert await core.switch_lora("aria", str(v2)) == "v2"
    await core.handle(inbound("hi"), RecordingTarget())
    assert model.requests[-1].lora == LoraSpec("Aria", str(v2))
    missing = str(tmp_path / "loras" / "aria" / "v3")
    with pytest.raises(LoraLoadError, match=r"'Aria'.*v3"):
        await core.switch_lora("Aria", missing)
    await core.handle(inbound("again"), RecordingTarget())  # a bad LoRA changed nothing
    assert model.requests[-1].lora == LoraSpec("Aria", str(v2))
    assert await core.switch_lora("Aria", None) is None
    await core.handle(inbound("and now"), RecordingTarget())
    assert model.requests[-1].lora is None and model.loras == {}


async def test_the_start_line_names_chats_that_keep_their_own_choice(make_core: MakeCore) -> None:
    # default_character answers chats that never chose; a chat's /character choice is kept.
    # A user who changes default_character and still meets Bram is told why, at start.
    core = await make_core(default_character="Aria")
    assert await core.default_rule() is None
    await core.set_character("telegram", "c1", "Bram")
    await core.set_character("telegram", "c2", "Bram")
    await core.set_character("discord", "c3", "Aria")
    again = await make_core(default_character="Aria")
    assert await again.default_rule() == (
        "default_character is Aria, for chats that never chose; 2 chats keep the character "
        "chosen there with /character (Bram in 2): /character Aria there switches back"
    )
    assert (await again.current_character("telegram", "c1")).name == "Bram"
    assert (await again.current_character("telegram", "new")).name == "Aria"
    bram = await make_core(default_character="Bram")
    assert "1 chat keeps the character chosen there with /character (Aria in 1)" in str(
        await bram.default_rule()
    )


async def test_greeting_only_a_new_conversation_greets_once_when_asked_twice_at_once(
    make_core: MakeCore,
) -> None:
    # Two page loads of one empty web chat: the chat's line lets one greet, the other sees it.
    core = await make_core(characters=[Character(name="Aria", greeting="Hello!")])
    ids = await asyncio.gather(
        *(core.greet("web", "c1", None, "Sam", RecordingTarget(), only_new=True) for _ in "ab")
    )
    assert ids.count(None) == 1  # one greeted, the other found it there
    assert [m.text for m in await core.store.list_messages()] == ["Hello!"]
    await core.greet("web", "c1", None, "Sam", RecordingTarget())  # asked for: shown again
    assert len(await core.store.list_messages()) == 2
