"""The cast: the configured characters by name, and which of them answers a message."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from bot.characters import Character
from bot.errors import UnknownCharacter
from bot.knowledge import with_version_knowledge
from bot.messages import Inbound
from storage.records import StoredInbound


class Cast:
    """Every configured character, looked up by name (case-insensitive), and the default.

    A character's LoRA can change while the bot runs (:meth:`replace`); everything else
    about the cast is fixed at start-up.
    """

    def __init__(self, characters: Sequence[Character], default: str | None = None) -> None:
        if not characters:
            raise ValueError("at least one character is needed")
        self._configured_knowledge = {c.name.lower(): c.knowledge for c in characters}
        self._by_name = {
            c.name.lower(): dataclasses.replace(
                c, knowledge=with_version_knowledge(c.knowledge, c.lora)
            )
            for c in characters
        }
        # By name, not a copy: replace() swaps the Character object.
        self._default_key = self.get(default or characters[0].name).name.lower()
        # A character is named when the message starts with its name ("Mara, ...") or
        # @-mentions it anywhere; merely talking about a character does not summon it.
        # Longest names first, so "Captain Mara" wins over "Mara".
        names = "|".join(sorted((re.escape(c.name) for c in characters), key=len, reverse=True))
        self._name_pattern = re.compile(
            rf"^\s*@?({names})(?!\w)|(?<!\w)@({names})(?!\w)", re.IGNORECASE
        )

    @property
    def characters(self) -> list[Character]:
        return list(self._by_name.values())

    @property
    def default(self) -> Character:
        return self._by_name[self._default_key]

    def get(self, name: str) -> Character:
        """The character called ``name`` (case-insensitive); raises UnknownCharacter."""
        found = self._by_name.get(name.strip().lower())
        if found is None:
            raise UnknownCharacter(name, [c.name for c in self._by_name.values()])
        return found

    def first_known(self, *names: str | None) -> Character:
        """The first of ``names`` that is a configured character, else the default."""
        for name in names:
            if name and name.lower() in self._by_name:
                return self._by_name[name.lower()]
        return self.default

    def with_lora(self, name: str, path: str | None) -> Character:
        """Give character ``name`` the LoRA at ``path`` from now on, and the corrections that
        version learnt as knowledge; the updated character."""
        character = self.get(name)
        knowledge = self._configured_knowledge[character.name.lower()]
        updated = dataclasses.replace(
            character, lora=path, knowledge=with_version_knowledge(knowledge, path)
        )
        self._by_name[updated.name.lower()] = updated
        return updated

    def choose(self, msg: Inbound, stored: StoredInbound) -> Character:
        """Who answers ``msg``: an explicit choice, a name at the start or @-mentioned, the
        character replied to, the chat's current character, the adapter's default for the
        chat, the default. Raises UnknownCharacter for an explicit choice of nobody."""
        if msg.character:
            return self.get(msg.character)
        named = self._name_pattern.search(msg.text)
        if named:
            return self.get(named.group(1) or named.group(2))
        return self.first_known(
            self._replied_to(stored), stored.chat_character, msg.default_character
        )

    def asked(self, msg: Inbound, stored: StoredInbound) -> Character | None:
        """The one character a message is for, whoever else is in the scene: an explicit
        choice (/ask), or the character whose line it replies to."""
        if msg.character:
            return self.get(msg.character)
        replied = self._replied_to(stored)
        return self._by_name.get(replied.lower()) if replied else None

    def current(self, msg: Inbound, stored: StoredInbound) -> Character:
        """The chat's current character (its choice, the adapter's default, the default)."""
        return self.first_known(stored.chat_character, msg.default_character)

    @staticmethod
    def _replied_to(stored: StoredInbound) -> str | None:
        replied = stored.replied
        return replied.character if replied is not None and replied.role == "assistant" else None


def default_rule(default: str, chosen: dict[str, int]) -> str | None:
    """The line that says, at start, that chats keep their own choice over
    ``default_character`` (it answers only chats that never chose), or None when every chat
    that chose, chose the default."""
    others = {name: n for name, n in chosen.items() if name.lower() != default.lower()}
    if not others:
        return None
    total = sum(others.values())
    each = ", ".join(f"{name} in {n}" for name, n in sorted(others.items(), key=lambda i: -i[1]))
    chats = "1 chat keeps" if total == 1 else f"{total} chats keep"
    return (
        f"default_character is {default}, for chats that never chose; {chats} the "
        f"character chosen there with /character ({each}): /character {default} there "
        "switches back"
    )
