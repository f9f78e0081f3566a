"""Characters: personas the bot speaks as, from config.toml or Character Card files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.cards import card_values, read_card
from bot.lorebook import Lorebook


@dataclass(frozen=True, slots=True)
class Character:
    """One persona. ``lora`` is its LoRA directory on the shared base model, or None."""

    name: str
    description: str = ""
    personality: str = ""
    scenario: str = ""
    greeting: str = ""
    example_dialogue: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""
    alternate_greetings: tuple[str, ...] = ()
    avatar_url: str | None = None
    lora: str | None = None
    # backend = "openai": the served model name to ask for (a vLLM LoRA module, e.g. "bram"),
    # or the llama-server adapter id (its place in --lora-scaled) applied per request.
    model: str | None = None
    lora_id: int | None = None
    # Generation overrides; None means "use [model]".
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    extensions: dict[str, object] = field(default_factory=dict, compare=False, hash=False)
    # Knowledge files (paths resolved by the config loader), the World Info files it reads
    # (its own, then [lorebooks] global), and its lorebook: the card's entries and theirs.
    knowledge: tuple[str, ...] = ()
    lorebooks: tuple[str, ...] = ()
    lorebook: Lorebook | None = field(default=None, compare=False, hash=False)


def load_card(path: Path) -> dict[str, Any]:
    """Read a Character Card (V2 or V3; JSON or PNG) into Character keyword arguments.

    Raises ValueError with a one-line reason (the config loader adds file and field).
    """
    return card_values(read_card(path), path)
