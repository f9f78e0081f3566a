"""Canaries in a running bot: which people meet a character's candidate version.

A person meets the candidate when a stable hash of (platform, user id, character) falls
below the canary's share. The hash is SHA-256, not Python's ``hash()`` (salted per process),
so every process and every restart puts a person on the same side; and since the same
number is compared with the share, raising the share only adds people — nobody already
meeting the candidate is moved back.

The candidate is loaded under a LoRA slot of its own (``<name>#canary``) beside the
character's current one: the local engine batches rows of both in one forward pass (each
row with its own LoRA), an OpenAI-compatible server routes each request to the served name
of its slot. Replies record the version that wrote them, as always.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bot.characters import Character
from engine import LoraSpec

SLOT_SUFFIX = "#canary"


def canary_slot(character: str) -> str:
    """The LoRA slot a character's candidate is loaded under."""
    return f"{character}{SLOT_SUFFIX}"


def bucket(platform: str, user_id: str, character: str) -> float:
    """A person's fixed place in [0, 1) for ``character``: the same in every process."""
    key = "\x1f".join((platform, str(user_id), character.lower())).encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0**64


def meets_candidate(platform: str, user_id: str, character: str, share: float) -> bool:
    """Whether this person talks to the candidate of a canary with ``share``."""
    return bool(user_id) and bucket(platform, user_id, character) < share


@dataclass(frozen=True, slots=True)
class CanaryRoute:
    """A live canary as the bot applies it: ``share`` of people meet ``version``."""

    character: str
    version: str
    path: str
    share: float
    canary_id: int

    @property
    def slot(self) -> str:
        return canary_slot(self.character)


class Canaries:
    """The live canary routes of a running core, by lower-case character name."""

    def __init__(self) -> None:
        self._routes: dict[str, CanaryRoute] = {}

    def get(self, character: str) -> CanaryRoute | None:
        return self._routes.get(character.lower())

    def set(self, route: CanaryRoute) -> None:
        self._routes[route.character.lower()] = route

    def drop(self, character: str) -> CanaryRoute | None:
        return self._routes.pop(character.lower(), None)

    def routes(self) -> list[CanaryRoute]:
        return list(self._routes.values())

    def lora_for(
        self, character: Character, platform: str, user_id: str
    ) -> tuple[LoraSpec | None, str]:
        """(the LoRA to generate with, its slot name) for a reply to this person."""
        route = self._routes.get(character.name.lower())
        if route is not None and meets_candidate(platform, user_id, character.name, route.share):
            return LoraSpec(route.slot, route.path), route.slot
        lora = LoraSpec(character.name, character.lora) if character.lora else None
        return lora, character.name
