"""Paraphrases of corrected questions, for where a reviewer wrote none.

Whether a correction generalises is measured on other wordings of its question. Where none
were written, :func:`generate_paraphrases` asks the current model for rewordings, cleans
them and keeps only those that the bot's sentence encoder (all-MiniLM-L6-v2) places near
the question, but not on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from engine import ChatModel, GenerationRequest, Sampling

# Cosine similarity to the question, both ends inclusive. Measured on the feedback-loop
# benchmark's cases (benchmarks/loop_cases.py): hand-written paraphrases of its 36
# questions score 0.19-0.94 (median 0.63), while its unrelated and everyday prompts score
# at most 0.61 against any of the questions. Below 0.6 a candidate is as near as an
# unrelated message is: often the model answered, or asked something else. So 0.6 keeps
# about half of the real paraphrases and few impostors. Above 0.97 it is the question with
# a word or a comma changed, which tests nothing a reply to the question itself does not.
MIN_SIMILARITY = 0.6
MAX_SIMILARITY = 0.97
MIN_WORDS, MAX_WORDS = 3, 30
# Samples drawn per paraphrase wanted: a small model's rewordings often fail the checks.
CANDIDATES_PER_PARAPHRASE = 3
# Requests in flight at once: a whole batch plus some waiting, well under the local
# engine's max_queue (64), beyond which it answers Busy.
IN_FLIGHT = 32

DEFAULT_SAMPLING = Sampling(max_new_tokens=48, temperature=0.8, top_p=0.95, seed=0)

SYSTEM = (
    "You reword questions. Given a question, reply with one question that asks the same "
    "thing in different words. Reply with the reworded question only."
)

# "Paraphrase:", "Reworded question 2 -", "Sure! Here is a rewording:" ... before the text.
_LABEL = re.compile(
    r"^(?:(?:sure|okay|ok|certainly)\b[^:\n]{0,40}:|here(?:'s| is)\b[^:\n]{0,40}:|"
    r"(?:\w+\s+){0,2}(?:paraphrase|paraphrased|rewording|reworded|rephrased|rephrasing|"
    r"rewritten|question|version|answer)(?:\s+\w+)?\s*\d*(?:\s*:|\s+[-–—]\s))\s*",
    re.IGNORECASE,
)
_MARKER = re.compile(r"^(?:\d+[.)]|[-*•])\s+")
_QUOTES = "\"'`“”‘’«»*"
ASK = "Reword this question: "
# A sentence quoted inside a lead-in: 'I can rephrase it as: "Where ...?"' (closed or not).
_QUOTED = re.compile(r"[\"“]([^\"“”]+[?.!])(?:[\"”]|$)")
_YOU = re.compile(r"\b(?:you|your|yours|yourself)\b", re.IGNORECASE)
_ME = re.compile(r"\b(?:i|me|my|mine|myself)\b", re.IGNORECASE)


class Encoder(Protocol):
    """Turns texts into unit-length vectors (bot.knowledge.MiniLM)."""

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


# One worked example: without it SmolLM2-135M mostly answers the question instead. Its
# words leak into rewordings ("Do you sleep at the shop?"): such a candidate is dropped.
EXAMPLE = ("What time does the shop open?", "When does the shop open its doors?")
EXAMPLE_WORDS = frozenset({"shop", "doors"})


def reword_prompt(question: str) -> list[dict[str, str]]:
    """The chat messages asking the model for one rewording of ``question``."""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"{ASK}{EXAMPLE[0]}"},
        {"role": "assistant", "content": EXAMPLE[1]},
        {"role": "user", "content": f"{ASK}{question}"},
    ]


def clean_rewording(text: str, question: str) -> str | None:
    """The rewording in a model's reply, or None.

    Its first line with text once labels, list markers and quotes are taken off (or the
    sentence it quotes: 'I would put it as: "...?"'), cut after its first "?" when the
    question is one. None unless that is MIN_WORDS-MAX_WORDS words ending in "?" for a
    question (a statement there is mostly the model answering it, and an answer scores
    ~0.77 against its question) or in ?, . or ! for a request (no ending: usually cut off at
    max_new_tokens) and starting with a capital; None too where it uses the prompt's example
    (EXAMPLE_WORDS), or asks about "me" what the question asks "you" (SmolLM2
    turns "What do you like to eat?" into "What do I like to eat?", similarity ~0.9).
    """
    line = ""
    for raw in text.splitlines():
        quoted = [q for q in _QUOTED.findall(raw) if len(q.split()) >= MIN_WORDS]
        line = _strip(quoted[-1] if quoted else raw)
        if line:
            break
    if _YOU.search(question) and not _YOU.search(line) and _ME.search(line):
        return None  # "What do I like to eat?": asked of the wrong person
    if (EXAMPLE_WORDS & set(normalised(line).split())) - set(normalised(question).split()):
        return None
    asks = question.rstrip().endswith("?")
    if asks and "?" in line:
        line = line[: line.index("?") + 1]
    if not MIN_WORDS <= len(line.split()) <= MAX_WORDS or line[-1] not in ("?" if asks else "?.!"):
        return None
    return line if line[0].isupper() else None  # a sentence, not a fragment or a number


def _strip(line: str) -> str:
    previous = None
    while line != previous:  # "1. Paraphrase: "..."" takes several passes
        previous = line
        line = line.strip().strip(_QUOTES).strip()
        line = _MARKER.sub("", line)
        line = _LABEL.sub("", line)
    return line


def normalised(text: str) -> str:
    """Lower case, punctuation dropped, single spaces: what counts as the same words."""
    return " ".join(re.sub(r"[^\w\s]", "", text.lower()).split())


async def generate_paraphrases(
    model: ChatModel,
    questions: Sequence[str],
    *,
    per_question: int = 3,
    encoder: Encoder | None = None,
    sampling: Sampling | None = None,
) -> dict[str, list[str]]:
    """Up to ``per_question`` rewordings of each question by ``model``, each a sentence of
    MIN_WORDS-MAX_WORDS words with a cosine similarity to its question in
    [MIN_SIMILARITY, MAX_SIMILARITY] (``encoder``: all-MiniLM-L6-v2 unless given) and no
    duplicate of the question or of another kept rewording. A question may get fewer or
    none; every question is a key.

    CANDIDATES_PER_PARAPHRASE samples are drawn per rewording wanted, with ``sampling``
    (default: temperature 0.8) and seeds counting up from its own, so a run repeats.
    """
    unique = list(dict.fromkeys(questions))
    if per_question <= 0 or not unique:
        return {q: [] for q in unique}
    base = sampling or DEFAULT_SAMPLING
    count = per_question * CANDIDATES_PER_PARAPHRASE
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def sample(question: str, index: int) -> str:
        seeded = dataclasses.replace(base, seed=(base.seed or 0) + index)
        text = ""
        async with gate:
            async for chunk in model.stream(GenerationRequest(reword_prompt(question), seeded)):
                text += chunk.text
        return text

    replies = await asyncio.gather(*(sample(q, i) for q in unique for i in range(count)))
    candidates: dict[str, list[str]] = {}
    for n, question in enumerate(unique):
        cleaned = (clean_rewording(r, question) for r in replies[n * count : (n + 1) * count])
        candidates[question] = list(dict.fromkeys(c for c in cleaned if c))
    if encoder is None:
        from bot.knowledge import MiniLM

        encoder = MiniLM()
    return await asyncio.to_thread(_keep_similar, encoder, candidates, per_question)


def _keep_similar(
    encoder: Encoder, candidates: dict[str, list[str]], per_question: int
) -> dict[str, list[str]]:
    texts = [t for question, found in candidates.items() for t in (question, *found)]
    vectors = iter(encoder.encode(texts))
    kept: dict[str, list[str]] = {}
    for question, found in candidates.items():
        target = next(vectors)
        seen = {normalised(question)}
        chosen: list[tuple[str, np.ndarray]] = []
        for text in found:
            vector = next(vectors)
            similarity = float(vector @ target)
            near_copy = any(float(vector @ other) > MAX_SIMILARITY for _, other in chosen)
            if len(chosen) == per_question or normalised(text) in seen or near_copy:
                continue
            if MIN_SIMILARITY <= similarity <= MAX_SIMILARITY:
                chosen.append((text, vector))
                seen.add(normalised(text))
        kept[question] = [text for text, _ in chosen]
    return kept
