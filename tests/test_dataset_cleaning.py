"""Cleaning rules one by one: each removes or rewrites exactly what it should; the config
that names them is validated with one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import CleanSettings, load_config
from bot.errors import ConfigError
from training.cleaning import Cleaner, Report


def record(question: str, answer: str, system: str = "You are Aria.") -> dict:
    return {
        "prompt": [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ],
        "completion": [{"role": "assistant", "content": answer}],
        "meta": {"reply_id": 1},
    }


def kept(rules: CleanSettings, *records: dict) -> tuple[list[str], Report]:
    cleaner, report = Cleaner(rules), Report()
    out = [cleaner.apply(r, report) for r in records]
    return [r["completion"][0]["content"] for r in out if r is not None], report


def test_exclude_words_are_whole_words_in_any_case() -> None:
    rules = CleanSettings(exclude_words=("actor", "감독"), scrub=())
    answers, report = kept(
        rules,
        record("q", "The ACTOR said so."),
        record("Is the actor here?", "No."),  # the question counts too
        record("q", "Factors and actors' lines."),  # "actors'" is another word
        record("q", "그 감독 영화"),
        record("q", "감독님"),  # a longer word
    )
    assert answers == ["Factors and actors' lines.", "감독님"]
    assert report.removed == {"exclude word 'actor'": 2, "exclude word '감독'": 1}


def test_exclude_patterns_and_the_system_prompt_is_not_checked() -> None:
    rules = CleanSettings(exclude_patterns=(r"(?i)star\s?trek",), scrub=())
    answers, report = kept(
        rules,
        record("q", "I loved StarTrek."),
        record("q", "Fine.", system="Never mention Star Trek."),  # the persona is not data
    )
    assert answers == ["Fine."]
    assert report.removed == {"exclude pattern '(?i)star\\\\s?trek'": 1}


def test_length_bounds() -> None:
    rules = CleanSettings(min_chars=3, max_chars=5, scrub=())
    answers, report = kept(rules, record("q", " ab "), record("q", "abc"), record("q", "abcdef"))
    assert answers == ["abc"]
    assert report.removed == {"shorter than 3 characters": 1, "longer than 5 characters": 1}


@pytest.mark.parametrize(
    ("kind", "text", "scrubbed"),
    [
        ("email", "Mail sam.o+x@mail.example.co.kr now", "Mail [email] now"),
        ("phone", "Call +82 10-1234-5678 or (555) 123 4567.", "Call [phone] or ([phone]."),
        ("phone", "In 1984 there were 3 ships.", "In 1984 there were 3 ships."),
        ("url", "See https://x.io/a?b=1, or www.Example.com.", "See [url] or [url]"),
        ("mention", "Thanks @sam_k and @Al!", "Thanks [mention] and [mention]!"),
        ("mention", "mail a@b.co", "mail a@b.co"),  # an address is not a mention
    ],
)
def test_each_scrubber_alone(kind: str, text: str, scrubbed: str) -> None:
    rules = CleanSettings(scrub=(kind,))
    item = record(f"q: {text}", text)
    answers, report = kept(rules, item)
    assert answers == [scrubbed]
    assert item["prompt"][1]["content"] == f"q: {scrubbed}"  # the prompt too
    assert report.changed == ({f"scrubbed {kind}": 1} if scrubbed != text else {})


def test_no_rules_keep_everything() -> None:
    answers, report = kept(CleanSettings(min_chars=0, scrub=()), record("q", ""))
    assert answers == [""] and report.removed == {}


CONFIG = """
[[characters]]
name = "Aria"
description = "x"

[[characters]]
name = "Bram"
description = "y"
"""


def load(tmp_path: Path, extra: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "config.toml"
    path.write_text(CONFIG + extra, encoding="utf-8")
    return load_config(path)


def test_character_rules_add_to_the_shared_ones(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        '[clean]\nexclude_words = ["wifi"]\nmax_chars = 100\n'
        '[clean.characters.aria]\nexclude_words = ["actor"]\nscrub = []\n',
    )
    aria, bram = config.clean_for("Aria"), config.clean_for("Bram")
    assert aria.exclude_words == ("wifi", "actor") and aria.scrub == ()
    assert aria.max_chars == 100
    assert bram == config.clean and bram.exclude_words == ("wifi",)
    assert bram.scrub == ("email", "phone", "url", "mention")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[clean]\nexclude_patterns = ["(unclosed"]\n', "[clean] exclude_patterns: '(unclosed'"),
        ('[clean]\nscrub = ["emails"]\n', "[clean] scrub: 'emails'; use any of email"),
        ("[clean.characters.Zed]\nmin_chars = 2\n", "[clean.characters.Zed]: character 'Zed'"),
        ("[clean]\nmax_chars = -1\n", "[clean] max_chars: must not be negative"),
        ("[clean]\nexclude_word = []\n", "did you mean 'exclude_words'?"),
    ],
)
def test_bad_rules_are_one_line_errors(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, extra)
    assert message in str(caught.value) and "\n" not in str(caught.value)
