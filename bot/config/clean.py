"""[clean] and its [clean.characters.NAME] additions: the cleaning rules of training data
(applied by training/cleaning.py)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from bot.config.overrides import character_tables, split_characters
from bot.config.reading import Where, field_values
from bot.config.settings import CleanSettings

_SCRUB_KINDS = ("email", "phone", "url", "mention")


def read_clean(
    where: Where, table: Any, names: list[str]
) -> tuple[CleanSettings, dict[str, CleanSettings]]:
    """The shared rules, and each character's (by lower-case name) with its additions."""
    own, per_character = split_characters(where, "clean", table)
    shared = _clean_table(where, "clean", own, CleanSettings())
    overrides = {}
    for name, label, values in character_tables(where, "clean", per_character, names):
        # Words and patterns named here are added to the shared ones; other keys replace.
        base = dataclasses.replace(shared, exclude_words=(), exclude_patterns=())
        added = _clean_table(where, label, values, base)
        overrides[name] = dataclasses.replace(
            added,
            exclude_words=shared.exclude_words + added.exclude_words,
            exclude_patterns=shared.exclude_patterns + added.exclude_patterns,
        )
    return shared, overrides


def _clean_table(where: Where, label: str, table: Any, over: CleanSettings) -> CleanSettings:
    if not isinstance(table, dict):
        where.fail(f"[{label}]", "must be a table of settings")
    settings = dataclasses.replace(over, **field_values(where, label, table, CleanSettings))
    for pattern in settings.exclude_patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            where.fail(f"[{label}] exclude_patterns", f"{pattern!r} is not a regex: {exc}")
    for kind in settings.scrub:
        if kind not in _SCRUB_KINDS:
            where.fail(f"[{label}] scrub", f"{kind!r}; use any of {', '.join(_SCRUB_KINDS)}")
    for name in ("min_chars", "max_chars"):
        if getattr(settings, name) < 0:
            where.fail(f"[{label}] {name}", "must not be negative")
    return settings
