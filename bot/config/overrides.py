"""The per-character tables of [training] and [clean]: ``[SECTION.characters.NAME]``.

Both sections read them the same way, so the shape checks and the character-name check are
written once here; what an override means (over the shared values, or added to them) is the
section's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bot.config.reading import Where


def split_characters(where: Where, section: str, table: Any) -> tuple[dict[str, Any], Any]:
    """[``section``]'s own keys, and its ``characters`` tables (not yet checked: the shared
    keys are validated first, so their errors come first)."""
    if not isinstance(table, dict):
        where.fail(f"[{section}]", f"must be a table, e.g. [{section}] on its own line")
    own = dict(table)
    return own, own.pop("characters", {})


def character_tables(
    where: Where, section: str, per_character: Any, names: list[str]
) -> Iterator[tuple[str, str, Any]]:
    """(lower-case name, label, table) of each [``section``.characters.NAME], whose NAME
    must be a configured character (``names`` are lower-case)."""
    if not isinstance(per_character, dict):
        where.fail(f"[{section}.characters]", f"must hold tables, e.g. [{section}.characters.Bram]")
    for name, values in per_character.items():
        label = f"{section}.characters.{name}"
        if name.lower() not in names:
            where.fail(f"[{label}]", f"character {name!r} is not configured")
        yield name.lower(), label, values
