"""Lorebooks with SillyTavern's World Info semantics: a card's ``character_book``, and
standalone World Info files (``{"entries": {"0": {"key": [...], ...}}}``) named by
``lorebooks = [...]`` per character or ``[lorebooks] global = [...]``, merged into one book.

An entry enters the prompt when one of its keys appears in the recent turns (the last
``scan_depth`` messages): whole words, case-insensitive unless the entry says otherwise.
A ``selective`` entry also needs its secondary keys (any of them, or as ``selectiveLogic``
says); a ``constant`` entry is always in. Entries are inserted in ``insertion_order`` (lower
first); when they exceed the token budget, the lowest ``priority`` entries are left out
first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

DEFAULT_SCAN_DEPTH = 4  # recent messages searched for keys, when the book does not say
WORLD_INFO_ORDER = 100  # SillyTavern's order when an entry has none
# selectiveLogic: how the secondary keys decide, as SillyTavern numbers them.
AND_ANY, NOT_ALL, NOT_ANY, AND_ALL = range(4)


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
    whole_words: bool = True  # False: a key is found inside a longer word too
    selective_logic: int = AND_ANY
    scan_depth: int | None = None  # None: the book's

    def matches(self, text: str) -> bool:
        """Whether this entry's keys select it for ``text`` (the scanned turns)."""
        if not self.enabled:
            return False
        if self.constant:
            return True
        if not any(self._found(key, text) for key in self.keys):
            return False
        if not (self.selective and self.secondary_keys):
            return True
        found = [self._found(key, text) for key in self.secondary_keys]
        if self.selective_logic == NOT_ALL:
            return not all(found)
        if self.selective_logic == NOT_ANY:
            return not any(found)
        if self.selective_logic == AND_ALL:
            return all(found)
        return any(found)

    def _found(self, key: str, text: str) -> bool:
        return _found(key, text, self.case_sensitive, self.whole_words)


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
        scanned: dict[int, str] = {}

        def text(depth: int) -> str:
            if depth not in scanned:
                scanned[depth] = "\n".join(recent[-depth:] if depth > 0 else [])
            return scanned[depth]

        chosen = [
            e
            for e in self.entries
            if e.matches(text(self.scan_depth if e.scan_depth is None else e.scan_depth))
        ]
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


def _found(key: str, text: str, case_sensitive: bool, whole_words: bool = True) -> bool:
    key = key.strip()
    if not key:
        return False
    if not whole_words:
        return (key in text) if case_sensitive else (key.casefold() in text.casefold())
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


def merge(books: Iterable[Lorebook | None]) -> Lorebook | None:
    """One book of every entry of ``books`` (a card's first, then World Info files), each
    entry keeping its own book's scan depth; the first book's token budget (a card's) caps
    them all, and ``[model] knowledge_tokens`` caps them with the retrieved facts."""
    present = [book for book in books if book is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    entries = tuple(
        entry if entry.scan_depth is not None else replace(entry, scan_depth=book.scan_depth)
        for book in present
        for entry in book.entries
    )
    return Lorebook(entries=entries, token_budget=present[0].token_budget)


def is_world_info(data: Any) -> bool:
    """Whether parsed JSON looks like a World Info file rather than a card."""
    return isinstance(data, dict) and "entries" in data and "spec" not in data


def read_world_info(path: Path) -> Lorebook:
    """A SillyTavern World Info file as a :class:`Lorebook`; ValueError with one line naming
    the file and the entry otherwise."""
    where = f"world info file {path}"
    if not path.is_file():
        raise ValueError(f"{where} does not exist; fix the path (relative to the config file)")
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not UTF-8 text; save it as UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where} is not valid JSON ({exc})") from None
    return parse_world_info(data, where)


def parse_world_info(data: Any, where: str) -> Lorebook:
    """World Info JSON (``{"entries": {"<uid>": {...}}}``) as a :class:`Lorebook`. ``order``
    is both the insertion order and, as in SillyTavern, what stays under the budget (higher
    first); ``position`` is checked but every entry goes where the card's do."""
    if not is_world_info(data) or not isinstance(data["entries"], dict):
        example = '{"entries": {"0": {"key": ["cat"], "content": "..."}}}'
        raise ValueError(f"{where}: not a World Info file; expected an object like {example}")
    entries = tuple(
        _world_entry(raw, f'{where}: entries["{uid}"]') for uid, raw in data["entries"].items()
    )
    return Lorebook(entries=entries)


def _world_entry(raw: Any, where: str) -> LoreEntry:
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be an object with key and content")
    content = raw.get("content")
    if not isinstance(content, str):
        raise ValueError(f'{where}.content must be a string, e.g. "content": "Fathom is a cat"')
    logic = _integer(raw.get("selectiveLogic"), f"{where}.selectiveLogic")
    if logic is not None and logic not in range(4):
        raise ValueError(
            f"{where}.selectiveLogic must be 0 (and any), 1 (not all), 2 (not any) or "
            f"3 (and all), got {logic!r}"
        )
    position = raw.get("position")
    if position is not None and (isinstance(position, bool) or not isinstance(position, int | str)):
        raise ValueError(f"{where}.position must be a number or a name, got {position!r}")
    order = _integer(raw.get("order"), f"{where}.order")
    order = WORLD_INFO_ORDER if order is None else order
    case = raw.get("caseSensitive")
    whole = raw.get("matchWholeWords")
    return LoreEntry(
        keys=_strings(raw.get("key", []), f"{where}.key"),
        content=content,
        secondary_keys=_strings(raw.get("keysecondary", []), f"{where}.keysecondary"),
        selective=_flag(raw.get("selective", False), f"{where}.selective"),
        constant=_flag(raw.get("constant", False), f"{where}.constant"),
        enabled=not _flag(raw.get("disable", False), f"{where}.disable"),
        insertion_order=order,
        priority=order,
        case_sensitive=False if case is None else _flag(case, f"{where}.caseSensitive"),
        name=str(raw.get("comment") or ""),
        whole_words=True if whole is None else _flag(whole, f"{where}.matchWholeWords"),
        selective_logic=AND_ANY if logic is None else logic,
        scan_depth=_integer(raw.get("scanDepth"), f"{where}.scanDepth"),
    )
