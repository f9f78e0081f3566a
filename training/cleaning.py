"""Cleaning rules for training records: out-of-world words and patterns, length bounds, and
scrubbing of e-mail addresses, phone numbers, URLs and @mentions.

One :class:`Cleaner` serves ``charbot export`` and ``charbot data clean``: the same rules,
counted the same way. Rules read the texts that are trained on (the answer: ``completion``,
``chosen``, ``rejected``, or the last assistant turn of ``messages``) and the question (the
last user turn of the prompt); scrubbing rewrites every message, the prompt included, so no
address leaves through the context either.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

SCRUBBERS: dict[str, tuple[re.Pattern[str], str]] = {
    # Order matters: an e-mail's domain and a URL's digits must not be taken for the others.
    "email": (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "[email]"),
    "url": (re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE), "[url]"),
    "mention": (re.compile(r"(?<![\w@])@\w{2,}"), "[mention]"),
    "phone": (re.compile(r"(?<![\w+])\+?\d(?:[\d ().-]{6,}\d)(?!\w)"), "[phone]"),
}
_DIGIT = re.compile(r"\d")
_MAY_HOLD = {
    "email": lambda text: "@" in text,
    "mention": lambda text: "@" in text,
    "url": lambda text: "://" in text or "www." in text.lower(),
    "phone": lambda text: _DIGIT.search(text) is not None,
}
_SCRUB_CACHE = 4096
_MESSAGE_LISTS = ("prompt", "completion", "chosen", "rejected", "messages")
_ANSWER_LISTS = ("completion", "chosen", "rejected")


class CleanRules(Protocol):
    """The settings a cleaner is built from (``bot.config.CleanSettings``)."""

    exclude_words: tuple[str, ...]
    exclude_patterns: tuple[str, ...]
    min_chars: int
    max_chars: int
    scrub: tuple[str, ...]


@dataclass
class Report:
    """How many records each rule removed or changed; printed after every export."""

    read: int = 0
    kept: int = 0
    removed: Counter[str] = field(default_factory=Counter)
    changed: Counter[str] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        out = [f"{self.read} records made, {self.kept} kept"]
        out += [f"  removed {n:>7}  {rule}" for rule, n in sorted(self.removed.items())]
        out += [f"  changed {n:>7}  {rule}" for rule, n in sorted(self.changed.items())]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "kept": self.kept,
            "removed": dict(sorted(self.removed.items())),
            "changed": dict(sorted(self.changed.items())),
        }


class Cleaner:
    """Applies one character's cleaning rules to records and counts what each rule did."""

    def __init__(self, rules: CleanRules | None = None) -> None:
        self.words: dict[str, str] = {}
        self.patterns: list[tuple[str, re.Pattern[str]]] = []
        self.min_chars, self.max_chars = 0, 0
        self.scrubbers: list[tuple[str, re.Pattern[str], str]] = []
        self._word_re: re.Pattern[str] | None = None
        self._scrubbed: dict[str, tuple[str, tuple[str, ...]]] = {}
        if rules is None:
            return
        self.words = {w.casefold(): w for w in rules.exclude_words}
        if self.words:
            # Whole words, any case; longest first so "actress" is not reported as "actor".
            alternatives = "|".join(re.escape(w) for w in sorted(self.words, key=len, reverse=True))
            self._word_re = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
        self.patterns = [(p, re.compile(p)) for p in rules.exclude_patterns]
        self.min_chars, self.max_chars = rules.min_chars, rules.max_chars
        self.scrubbers = [(name, *SCRUBBERS[name]) for name in SCRUBBERS if name in rules.scrub]

    def why_removed(self, record: dict[str, Any]) -> str | None:
        """The first rule that removes ``record``, or None to keep it."""
        answers = _answers(record)
        checked = [*answers, _question(record)]
        if self._word_re is not None:
            for text in checked:
                found = self._word_re.search(text)
                if found:
                    return f"exclude word {self.words[found.group(0).casefold()]!r}"
        for source, pattern in self.patterns:
            if any(pattern.search(text) for text in checked):
                return f"exclude pattern {source!r}"
        for text in answers:
            if len(text.strip()) < self.min_chars:
                return f"shorter than {self.min_chars} characters"
            if self.max_chars and len(text) > self.max_chars:
                return f"longer than {self.max_chars} characters"
        return None

    def scrub(self, record: dict[str, Any]) -> set[str]:
        """Replace addresses, numbers, links and mentions in place; return the kinds found."""
        found: set[str] = set()
        if not self.scrubbers:
            return found
        for key in _MESSAGE_LISTS:
            for message in record.get(key) or ():
                text = message.get("content")
                if isinstance(text, str):
                    message["content"], kinds = self._scrub_text(text)
                    found.update(kinds)
        return found

    def _scrub_text(self, text: str) -> tuple[str, tuple[str, ...]]:
        # Every record of a character repeats its persona: remember recent texts' results.
        cached = self._scrubbed.get(text)
        if cached is not None:
            return cached
        original, kinds = text, []
        for name, pattern, token in self.scrubbers:
            if not _MAY_HOLD[name](text):  # a cheap test first: most texts hold none
                continue
            text_after, count = pattern.subn(token, text)
            if count:
                kinds.append(name)
                text = text_after
        result = (text, tuple(kinds))
        if len(self._scrubbed) >= _SCRUB_CACHE:
            self._scrubbed.clear()
        self._scrubbed[original] = result
        return result

    def apply(self, record: dict[str, Any], report: Report) -> dict[str, Any] | None:
        """``record`` cleaned (changed in place), or None when a rule removes it."""
        reason = self.why_removed(record)
        if reason is not None:
            report.removed[reason] += 1
            return None
        for name in self.scrub(record):
            report.changed[f"scrubbed {name}"] += 1
        return record


def _answers(record: dict[str, Any]) -> list[str]:
    texts = [
        m["content"]
        for key in _ANSWER_LISTS
        for m in record.get(key) or ()
        if isinstance(m.get("content"), str)
    ]
    messages = record.get("messages")
    if messages and messages[-1].get("role") == "assistant":
        texts.append(messages[-1]["content"])
    return texts


def _question(record: dict[str, Any]) -> str:
    turns = record.get("prompt") or (record.get("messages") or [])[:-1]
    for message in reversed(turns):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return message["content"]
    return ""
