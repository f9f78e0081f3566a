"""Characters: personas the bot speaks as, from config.toml or Character Card V2 files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Character:
    """One persona. ``adapter`` is a LoRA directory on the shared base model, or None."""

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
    adapter: str | None = None
    # Generation overrides; None means "use [model]".
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    extensions: dict[str, object] = field(default_factory=dict, compare=False, hash=False)


# Character Card V2 field -> our field. creator_notes is for people browsing cards and never
# enters a prompt, so it is deliberately absent.
_CARD_FIELDS = {
    "name": "name",
    "description": "description",
    "personality": "personality",
    "scenario": "scenario",
    "first_mes": "greeting",
    "mes_example": "example_dialogue",
    "system_prompt": "system_prompt",
    "post_history_instructions": "post_history_instructions",
}


def load_card(path: Path) -> dict[str, Any]:
    """Read a Character Card V2 JSON file into Character keyword arguments.

    Raises ValueError with a one-line reason (the config loader adds file and field).
    """
    if not path.is_file():
        raise ValueError(f"card file {path} does not exist; fix the path (relative to config)")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"card file {path} is not valid JSON ({exc})") from None
    if not isinstance(card, dict) or card.get("spec") != "chara_card_v2":
        raise ValueError(f'card file {path} is not a Character Card V2 (spec: "chara_card_v2")')
    data = card.get("data")
    if not isinstance(data, dict):
        raise ValueError(f"card file {path} has no data object")
    values: dict[str, Any] = {}
    for card_key, ours in _CARD_FIELDS.items():
        value = data.get(card_key, "")
        if not isinstance(value, str):
            raise ValueError(f"card file {path}: data.{card_key} must be a string")
        values[ours] = value
    greetings = data.get("alternate_greetings", [])
    if not isinstance(greetings, list) or not all(isinstance(g, str) for g in greetings):
        raise ValueError(f"card file {path}: data.alternate_greetings must be a list of strings")
    values["alternate_greetings"] = tuple(greetings)
    extensions = data.get("extensions", {})
    values["extensions"] = extensions if isinstance(extensions, dict) else {}
    return values
