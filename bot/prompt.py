"""Building a character's prompt: persona and what it knows, marked example turns, then the
scene's history trimmed to the token budget, then the card's post-history instructions.

Scenes with several speakers are written so that the model keeps its own identity: its own
lines are assistant turns, everyone else's are user turns tagged ``[Name]`` (a bracket, not
``Name:`` — a small model copies a ``Name:`` pattern and starts writing as that speaker),
and the system prompt says who else is present.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.characters import Character
from engine import ChatMessages, ChatModel

EXAMPLES_START = (
    "[Example dialogue: how {{char}} talks. These are examples only, not part of the conversation.]"
)
EXAMPLES_END = "[End of examples. The real conversation with {{user}} starts here.]"
_START = re.compile(r"^\s*<START>\s*$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class PromptMemory:
    """What memory adds to a prompt (bot.memory): the conversation's story so far, what
    the character knows about the people speaking, and old messages recalled — each as
    exactly inserted. ``reserve``: prompt tokens kept free for the recalled lines while the
    history is fitted, so recall never pushes a turn out."""

    summary: str = ""
    about: Sequence[tuple[str, Sequence[str]]] = ()  # (person's name, their notes)
    recalled: Sequence[str] = ()
    reserve: int = 0


@dataclass(frozen=True, slots=True)
class FittedPrompt:
    """A built prompt and where its history starts: ``first_row`` is the index in the rows
    of the oldest one kept (``len(rows)`` when none is)."""

    messages: ChatMessages = field(default_factory=list)
    first_row: int = 0


def memory_sections(memory: PromptMemory) -> tuple[list[str], list[str]]:
    """The system prompt's memory sections: (before the knowledge: the story so far; after
    it: notes about people and recalled messages, which change from turn to turn)."""
    stable = [f"The story so far: {memory.summary.strip()}"] if memory.summary.strip() else []
    changing = [
        f"Things {name} told {{{{char}}}}:\n" + "\n".join(f"- {note.strip()}" for note in notes)
        for name, notes in memory.about
        if notes
    ]
    if memory.recalled:
        changing.append(
            "Earlier in this chat (recalled, oldest first):\n"
            + "\n".join(f"- {line.strip()}" for line in memory.recalled)
        )
    return stable, changing


def expand_macros(text: str, character: Character, user: str) -> str:
    """Character Card macros: {{char}} is the character, {{user}} the person talking."""
    return text.replace("{{char}}", character.name).replace("{{user}}", user)


def speaker_tag(name: str) -> str:
    """How another speaker's line is marked in a user turn."""
    return f"[{name}]"


def persona_text(
    character: Character,
    user: str,
    knowledge: Sequence[str] = (),
    others: Sequence[str] = (),
    memory: PromptMemory | None = None,
) -> str:
    """The system prompt: the character's own system prompt, its persona fields, example
    dialogue that is not written as turns, who else is in the scene, the story so far,
    ``knowledge`` (lorebook entries and retrieved facts), then what the character knows
    about the people speaking and what it recalls — exactly as inserted."""
    sections = [
        character.system_prompt
        or "You are {{char}}. Stay in character and reply as {{char}} to {{user}}."
    ]
    fields = [
        ("", character.description),
        ("Personality", character.personality),
        ("Scenario", character.scenario),
    ]
    if not example_turns(character, user):  # free text that is not Name: lines stays here
        fields.append(("Example dialogue", character.example_dialogue))
    for label, value in fields:
        if value.strip():
            sections.append(f"{label}: {value.strip()}" if label else value.strip())
    if others:
        sections.append(
            f"Also in this scene: {', '.join(others)}. Their lines are marked "
            f"{speaker_tag('Name')}. Write only {{{{char}}}}'s own reply; never write lines "
            "for anyone else."
        )
    stable, changing = memory_sections(memory) if memory is not None else ([], [])
    sections += stable
    if knowledge:
        sections.append("What {{char}} knows:\n" + "\n".join(f"- {k.strip()}" for k in knowledge))
    sections += changing
    return expand_macros("\n\n".join(sections), character, user)


def example_turns(character: Character, user: str) -> ChatMessages:
    """The card's example dialogue (``{{user}}: …`` / ``{{char}}: …`` lines, blocks split by
    ``<START>``) as chat turns between two marker system messages; [] if it has none."""
    text = expand_macros(character.example_dialogue, character, user)
    speakers = {user.lower(): "user", character.name.lower(): "assistant"}
    turns: ChatMessages = []
    for block in _START.split(text):
        for line in block.splitlines():
            name, sep, said = line.partition(":")
            role = speakers.get(name.strip().lower()) if sep else None
            if role is not None:
                turns.append({"role": role, "content": said.strip()})
            elif turns and line.strip():
                turns[-1]["content"] += "\n" + line.strip()
    if not any(t["role"] == "assistant" for t in turns):
        return []
    return [
        {"role": "system", "content": expand_macros(EXAMPLES_START, character, user)},
        *turns,
        {"role": "system", "content": expand_macros(EXAMPLES_END, character, user)},
    ]


def _humans(rows: Sequence[Any]) -> set[str]:
    return {row.author_name for row in rows if row.role == "user"}


def history_messages(rows: Sequence[Any], character: Character) -> ChatMessages:
    """Stored rows (oldest first) as chat turns from this character's point of view.

    Another character's replies become user turns tagged with its name, so the model sees
    them as part of the scene rather than as its own words; with more than one person in
    the chat, each person's lines are tagged too. Consecutive turns of one role are merged:
    several chat templates insist that roles alternate.
    """
    return history_turns(rows, character)[0]


def history_turns(rows: Sequence[Any], character: Character) -> tuple[ChatMessages, list[int]]:
    """:func:`history_messages`, and for each turn the index of its first row."""
    tag_people = len(_humans(rows)) > 1
    turns: ChatMessages = []
    starts: list[int] = []
    for index, row in enumerate(rows):
        if row.role == "assistant" and row.character == character.name:
            role, content = "assistant", row.text
        elif row.role == "assistant":
            role, content = "user", f"{speaker_tag(row.character)} {row.text}"
        elif tag_people:
            role, content = "user", f"{speaker_tag(row.author_name)} {row.text}"
        else:
            role, content = "user", row.text
        if turns and turns[-1]["role"] == role:
            turns[-1] = {"role": role, "content": turns[-1]["content"] + "\n" + content}
        else:
            turns.append({"role": role, "content": content})
            starts.append(index)
    return turns, starts


def scene_members(rows: Sequence[Any], character: Character, user: str) -> list[str]:
    """Everyone in ``rows`` but ``character`` and the lone user: other characters, and the
    people when there are several."""
    others = sorted(
        {row.character for row in rows if row.role == "assistant" and row.character}
        - {character.name}
    )
    people = _humans(rows)
    if len(people) > 1:
        others += sorted(people)
    return others


def build_prompt(
    model: ChatModel,
    character: Character,
    rows: Sequence[Any],
    budget: int,
    user_name: str,
    knowledge: Sequence[str] = (),
    memory: PromptMemory | None = None,
) -> ChatMessages:
    """Persona (with ``knowledge`` and ``memory``) + example turns + as much recent history
    as fits in ``budget`` prompt tokens + post-history instructions.

    The newest turn is always kept (trimmed itself if it alone is too long); older turns are
    dropped whole, oldest first. Counting uses the model's own tokenizer and chat template.
    """
    return fit_prompt(model, character, rows, budget, user_name, knowledge, memory).messages


def fit_prompt(
    model: ChatModel,
    character: Character,
    rows: Sequence[Any],
    budget: int,
    user_name: str,
    knowledge: Sequence[str] = (),
    memory: PromptMemory | None = None,
) -> FittedPrompt:
    """:func:`build_prompt`, and where the history it kept starts. ``memory.reserve``
    tokens of ``budget`` are left unused by the history."""
    others = scene_members(rows, character, user_name)
    persona = persona_text(character, user_name, knowledge, others, memory)
    system = [{"role": "system", "content": persona}, *example_turns(character, user_name)]
    tail: ChatMessages = []
    if character.post_history_instructions.strip():
        text = expand_macros(character.post_history_instructions, character, user_name)
        tail = [{"role": "system", "content": text}]
    turns, starts = history_turns(rows, character)
    if not turns:
        return FittedPrompt(system + tail, len(rows))
    if memory is not None:
        budget -= memory.reserve
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
    return FittedPrompt(prompt, starts[len(turns) - len(kept)])
