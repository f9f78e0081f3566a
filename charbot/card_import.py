"""`charbot characters import FILE`: validate a character card or a SillyTavern World Info
file and print the config lines that use it."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from bot.cards import PNG_SIGNATURE, SPECS, card_values, read_card
from bot.config import Config
from bot.errors import CharbotError
from bot.lorebook import is_world_info, read_world_info


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """``characters import FILE`` under ``commands`` (the CLI's subparsers)."""
    characters = commands.add_parser("characters", parents=[common], help="character cards")
    actions = characters.add_subparsers(dest="action", required=True, metavar="ACTION")
    imported = actions.add_parser(
        "import",
        parents=[common],
        help="check a Character Card (V2/V3, JSON or PNG) or a World Info file and print the "
        "config lines to add",
    )
    imported.add_argument("file", type=Path, help="the card (.json or .png) or World Info .json")


def describe(path: Path) -> tuple[str, dict[str, Any]]:
    """One line about a valid card, and its Character values; CharbotError if invalid."""
    try:
        card = read_card(path)
        values = card_values(card, path)
    except ValueError as exc:
        raise CharbotError(str(exc)) from None
    if not values.get("name", "").strip():
        raise CharbotError(f"card file {path}: data.name is empty; a character needs a name")
    kind = SPECS[card["spec"]] + (" (PNG)" if path.suffix.lower() == ".png" else "")
    book = values.get("lorebook")
    entries = len(book.entries) if book is not None else 0
    greetings = len(values["alternate_greetings"])
    line = (
        f"{values['name']}: {kind}, {entries} lorebook entr{'y' if entries == 1 else 'ies'}, "
        f"{greetings} alternate greeting{'' if greetings == 1 else 's'} — valid"
    )
    return line, values


def _looks_like_world_info(path: Path) -> bool:
    """A JSON file with ``entries`` and no card ``spec`` (anything else is read as a card)."""
    try:
        raw = path.read_bytes()
        return not raw.startswith(PNG_SIGNATURE) and is_world_info(json.loads(raw))
    except (OSError, ValueError):
        return False


def describe_world_info(path: Path) -> str:
    """One line about a valid World Info file; CharbotError if invalid."""
    try:
        book = read_world_info(path)
    except ValueError as exc:
        raise CharbotError(str(exc)) from None
    count = len(book.entries)
    constant = sum(1 for e in book.entries if e.constant and e.enabled)
    disabled = sum(1 for e in book.entries if not e.enabled)
    return (
        f"{path.name}: World Info, {count} entr{'y' if count == 1 else 'ies'} "
        f"({constant} constant, {disabled} disabled) — valid"
    )


async def import_command(config: Config, args: argparse.Namespace) -> int:
    """Print what the card (or World Info file) is and the config lines that add it."""
    path: Path = args.file
    base = config.path.parent.resolve()
    where = Path(os.path.relpath(path.resolve(), base))
    shown = str(where if not str(where).startswith("..") else path.resolve())
    if _looks_like_world_info(path):
        print(describe_world_info(path))
        print(
            f"\nAdd to a character's [[characters]] table in {config.path}:\n\n"
            f"lorebooks = {json.dumps([shown])}\n\n"
            f"or, for every character:\n\n[lorebooks]\nglobal = {json.dumps([shown])}"
        )
        return 0
    line, values = describe(path)
    print(line)
    if values["name"].lower() in {c.name.lower() for c in config.characters}:
        print(f"note: {config.path} already has a character named {values['name']!r}")
    print(f"\nAdd to {config.path}:\n\n[[characters]]\ncard = {shown!r}".replace("'", '"'))
    return 0
