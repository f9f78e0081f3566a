"""Our own exception types. Vendor exceptions are translated into these at the edges."""

from __future__ import annotations


class CharbotError(Exception):
    """Base class: the message is one line, safe to show a user or print at the CLI."""


class ConfigError(CharbotError):
    """The configuration file is malformed; the message names the file, the field and the fix."""


class UnknownCharacter(CharbotError):
    """A character name that is not configured; the message lists the known ones."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"unknown character {name!r}; known characters: {', '.join(known)}")
