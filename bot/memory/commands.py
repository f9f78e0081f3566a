"""``/remember``, ``/memory`` and ``/forget`` on every platform and the console: one
grammar, one place; the answer is plain text that each platform escapes its own way.

- ``/remember TEXT`` — a note about the person who writes it, for the chat's character;
  ``/remember --public TEXT`` shares a note made in a private chat wherever they talk
- ``/memory`` — the notes the character has about them that may be shown here, numbered
- ``/forget N`` / ``/forget all`` — remove note N, or all of them (that may be shown here)

A note made in a private chat is listed and used only there, unless made public; so
``/memory`` in a group never shows what someone said in private.
"""

from __future__ import annotations

from bot.memory import Memory
from bot.memory.notes import PRIVATE, NoteError, Person

REMEMBER, MEMORY, FORGET = "remember", "memory", "forget"
COMMANDS = (REMEMBER, MEMORY, FORGET)
PUBLIC_FLAG = "--public"
HELP = {
    REMEMBER: ("TEXT", "tell the character something to remember about you"),
    MEMORY: ("", "what the character remembers about you"),
    FORGET: ("N|all", "make the character forget a note, or everything about you"),
}
OFF = "Memory is off on this bot ([memory] enabled = false)."


async def memory_command(
    memory: Memory | None, character: str, person: Person, command: str, argument: str
) -> str:
    """Run ``/COMMAND ARGUMENT`` for ``person`` with ``character``; the answer."""
    if memory is None:
        return OFF
    try:
        if command == REMEMBER:
            return await _remember(memory, character, person, argument)
        if command == MEMORY:
            return await _list(memory, character, person)
        if command == FORGET:
            return await _forget(memory, character, person, argument)
    except NoteError as exc:
        return str(exc)
    raise ValueError(f"not a memory command: {command}")


async def _remember(memory: Memory, character: str, person: Person, argument: str) -> str:
    text = argument.strip()
    public = text.startswith(PUBLIC_FLAG)
    if public:
        text = text[len(PUBLIC_FLAG) :].strip()
    note = await memory.notes.remember(character, person, text, public=public)
    number = [n.id for n in await memory.notes.visible(character, person)].index(note.id) + 1
    where = (
        " (only in this private chat; /remember --public TEXT shares a note wherever we talk)"
        if note.scope == PRIVATE
        else ""
    )
    return f"{character} will remember that (note {number}){where}. /memory lists them."


async def _list(memory: Memory, character: str, person: Person) -> str:
    notes = await memory.notes.visible(character, person)
    if not notes:
        return (
            f"{character} doesn't remember anything about you yet. "
            "/remember TEXT tells them something."
        )
    lines = [f"What {character} remembers about {person.name}:"]
    for number, note in enumerate(notes, start=1):
        marker = " (private)" if note.scope == PRIVATE else ""
        lines.append(f"{number}. {note.text}{marker}")
    lines.append("/forget N removes one, /forget all removes them all.")
    return "\n".join(lines)


async def _forget(memory: Memory, character: str, person: Person, argument: str) -> str:
    if not argument.strip():
        return "Write /forget N (a number from /memory) or /forget all."
    removed = await memory.notes.forget(character, person, argument)
    if not removed:
        return f"{character} had nothing to forget about you."
    if len(removed) == 1:
        return f"{character} forgot: {removed[0].text}"
    return f"{character} forgot all {len(removed)} notes about you."
