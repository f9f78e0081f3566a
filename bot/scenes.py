"""Scenes: several characters in one chat, and who of them speaks next.

A chat's scene is its current character (``/character``) and the characters who joined it
(``/join``, persisted). :func:`next_speakers` decides who answers a person's message under
the chat's policy, :func:`answering_back` who answers a character's line; both are pure, so
the tests and the benchmark run the same rules on fixed seeds.

Policies (``[scenes] policy``):

- **natural** — the present characters the message names, in the order named; else each
  present character rolls against its talkativeness, and at least one answers (the chat's
  current one when no roll succeeds).
- **list** — every present character, in scene order.
- **pooled** — one who has not spoken since the person's last message (any, once all have).
- **manual** — only the characters named or asked for; nobody otherwise.

Whatever the policy, a message asked of one character (``/ask``, a reply to its line) is
answered by that one, and a chat with one character present is answered by it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from bot.cast import Cast
from bot.characters import Character
from storage import scenes as rows
from storage.store import Store

POLICIES = ("natural", "list", "pooled", "manual")
DEFAULT_TALKATIVENESS = 0.5  # SillyTavern's default for a card without one


def talkativeness(character: Character) -> float:
    """The card's ``extensions.talkativeness`` (0–1; SillyTavern writes it as a string),
    else 0.5."""
    raw = character.extensions.get("talkativeness", DEFAULT_TALKATIVENESS)
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return DEFAULT_TALKATIVENESS
    return min(1.0, max(0.0, value))


def named_in(text: str, present: Sequence[Character]) -> list[Character]:
    """The present characters ``text`` names (whole words, any case, with or without @),
    in the order of their first mention."""
    found: list[tuple[int, Character]] = []
    for character in present:
        match = re.search(rf"(?<!\w)@?{re.escape(character.name)}(?!\w)", text, re.IGNORECASE)
        if match:
            found.append((match.start(), character))
    return [c for _, c in sorted(found, key=lambda item: item[0])]


@dataclass(frozen=True, slots=True)
class Turn:
    """What :func:`next_speakers` knows of the message being answered."""

    text: str
    asked: Character | None = None  # /ask NAME, or the character whose line it replies to
    spoke_since: frozenset[str] = frozenset()  # lower-case names heard since the person spoke


def next_speakers(
    policy: str,
    present: Sequence[Character],
    current: Character,
    turn: Turn,
    rng: random.Random,
) -> list[Character]:
    """Who answers a person's message, in order. ``present``: the scene in order (the
    chat's current character first); ``current``: the chat's current character."""
    if turn.asked is not None:
        return [turn.asked]
    if len(present) <= 1:
        return [current]
    named = named_in(turn.text, present)
    if policy == "list":
        return list(present)
    if policy == "manual":
        return named
    if policy == "pooled":
        if named:
            return named[:1]
        fresh = [c for c in present if c.name.lower() not in turn.spoke_since]
        return [rng.choice(fresh or list(present))]
    if named:  # natural
        return named
    rolled = [c for c in present if rng.random() < talkativeness(c)]
    return rolled or [current]


def answering_back(
    policy: str, present: Sequence[Character], speaker: Character, line: str
) -> list[Character]:
    """Who answers ``speaker``'s ``line``: under natural, the other present characters it
    names, in order; under the other policies nobody (every one who should speak to the
    person's message already did, or the people choose)."""
    if policy != "natural":
        return []
    others = [c for c in present if c.name.lower() != speaker.name.lower()]
    return named_in(line, others)


@dataclass(frozen=True, slots=True)
class Scene:
    """Who is in a chat's scene: the chat's current character first, then those who joined,
    with the message each has seen the chat from (0: all of it)."""

    present: tuple[Character, ...]
    since: dict[str, int]  # lower-case name -> the message it joined after

    def seen_from(self, character: Character) -> int:
        return self.since.get(character.name.lower(), 0)


class Scenes:
    """The chats' scenes (persisted) and the policy deciding who speaks in them."""

    def __init__(
        self,
        store: Store,
        cast: Cast,
        policy: str = "natural",
        max_chain: int = 2,
        seed: int | None = None,
        chats: dict[str, str] | None = None,
    ) -> None:
        self.store = store
        self.cast = cast
        self.policy = policy
        self.chats = dict(chats or {})
        self.max_chain = max_chain
        self.rng = random.Random(seed)

    def policy_for(self, platform: str, chat_id: str) -> str:
        """The chat's policy: its own ([scenes.chats]) or the default."""
        return self.chats.get(f"{platform}:{chat_id}", self.policy)

    async def scene(self, platform: str, chat_id: str, current: Character) -> Scene:
        """The chat's scene around its current character; joined characters no longer
        configured are left out."""
        joined = await rows.members(self.store, platform, chat_id)
        present, since = [current], {current.name.lower(): 0}
        for member in joined:
            character = self.cast.first_known(member.character)
            if character.name.lower() != member.character.lower():
                continue  # not configured any more
            if character.name.lower() not in since:
                present.append(character)
                since[character.name.lower()] = member.joined_after
        return Scene(tuple(present), since)

    async def joined_after(self, platform: str, chat_id: str, name: str) -> int:
        """The message ``name`` joined the chat's scene after (0: it was not a joined member,
        so it sees the whole chat, as the chat's own character does)."""
        for member in await rows.members(self.store, platform, chat_id):
            if member.character.lower() == name.lower():
                return member.joined_after
        return 0

    async def join(self, platform: str, chat_id: str, name: str) -> Character:
        """``name`` joins the chat's scene (raises UnknownCharacter)."""
        character = self.cast.get(name)
        await rows.join(self.store, platform, chat_id, character.name)
        return character

    async def leave(self, platform: str, chat_id: str, name: str) -> bool:
        """``name`` leaves the chat's scene; whether it had joined."""
        character = self.cast.get(name)
        return await rows.leave(self.store, platform, chat_id, character.name)
