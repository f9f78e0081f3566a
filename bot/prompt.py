"""Building a character's prompt: persona first, then history trimmed to the token budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.characters import Character
from bot.models.base import ChatMessages, ChatModel


def expand_macros(text: str, character: Character, user: str) -> str:
    """Character Card macros: {{char}} is the character, {{user}} the person talking."""
    return text.replace("{{char}}", character.name).replace("{{user}}", user)


def persona_text(character: Character, user: str) -> str:
    """The system prompt: the character's own system prompt, then its persona fields."""
    sections = [
        character.system_prompt
        or "You are {{char}}. Stay in character and reply as {{char}} to {{user}}."
    ]
    for label, value in (
        ("", character.description),
        ("Personality", character.personality),
        ("Scenario", character.scenario),
        ("Example dialogue", character.example_dialogue),
    ):
        if value.strip():
            sections.append(f"{label}: {value.strip()}" if label else value.strip())
    return expand_macros("\n\n".join(sections), character, user)


def history_messages(rows: Sequence[Any], character: Character) -> ChatMessages:
    """Stored rows (oldest first) as chat turns from this character's point of view.

    Another character's replies become user turns prefixed with its name, so the model sees
    them as part of the scene rather than as its own words. Consecutive turns of one role
    are merged: several chat templates insist that roles alternate.
    """
    turns: ChatMessages = []
    for row in rows:
        if row.role == "assistant" and row.character == character.name:
            role, content = "assistant", row.text
        elif row.role == "assistant":
            role, content = "user", f"{row.character}: {row.text}"
        else:
            role, content = "user", row.text
        if turns and turns[-1]["role"] == role:
            turns[-1] = {"role": role, "content": turns[-1]["content"] + "\n" + content}
        else:
            turns.append({"role": role, "content": content})
    return turns


def build_prompt(
    model: ChatModel,
    character: Character,
    rows: Sequence[Any],
    budget: int,
    user_name: str,
) -> ChatMessages:
    """Persona + as much recent history as fits in ``budget`` prompt tokens.

    The newest turn is always kept (trimmed itself if it alone is too long); older turns are
    dropped whole, oldest first. Counting uses the model's own tokenizer and chat template.
    """
    system = [{"role": "system", "content": persona_text(character, user_name)}]
    tail: ChatMessages = []
    if character.post_history_instructions.strip():
        text = expand_macros(character.post_history_instructions, character, user_name)
        tail = [{"role": "system", "content": text}]
    turns = history_messages(rows, character)
    if not turns:
        return system + tail
    newest = turns[-1]
    fixed = model.count_tokens([*system, newest, *tail])
    if fixed > budget:
        overflow = fixed - budget
        own = model.count_tokens([newest])
        keep = max(1, own - overflow - 8)  # 8: the template's own tokens around the turn
        newest = {"role": newest["role"], "content": model.truncate(newest["content"], keep)}
        fixed = model.count_tokens([*system, newest, *tail])
    kept: ChatMessages = [newest]
    used = fixed
    for turn in reversed(turns[:-1]):
        cost = model.count_tokens([turn])  # an upper bound: includes the template's prefix
        if used + cost > budget:
            break
        kept.insert(0, turn)
        used += cost
    prompt = system + kept + tail
    # The per-turn sums are an upper bound; one exact count guards against templates that
    # add tokens between turns. Drop the oldest turns until it fits.
    while len(kept) > 1 and model.count_tokens(prompt) > budget:
        kept.pop(0)
        prompt = system + kept + tail
    return prompt
