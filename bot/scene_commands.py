"""/join, /leave and /scene: one answer for every platform (plain text; each adapter escapes
it its own way and decides who may change a scene, as it does for /character)."""

from __future__ import annotations

from collections.abc import Sequence

from bot.characters import Character
from bot.errors import CharbotError

JOIN, LEAVE, SCENE = "join", "leave", "scene"
SCENE_HELP = {
    JOIN: ("NAME", "a character joins this chat's scene and sees it from now on"),
    LEAVE: ("NAME", "a character leaves this chat's scene"),
    SCENE: ("", "who is in this chat's scene"),
}


async def scene_command(  # type: ignore[no-untyped-def]
    core,
    platform: str,
    chat_id: str,
    command: str,
    name: str,
    default: str | None = None,
) -> str:
    """What ``/COMMAND NAME`` answers in one chat; ``default``: the adapter's character for
    the chat when none was chosen (a channel's configured one)."""
    scene = await core.scene(platform, chat_id, default)
    current = scene.present[0]
    if command == SCENE:
        return describe(scene.present, core.scenes.policy_for(platform, chat_id))
    if not name:
        return f"Write /{command} NAME; /characters lists them."
    try:
        character = core.character(name)
    except CharbotError as exc:
        return str(exc)
    if command == JOIN:
        if any(c.name == character.name for c in scene.present):
            return f"{character.name} is already in this scene."
        await core.join(platform, chat_id, character.name)
        return f"{character.name} joins the scene; it sees what is said from now on."
    if character.name == current.name:
        return f"{character.name} speaks here; /character NAME gives this chat another one."
    if await core.leave(platform, chat_id, character.name):
        return f"{character.name} leaves the scene."
    return f"{character.name} is not in this scene."


def describe(present: Sequence[Character], policy: str) -> str:
    """The scene in one line: who is there (the chat's own character first) and the policy."""
    names = [c.name for c in present]
    if len(names) == 1:
        return f"{names[0]} speaks here alone; /join NAME brings another character in."
    others = ", ".join(names[1:])
    return f"In this scene: {names[0]} (speaks here), {others}. Who answers: {policy}."
