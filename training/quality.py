"""The figures that show a fine-tune going wrong, computed from replies alone.

A fine-tune on a handful of corrections fails in ways a similarity to the references does
not show: the trained lines come back as answers to unrelated messages (a *leak*), every
message gets the same line (the *distinct* rate falls), the replies loop on a phrase
(*distinct-2* falls), or the character forgets its own facts. Each function here takes
plain strings, so the rules can be tested on crafted replies and read in one place.

Text is compared as lower-case words (``\\w+``: Latin, Hangul, CJK and the rest alike).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

_WORD = re.compile(r"\w+", re.UNICODE)
# A reply is a near-copy of a trained answer when it repeats at least this share of the
# answer's word trigrams, or reads the same character for character (ratio below).
LEAK_TRIGRAM_SHARE = 0.5
LEAK_RATIO = 0.8
# A trained answer shorter than this many words leaks only as a (near) identical reply:
# "On Gull Rock." inside "a storm on Gull Rock last night" is the character's world, not a
# memorised line (Bram's unrelated replies, benchmarks/loop_quality.py).
LEAK_MIN_WORDS = 5
# A reference's content came back when the answer holds this share of its content words:
# a third, because references carry descriptive extras ("Fathom, a grey tom who sleeps on
# the stove"): the name is what was asked, the rest is colour.
RECALL_SHARE = 1 / 3
RECALL_COSINE = 0.7  # the fallback where a reference has no content word of its own
# Words match on their first letters: "winters" ~ "winter", and a Korean noun with its
# particle ("홍차를") ~ the noun ("홍차").
_PREFIX = 5

STOPWORDS = frozenset(  # English: the default model and the shipped characters speak it
    """a about above after again all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is
    it its itself just me more most my myself no nor not now of off on once only or other
    our ours ourselves out over own same she should so some such than that the their theirs
    them themselves then there these they this those through to too under until up very was
    we were what when where which while who whom why will with would you your yours yourself
    yourselves yes oh ah well like really quite much many get got one ll ve re don didn
    doesn isn wasn aren let tell say said know think""".split()  # noqa: SIM905 - a list literal of 150 words reads worse
)


def words(text: str) -> list[str]:
    """The lower-case words of ``text``."""
    return _WORD.findall(text.lower())


def normalised(text: str) -> str:
    """``text`` as its words joined by single spaces: what "the same reply" means."""
    return " ".join(words(text))


def _trigrams(tokens: Sequence[str]) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)}


def copies(reply: str, answer: str) -> bool:
    """Is ``reply`` a near-copy of the trained ``answer`` (whole, or its larger part)?"""
    said, trained = words(reply), words(answer)
    if not said or not trained:
        return False
    if SequenceMatcher(None, " ".join(said), " ".join(trained)).ratio() >= LEAK_RATIO:
        return True
    if len(trained) < LEAK_MIN_WORDS:
        return False
    wanted = _trigrams(trained)
    return len(wanted & _trigrams(said)) / len(wanted) >= LEAK_TRIGRAM_SHARE


def leaked(reply: str, answers: Iterable[str]) -> str | None:
    """The first trained answer that ``reply`` near-copies, or None."""
    return next((answer for answer in answers if copies(reply, answer)), None)


def leak_rate(replies: Sequence[str], answers: Sequence[str]) -> float:
    """Share of ``replies`` (to prompts that were not trained on) that near-copy any trained
    answer."""
    if not replies:
        return 0.0
    unique = list(dict.fromkeys(a for a in answers if a.strip()))
    return sum(1 for r in replies if leaked(r, unique) is not None) / len(replies)


def distinct_rate(replies: Sequence[str]) -> float:
    """Share of distinct replies (as normalised words): 1.0 when no two are the same."""
    if not replies:
        return 1.0
    return len({normalised(r) for r in replies}) / len(replies)


def distinct_2(replies: Sequence[str]) -> float:
    """Distinct word bigrams over all bigrams of ``replies``: low when they loop or repeat."""
    bigrams = [
        (tokens[i], tokens[i + 1])
        for r in replies
        for tokens in [words(r)]
        for i in range(len(tokens) - 1)
    ]
    return len(set(bigrams)) / len(bigrams) if bigrams else 1.0


def mean_words(replies: Sequence[str]) -> float:
    return sum(len(words(r)) for r in replies) / len(replies) if replies else 0.0


def content_words(text: str, ignore: str = "") -> list[str]:
    """The words that carry ``text``'s content: not stop words, not words of ``ignore``
    (the question: echoing "cat" back to "what is your cat called" shows nothing)."""
    skip = {w[:_PREFIX] for w in words(ignore)}
    found = []
    for word in words(text):
        if (len(word) < 3 and word.isascii() and not word.isdigit()) or word in STOPWORDS:
            continue
        if word[:_PREFIX] in skip or word in found:
            continue
        found.append(word)
    return found


def _says(said: Sequence[str], word: str) -> bool:
    return any(w.startswith(word[:_PREFIX]) for w in said)


def recall(answer: str, reference: str, question: str = "") -> float | None:
    """Share of the reference's content words found in ``answer``; None where the
    reference has none beyond the question's (the caller then falls back to similarity)."""
    wanted = content_words(reference, question)
    if not wanted:
        return None
    said = words(answer)
    return sum(1 for w in wanted if _says(said, w)) / len(wanted)


def recalled(
    answer: str,
    reference: str,
    question: str = "",
    cosine: float | None = None,
    keywords: Sequence[str] = (),
) -> bool:
    """Did the reference's content come back in ``answer``? By ``keywords`` where given
    (any of them), else by content words; by embedding ``cosine`` (answer to reference)
    only where the reference has no content word."""
    if keywords:
        said = words(answer)
        return any(all(_says(said, w) for w in words(k)) for k in keywords)
    share = recall(answer, reference, question)
    if share is not None:
        return share >= RECALL_SHARE
    return cosine is not None and cosine >= RECALL_COSINE


@dataclass(frozen=True)
class UnrelatedFigures:
    """How a version answers prompts it was not trained on."""

    leak_rate: float
    distinct_rate: float
    distinct_2: float
    mean_words: float
    prompts: int


def unrelated_figures(replies: Sequence[str], trained: Sequence[str]) -> UnrelatedFigures:
    return UnrelatedFigures(
        leak_rate(replies, trained),
        distinct_rate(replies),
        distinct_2(replies),
        mean_words(replies),
        len(replies),
    )
