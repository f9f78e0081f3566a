"""Paraphrases in the store, on a real SQLite file and a real PostgreSQL server: stored once
per reply and wording, stripped, empty ones skipped, read back per reply and for many, and
carried by the streamed feedback the export reads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.feedback import iter_feedback
from storage.paraphrases import (
    MAX_CHARS,
    ParaphraseTooLong,
    add_paraphrases,
    list_paraphrases,
    paraphrases_of,
)
from storage.records import NewInbound, NewReply, ReplyAddress
from storage.review import UnknownReply
from storage.store import Store


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'charbot.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
async def replied(db_url: str) -> AsyncIterator[tuple[Store, int, int, int]]:
    """A store with a question and two rated replies to it: (store, question, reply, other)."""
    store = await Store.open(db_url)
    asked = await store.store_inbound(
        NewInbound("test", "c1", None, "q", "42", "Sam", "How far can it jump?", None, 1.0),
        link_now=True,
    )
    address = ReplyAddress(asked.conversation_id, "test", "c1", asked.message_id, "Aria")
    prompt = [{"role": "user", "content": "How far can it jump?"}]
    reply = await store.add_reply(NewReply(address, "Far.", prompt=prompt))
    other = await store.add_reply(NewReply(address, "Not far.", prompt=prompt))
    await store.set_vote(reply, "u1", -1)
    await store.set_vote(other, "u1", 1)
    yield store, asked.message_id, reply, other
    await store.close()


async def test_each_wording_is_stored_once_stripped_without_empty_ones(replied) -> None:  # type: ignore[no-untyped-def]
    store, _question, reply, _other = replied
    added = await add_paraphrases(
        store,
        reply,
        ["  What is its jump range? ", "", "   ", "How far?", "How far?"],
        author="rita",
    )
    assert added == 2
    again = ["What is its jump range?", "Zebra: how far?", "How far?"]
    assert await add_paraphrases(store, reply, again, source="user", author="u9") == 1
    found = await list_paraphrases(store, reply)
    assert [(p.text, p.source, p.author) for p in found] == [
        ("What is its jump range?", "reviewer", "rita"),
        ("How far?", "reviewer", "rita"),  # the first writer keeps it
        ("Zebra: how far?", "user", "u9"),
    ]
    assert {p.message_id for p in found} == {reply}
    assert await add_paraphrases(store, reply, [], author="rita") == 0


async def test_paraphrases_of_many_replies_at_once(replied) -> None:  # type: ignore[no-untyped-def]
    store, _question, reply, other = replied
    await add_paraphrases(store, reply, ["A?", "B?"], author="rita")
    await add_paraphrases(store, other, ["A?"], source="generated", author="model")
    found = await paraphrases_of(store, [reply, other, 12345])
    assert {key: [p.text for p in value] for key, value in found.items()} == {
        reply: ["A?", "B?"],
        other: ["A?"],  # the same wording of another reply is its own row
    }
    assert await paraphrases_of(store, []) == {}
    assert await list_paraphrases(store, 12345) == []


async def test_only_replies_take_paraphrases_and_only_known_sources(replied) -> None:  # type: ignore[no-untyped-def]
    store, question, reply, _other = replied
    with pytest.raises(UnknownReply, match="no stored reply has id"):
        await add_paraphrases(store, question, ["Why?"], author="rita")
    with pytest.raises(UnknownReply):
        await add_paraphrases(store, 99999, ["Why?"], author="rita")
    with pytest.raises(ValueError, match="use one of reviewer, generated, user"):
        await add_paraphrases(store, reply, ["Why?"], source="import", author="rita")
    with pytest.raises(ParaphraseTooLong, match=f"shorten it to {MAX_CHARS}"):
        await add_paraphrases(store, reply, ["é" * (MAX_CHARS + 1)], author="rita")
    # The longest allowed, in four-byte characters, fits PostgreSQL's index on the text.
    assert await add_paraphrases(store, reply, ["😀" * MAX_CHARS], author="rita") == 1
    assert await add_paraphrases(store, reply, ["nul\x00"], author="rita") == 1
    texts = [p.text for p in await list_paraphrases(store, reply)]
    assert texts == ["😀" * MAX_CHARS, "nul\ufffd"]


async def test_the_feedback_stream_carries_each_replys_paraphrases_sorted(replied) -> None:  # type: ignore[no-untyped-def]
    store, _question, reply, other = replied
    await add_paraphrases(store, reply, ["b?", "Z?", "a?", "é?"], author="rita")
    found = await store.read(lambda conn: list(iter_feedback(conn)))
    by_id = {row.id: row.paraphrases for row in found}
    assert by_id == {reply: ("Z?", "a?", "b?", "é?"), other: ()}  # code point order
