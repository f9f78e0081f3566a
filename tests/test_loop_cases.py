"""The feedback-loop benchmark's cases and the shipped everyday prompts: the structure the
benchmark's measurements rely on."""

from __future__ import annotations

import pytest

from benchmarks.loop_cases import CASES, CharacterCases
from training.everyday import REGRESSION_PROMPTS, REPLAY_PROMPTS
from training.paraphrase import normalised

EVERYDAY = REPLAY_PROMPTS + REGRESSION_PROMPTS


def test_every_shipped_character_has_cases() -> None:
    assert sorted(CASES) == ["Bram", "Mara", "Pip"]
    assert all(name == cases.name for name, cases in CASES.items())


@pytest.mark.parametrize("cases", CASES.values(), ids=list(CASES))
def test_a_characters_cases(cases: CharacterCases) -> None:
    assert len(cases.corrections) == 12
    assert len(cases.unrelated) == 20
    asked: set[str] = set()
    for correction in cases.corrections:
        wordings = [normalised(t) for t in (correction.question, *correction.paraphrases)]
        assert len(correction.paraphrases) == 3
        assert len(set(wordings)) == 4, correction.question  # each differs from the others
        assert 5 <= len(correction.answer.split()) <= 20, correction.answer
        assert 1 <= len(correction.keywords) <= 3
        for keyword in correction.keywords:
            assert keyword.lower() in correction.answer.lower(), (keyword, correction.answer)
        assert asked.isdisjoint(wordings), correction.question
        asked.update(wordings)
    unrelated = {normalised(t) for t in cases.unrelated}
    assert len(unrelated) == 20
    assert unrelated.isdisjoint(asked)
    assert {normalised(t) for t in EVERYDAY}.isdisjoint(asked | unrelated)


def test_no_keyword_is_part_of_an_everyday_word() -> None:
    """Keywords are matched as substrings: one inside "that" or "what" would always hit."""
    texts = [*EVERYDAY, *(t for cases in CASES.values() for t in cases.unrelated)]
    common = " ".join(normalised(t) for t in texts).split()
    for cases in CASES.values():
        for correction in cases.corrections:
            for keyword in correction.keywords:
                assert not [w for w in common if keyword.lower() in w], keyword


def test_the_everyday_prompts_are_disjoint_sets() -> None:
    replay = {normalised(t) for t in REPLAY_PROMPTS}
    regression = {normalised(t) for t in REGRESSION_PROMPTS}
    assert (len(replay), len(regression)) == (32, 24)
    assert replay.isdisjoint(regression)
