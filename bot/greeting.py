"""The greeting opens a conversation: shown by the adapter, stored as an assistant message,
so the model's history starts where the person's did."""

from __future__ import annotations

from bot.characters import Character
from bot.prompt import expand_macros
from bot.reply import ReplyTarget
from storage.greetings import add_greeting
from storage.store import Store


def greeting_text(character: Character, user: str) -> str:
    """The card's greeting (``first_mes``) with macros expanded, or a plain hello."""
    text = character.greeting.strip() or f"Hi, I'm {character.name}."
    return expand_macros(text, character, user)


async def show_greeting(
    store: Store,
    key: tuple[str, str, str],
    character: Character,
    user: str,
    target: ReplyTarget,
) -> int:
    """Send ``character``'s greeting through ``target`` and store it as the next message
    of the chat's conversation (platform, chat, thread in ``key``); return its row id."""
    text = greeting_text(character, user)
    message_id = await target.send(text, character=character)
    platform, chat_id, thread_id = key
    stored = await add_greeting(
        store,
        platform=platform,
        chat_id=chat_id,
        thread_id=thread_id,
        character=character.name,
        text=text,
        platform_message_id=message_id,
    )
    return stored.id
