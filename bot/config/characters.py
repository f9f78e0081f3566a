"""[[characters]]: each character from its table, its card file, or both (the table's keys
win), with its World Info files and ``[lorebooks] global`` merged into its lorebook; and
``default_character``, which must name one of them."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from bot.characters import Character, load_card
from bot.config.reading import Where, coerce, reject_unknown, resolve
from bot.lorebook import Lorebook, merge, read_world_info

# The name bot/config.py logged under before it was a package; warnings keep saying it.
log = logging.getLogger("bot.config")
_FIELDS = {f.name: f for f in dataclasses.fields(Character)}
_CHARACTER_KEYS = set(_FIELDS) - {"extensions", "lorebook"}
_CHARACTER_KEYS |= {"card", "adapter"}  # adapter: the older name of lora


WorldInfo = tuple[tuple[str, Lorebook], ...]  # (resolved path, its book) per file


def read_global_lorebooks(where: Where, table: Any, base: Path) -> WorldInfo:
    """``[lorebooks] global = ["file.json", ...]``: World Info files every character reads."""
    if not isinstance(table, dict):
        where.fail("[lorebooks]", 'must be a table: [lorebooks] then global = ["world.json"]')
    reject_unknown(where, "lorebooks", table, {"global"})
    names = coerce(where, "[lorebooks] global", table.get("global", []), "tuple[str, ...]")
    return _world_info(where, "[lorebooks] global", base, names)


def _world_info(where: Where, label: str, base: Path, names: tuple[str, ...]) -> WorldInfo:
    books = []
    for name in names:
        path = resolve(base, Path(name))
        try:
            books.append((str(path), read_world_info(path)))
        except ValueError as exc:
            where.fail(label, str(exc))
    return tuple(books)


def read_characters(
    where: Where, entries: Any, base: Path, global_books: WorldInfo = ()
) -> list[Character]:
    """Every [[characters]] table as a Character; ``base`` is the config file's folder,
    ``global_books`` the World Info files of ``[lorebooks] global``."""
    if not entries:
        where.fail("[[characters]]", "at least one character is needed; add a [[characters]] table")
    if not isinstance(entries, list):
        where.fail("characters", "must be an array of tables: write [[characters]]")
    characters: list[Character] = []
    for index, entry in enumerate(entries, start=1):
        label = f"[[characters]] #{index}"
        values = _values(where, index, label, entry, base)
        name = values["name"]
        if name.lower() in {c.name.lower() for c in characters}:
            where.fail(f"{label} name", f"{name!r} is used twice; names must be unique")
        values = _with_files(where, label, base, values, global_books)
        characters.append(Character(**values))
    return characters


def _values(where: Where, index: int, label: str, entry: Any, base: Path) -> dict[str, Any]:
    """One [[characters]] table's fields: its card's, then its own keys over them."""
    if not isinstance(entry, dict):
        # characters = ["Mara"] or [1, 2]: a list of names is not how characters are made.
        where.fail(
            "characters",
            f"entry #{index} is {entry!r}, not a table; each character is its own "
            '[[characters]] table with name = "..." (see the example config.toml)',
        )
    reject_unknown(where, f"characters #{index}", entry, _CHARACTER_KEYS)
    entry = _older_lora_keys(where, label, entry)
    values: dict[str, Any] = {}
    if "card" in entry:
        card_path = resolve(base, Path(str(entry["card"])))
        try:
            values = load_card(card_path)
        except ValueError as exc:
            where.fail(f"{label} card", str(exc))
    for key, value in entry.items():
        if key == "card":
            continue
        values[key] = coerce(where, f"{label} {key}", value, str(_FIELDS[key].type))
    name = values.get("name")
    if not isinstance(name, str) or not name.strip():
        where.fail(f"{label} name", "every character needs a name (or a card with one)")
    return values


def _with_files(
    where: Where, label: str, base: Path, values: dict[str, Any], global_books: WorldInfo
) -> dict[str, Any]:
    """The LoRA directory, knowledge and World Info files relative to ``base``, the files
    read; the card's lorebook merged with the character's World Info, then the global."""
    if values.get("lora"):
        values["lora"] = str(resolve(base, Path(values["lora"])))
    if values.get("knowledge"):
        values["knowledge"] = _knowledge_files(where, label, base, values["knowledge"])
    own = _world_info(where, f"{label} lorebooks", base, values.get("lorebooks", ()))
    books = own + global_books
    values["lorebooks"] = tuple(path for path, _ in books)
    values["lorebook"] = merge([values.get("lorebook"), *(book for _, book in books)])
    return values


def _knowledge_files(
    where: Where, label: str, base: Path, names: tuple[str, ...]
) -> tuple[str, ...]:
    """Resolve and read each knowledge file once, so a bad line stops the start-up."""
    from bot.knowledge import KnowledgeFileError, check_file  # numpy: only when it is needed

    paths = tuple(str(resolve(base, Path(name))) for name in names)
    for path in paths:
        try:
            check_file(Path(path))
        except KnowledgeFileError as exc:
            where.fail(f"{label} knowledge", str(exc))
    return paths


def _older_lora_keys(where: Where, label: str, entry: dict[str, Any]) -> dict[str, Any]:
    """A character's LoRA directory was ``adapter`` and its llama-server id ``lora = N``;
    both still work, each with one line naming today's key."""
    entry = dict(entry)
    if isinstance(entry.get("lora"), int) and not isinstance(entry["lora"], bool):
        log.warning(
            "%s: %s lora = %d: a llama-server adapter id is now lora_id = %d "
            "(lora is the LoRA directory)",
            where.path,
            label,
            entry["lora"],
            entry["lora"],
        )
        entry["lora_id"] = entry.pop("lora")
    if "adapter" in entry:
        if "lora" in entry:
            where.fail(f"{label} adapter", "is the older name of lora; keep only lora")
        log.warning("%s: %s adapter = ...: the key is now lora", where.path, label)
        entry["lora"] = entry.pop("adapter")
    return entry


def default_character(where: Where, raw: dict[str, Any], characters: list[Character]) -> str:
    """``default_character`` as written, else the first character; it must be configured."""
    default = raw.get("default_character", characters[0].name)
    if not isinstance(default, str) or default.lower() not in {c.name.lower() for c in characters}:
        where.fail(
            "default_character",
            f"{default!r} is not a configured character; use one of "
            + ", ".join(c.name for c in characters),
        )
    return default
