"""training.paraphrase: the model's rewordings, cleaned and filtered by the real
all-MiniLM-L6-v2, through a model with canned rewordings (a fake of our own ChatModel)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar

import pytest

from engine import ChatModel, Chunk, GenerationRequest, Sampling, Usage
from training.paraphrase import (
    ASK,
    CANDIDATES_PER_PARAPHRASE,
    clean_rewording,
    generate_paraphrases,
)

BOAT = "What is your boat called?"
NAME = "What name does your boat have?"


class CannedRewordings(ChatModel):
    """Answers a reword request for a question with its canned reply for the request's seed
    (empty once they run out), and records the requests."""

    name: ClassVar[str] = "canned"

    def __init__(self, replies: dict[str, list[str]]) -> None:
        self.replies = replies
        self.requests: list[GenerationRequest] = []

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        self.requests.append(request)
        asked = request.messages[-1]["content"].removeprefix(ASK)
        canned = self.replies.get(asked, [])
        seed = request.sampling.seed or 0
        text = canned[seed] if seed < len(canned) else ""
        for index, word in enumerate(text.split(" ")):
            yield Chunk(word if index == 0 else " " + word)
        yield Chunk("", Usage(0, len(text.split()), "canned"))


@pytest.fixture(scope="module")
def minilm():  # type: ignore[no-untyped-def]
    from bot.knowledge import MiniLM

    return MiniLM()


async def test_good_rewordings_are_kept_with_their_labels_stripped(minilm) -> None:  # type: ignore[no-untyped-def]
    model = CannedRewordings(
        {BOAT: ['Paraphrase: "What name does your boat have?"', "1. Does your boat have a name?"]}
    )
    found = await generate_paraphrases(model, [BOAT], encoder=minilm)
    assert found == {BOAT: ["What name does your boat have?", "Does your boat have a name?"]}


async def test_copies_unrelated_text_and_answers_are_dropped(minilm) -> None:  # type: ignore[no-untyped-def]
    model = CannedRewordings(
        {
            BOAT: [
                "What is your boat called?",  # the question itself
                "What's your boat called?",  # a contraction away: similarity 0.98
                "Do you like the colour green?",  # another question: similarity 0.19
                "My boat is called the Kittiwake.",  # an answer, not a rewording
                "What name does your boat have?",
            ]
        }
    )
    found = await generate_paraphrases(model, [BOAT], encoder=minilm)
    assert found == {BOAT: ["What name does your boat have?"]}


async def test_duplicates_count_once_and_per_question_caps(minilm) -> None:  # type: ignore[no-untyped-def]
    model = CannedRewordings(
        {
            BOAT: [
                "What name does your boat have?",
                "what name does your boat have?",
                "What name does your boat have",  # no "?": cut off, or a copy anyway
                "Does your boat have a name?",
                "What is the name of your boat?",
            ]
        }
    )
    found = await generate_paraphrases(model, [BOAT, BOAT], encoder=minilm)
    assert found == {
        BOAT: [
            "What name does your boat have?",
            "Does your boat have a name?",
            "What is the name of your boat?",
        ]
    }
    capped = await generate_paraphrases(model, [BOAT], per_question=1, encoder=minilm)
    assert capped == {BOAT: ["What name does your boat have?"]}


async def test_every_question_is_asked_with_its_own_seeds_and_may_get_none(minilm) -> None:  # type: ignore[no-untyped-def]
    other = "Do you read much?"
    model = CannedRewordings({BOAT: ["Does your boat have a name?"]})
    found = await generate_paraphrases(
        model, [BOAT, other], per_question=2, encoder=minilm, sampling=Sampling(seed=0)
    )
    assert found == {BOAT: ["Does your boat have a name?"], other: []}
    count = 2 * CANDIDATES_PER_PARAPHRASE
    assert len(model.requests) == 2 * count
    for question in (BOAT, other):
        asked = [r for r in model.requests if r.messages[-1]["content"] == ASK + question]
        assert sorted(r.sampling.seed for r in asked) == list(range(count))
        assert asked[0].messages[0]["role"] == "system"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Sure! Here is a rewording:\n\nWhat name does your boat have?", NAME),
        ("Reworded question: 'What name does your boat have?'", NAME),
        ("**Rewording 2 - What name does your boat have?**", NAME),
        ("What name does your boat have? It is a lovely boat.\nMore text.", NAME),
        ("What name does your boat have and why did you", None),  # cut off
        ("Boat name?", None),  # under three words
        (" ".join(["very"] * 30) + " long?", None),
        ("I think it is called the Kittiwake.", None),  # an answer to a question
        ('I can rephrase it as: "What name does your boat have?', NAME),
        ('What do you mean by "called"?', 'What do you mean by "called"?'),
        ("What name does my boat have?", None),  # asked of the wrong person
        ("Do you moor your boat by the shop?", None),  # the prompt's example leaking in
        ("the name of your boat?", None),  # a fragment
    ],
)
def test_cleaning_a_reply(reply: str, expected: str | None) -> None:
    assert clean_rewording(reply, BOAT) == expected


def test_a_request_may_be_reworded_as_a_statement() -> None:
    request = "Tell me a long tale about the ocean."
    assert clean_rewording("Spin me a lengthy yarn about the sea.", request) == (
        "Spin me a lengthy yarn about the sea."
    )


class EveryTextApart:
    """An encoder (our own boundary) placing every candidate at similarity 0.8 to the first
    text and 0.64 to each other, so only the words can tell duplicates apart."""

    def encode(self, texts):  # type: ignore[no-untyped-def]
        import numpy as np

        vectors = np.zeros((len(texts), len(texts) + 1))
        vectors[0, 0] = 1.0
        for row in range(1, len(texts)):
            vectors[row, 0], vectors[row, row] = 0.8, 0.6
        return vectors


async def test_duplicates_by_their_words_are_dropped_whatever_the_encoder() -> None:
    model = CannedRewordings(
        {
            BOAT: [
                "What is your boat called?",
                NAME,
                "What NAME does your boat have?",
                NAME[:-1] + " ?",
            ]
        }
    )
    found = await generate_paraphrases(model, [BOAT], encoder=EveryTextApart())
    assert found == {BOAT: [NAME]}
