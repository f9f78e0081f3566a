"""`charbot characters import FILE`: validate a character card and print the config lines."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from bot.cards import SPECS, card_values, read_card
from bot.config import Config
from bot.errors import CharbotError


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """``characters import FILE`` under ``commands`` (the CLI's subparsers)."""
    characters = commands.add_parser("characters", parents=[common], help="character cards")
    actions = characters.add_subparsers(dest="action", required=True, metavar="ACTION")
    imported = actions.add_parser(
        "import",
        parents=[common],
        help="check a Character Card (V2/V3, JSON or PNG) and print the config lines to add",
    )
    imported.add_argument("file", type=Path, help="the card: .json or .png")


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


async def import_command(config: Config, args: argparse.Namespace) -> int:
    """Print what the card is and the ``[[characters]]`` lines that add it."""
    path: Path = args.file
    line, values = describe(path)
    print(line)
    base = config.path.parent.resolve()
    where = Path(os.path.relpath(path.resolve(), base))
    shown = where if not str(where).startswith("..") else path.resolve()
    if values["name"].lower() in {c.name.lower() for c in config.characters}:
        print(f"note: {config.path} already has a character named {values['name']!r}")
    print(f"\nAdd to {config.path}:\n\n[[characters]]\ncard = {str(shown)!r}".replace("'", '"'))
    return 0
