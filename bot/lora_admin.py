"""``/lora`` for bot admins on every platform and the console: list a character's LoRA
versions, switch to one, roll back. One grammar, one place:

- ``/lora`` — the versions of the chat's current character, the one in use marked
- ``/lora [NAME] VERSION`` — switch (``v3``, a full id, or ``base`` for no LoRA)
- ``/lora rollback [NAME]`` — back to the previous choice

``/adapter``, its older name, still works; its answer starts with a line saying the new one.

A switch is persisted (it survives restarts and reaches every bot process on the database);
replies already being written finish on the version they started with. The text returned is
plain; each platform escapes it its own way.
"""

from __future__ import annotations

from bot.errors import CharbotError
from bot.loras import BASE
from engine.errors import EngineError
from storage.errors import StorageError

COMMAND = "lora"
OLD_COMMAND = "adapter"  # the older name, still accepted
RENAMED = f"(/{OLD_COMMAND} is now /{COMMAND}.)"
USAGE = f"/{COMMAND} [NAME] VERSION (or base) to switch, /{COMMAND} rollback [NAME] to go back"


def version_list(core, name: str) -> str:  # type: ignore[no-untyped-def]
    """The versions of ``name``, newest last, the one in use marked ▶."""
    switcher = core.loras
    current = switcher.current(name)
    lines = [f"{name} speaks with {current or BASE}."]
    versions = switcher.versions(name)
    if not versions:
        lines.append("No trained versions yet (charbot train --character " + name + ").")
    for version in versions[-15:]:  # the newest; a chat message is not a database dump
        meta = version.metadata
        loss = meta.get("validation", {}).get("best_loss")
        evaluation = meta.get("evaluation") or {}
        similarity = evaluation.get("heldout_similarity")
        details = [version.created[:10], f"{meta.get('examples', '?')} examples"]
        if isinstance(loss, int | float):
            details.append(f"val loss {loss:.2f}")
        if isinstance(similarity, int | float):
            details.append(f"held-out sim {similarity:.2f}")
        marker = "▶" if version.id == current else "•"
        lines.append(f"{marker} {version.id} — {', '.join(details)}")
    lines.append(USAGE)
    return "\n".join(lines)


async def lora_command(core, current: str, argument: str, chosen_by: str) -> str:  # type: ignore[no-untyped-def]
    """Run ``/lora ARGUMENT`` for an admin; ``current`` is the chat's character."""
    if core.loras is None:
        return "LoRA versions are not served by this bot."
    words = argument.split()
    try:
        if words and words[0].lower() == "rollback":
            name = core.character(" ".join(words[1:])).name if len(words) > 1 else current
            now = await core.loras.rollback(name)
            return f"{name} rolled back; it now speaks with {now or BASE}."
        known = {c.name.lower(): c.name for c in core.characters}
        name = current
        if words and words[0].lower() in known:
            name, words = known[words[0].lower()], words[1:]
        if not words:
            return version_list(core, name)
        if len(words) > 1:
            return f"Unexpected {' '.join(words[1:])!r}. {USAGE}"
        version = await core.loras.use(name, words[0], chosen_by)
        return f"{name} now speaks with {version or BASE}."
    except (CharbotError, EngineError, StorageError) as exc:
        return str(exc)
