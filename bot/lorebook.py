"""Lorebooks (Character Card ``character_book``) with SillyTavern's World Info semantics.

An entry enters the prompt when one of its keys appears in the recent turns (the last
``scan_depth`` messages): whole words, case-insensitive unless the entry says otherwise.
A ``selective`` entry also needs one of its secondary keys; a ``constant`` entry is always
in. Entries are inserted in ``insertion_order`` (lower first); when they exceed the token
budget, the lowest ``priority`` entries are left out first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_SCAN_DEPTH = 4  # recent messages searched for keys, when the book does not say


@dataclass(frozen=True, slots=True)
class LoreEntry:
    """One World Info entry."""

    keys: tuple[str, ...]
    content: str
    secondary_keys: tuple[str, ...] = ()
    selective: bool = False
    constant: bool = False
    enabled: bool = True
    insertion_order: int = 0
    priority: int = 0
    case_sensitive: bool = False
    name: str = ""

    def matches(self, text: str) -> bool:
        """Whether this entry's keys select it for ``text`` (the scanned turns)."""
        if not self.enabled:
            return False
        if self.constant:
            return True
        if not any(_found(key, text, self.case_sensitive) for key in self.keys):
            return False
        if self.selective and self.secondary_keys:
            return any(_found(key, text, self.case_sensitive) for key in self.secondary_keys)
        return True


@dataclass(frozen=True, slots=True)
class Lorebook:
    """A card's ``character_book``: entries, how far back to scan, a token budget."""

    entries: tuple[LoreEntry, ...]
    scan_depth: int = DEFAULT_SCAN_DEPTH
    token_budget: int | None = None  # None: [model] knowledge_tokens

    def select(
        self, recent: Sequence[str], count_tokens: Callable[[str], int], budget: int
    ) -> list[str]:
        """The contents to insert for ``recent`` texts (oldest first), in insertion order,
        within ``budget`` tokens (the book's own budget if smaller)."""
        text = "\n".join(recent[-self.scan_depth :] if self.scan_depth > 0 else [])
        chosen = [e for e in self.entries if e.matches(text)]
        if self.token_budget is not None:
            budget = min(budget, self.token_budget)
        # Keep the most important within budget; ties keep the earlier-inserted entry.
        by_importance = sorted(chosen, key=lambda e: (-e.priority, e.insertion_order))
        kept: list[LoreEntry] = []
        used = 0
        for entry in by_importance:
            cost = count_tokens(entry.content)
            if used + cost <= budget:
                kept.append(entry)
                used += cost
        kept.sort(key=lambda e: e.insertion_order)
        return [e.content for e in kept]


def _found(key: str, text: str, case_sensitive: bool) -> bool:
    key = key.strip()
    if not key:
        return False
    # Whole words where the key starts or ends with a word character ("cat" is not found
    # in "concatenate"); keys like "#tag" or "C++" match as written.
    left = r"(?<!\w)" if key[0].isalnum() or key[0] == "_" else ""
    right = r"(?!\w)" if key[-1].isalnum() or key[-1] == "_" else ""
    flags = 0 if case_sensitive else re.IGNORECASE
    return re.search(left + re.escape(key) + right, text, flags) is not None


def parse_book(book: Any, where: str) -> Lorebook:
    """A Card V2/V3 ``character_book`` object as a :class:`Lorebook`; raises ValueError with
    a one-line reason naming ``where`` (the file) and the entry."""
    if not isinstance(book, dict):
        raise ValueError(f"{where}: character_book must be an object with an entries list")
    entries = book.get("entries", [])
    if not isinstance(entries, list):
        raise ValueError(f"{where}: character_book.entries must be a list of entries")
    parsed = tuple(
        _entry(raw, f"{where}: character_book.entries[{i}]") for i, raw in enumerate(entries)
    )
    depth = _integer(book.get("scan_depth"), f"{where}: character_book.scan_depth")
    budget = _integer(book.get("token_budget"), f"{where}: character_book.token_budget")
    return Lorebook(
        entries=parsed,
        scan_depth=DEFAULT_SCAN_DEPTH if depth is None else depth,
        token_budget=budget,
    )


def _entry(raw: Any, where: str) -> LoreEntry:
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be an object with keys and content")
    content = raw.get("content")
    if not isinstance(content, str):
        raise ValueError(f'{where}.content must be a string, e.g. "content": "Fathom is a cat"')
    return LoreEntry(
        keys=_strings(raw.get("keys", []), f"{where}.keys"),
        content=content,
        secondary_keys=_strings(raw.get("secondary_keys", []), f"{where}.secondary_keys"),
        selective=_flag(raw.get("selective", False), f"{where}.selective"),
        constant=_flag(raw.get("constant", False), f"{where}.constant"),
        enabled=_flag(raw.get("enabled", True), f"{where}.enabled"),
        insertion_order=_integer(raw.get("insertion_order"), f"{where}.insertion_order") or 0,
        priority=_integer(raw.get("priority"), f"{where}.priority") or 0,
        case_sensitive=_flag(raw.get("case_sensitive") or False, f"{where}.case_sensitive"),
        name=str(raw.get("name") or raw.get("comment") or ""),
    )


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'{where} must be a list of strings, e.g. ["cat", "Fathom"]')
    return tuple(value)


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false, got {value!r}")
    return value


def _integer(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ValueError(f"{where} must be a whole number, got {value!r}")
    return int(value)
