"""Swipes on Discord: after 🔁 the new sibling gets ◀ ▶ reactions; pressing one (adding or
taking the reaction back, so it can be pressed again) shows the previous or next sibling in
that same message, edited in place."""

from __future__ import annotations

import logging

import discord

from adapters.discord_reply import NO_PINGS, WebhookPool, name_prefix
from bot.characters import Character
from bot.core import Core
from bot.errors import CharbotError

log = logging.getLogger(__name__)

PLATFORM = "discord"
BACK, ON = "◀️", "▶️"
SWIPES = {"◀": -1, "▶": 1}  # as the adapter sees them, without the variation selector


async def offer_swipes(core: Core, channel: discord.abc.Messageable, message_id: str) -> None:
    """A new sibling was posted as ``message_id``: it is the one shown; add ◀ ▶ under it."""
    chat_id = str(getattr(channel, "id", ""))
    shown = await core.swipes.regenerated(PLATFORM, chat_id, message_id)
    if shown is None or shown.count < 2:
        return
    message = channel.get_partial_message(int(message_id))  # type: ignore[attr-defined]
    try:
        for emoji in (BACK, ON):
            await message.add_reaction(emoji)
    except discord.HTTPException as exc:  # no Add Reactions permission: paging still works
        log.info("discord: could not add swipe reactions in %s: %s", chat_id, exc.text)


async def swipe(
    core: Core,
    webhooks: WebhookPool,
    channel: discord.abc.Messageable,
    message_id: str,
    step: int,
) -> None:
    """Show the sibling ``step`` places on in message ``message_id``."""
    chat_id = str(getattr(channel, "id", ""))
    shown = await core.swipes.page(PLATFORM, chat_id, message_id, step)
    if shown is None:
        return
    try:
        character = core.character(shown.sibling.character)
    except CharbotError:  # removed from the config since
        character = core.default_character
    label = f"-# {shown.index + 1}/{shown.count}\n"
    await edit_shown(channel, webhooks, int(message_id), label, shown.sibling.text, character)


async def edit_shown(
    channel: discord.abc.Messageable,
    webhooks: WebhookPool,
    message_id: int,
    label: str,
    text: str,
    character: Character,
) -> None:
    """Edit a reply message that another target posted: through the channel's webhook when
    the webhook posted it, else as the bot's own message (with the name prefix)."""
    thread = channel if isinstance(channel, discord.Thread) else discord.utils.MISSING
    webhook = await webhooks.get(channel)
    if webhook is not None:
        try:
            await webhook.edit_message(
                message_id, content=label + text, allowed_mentions=NO_PINGS, thread=thread
            )
            return
        except discord.HTTPException:  # not a webhook message: the bot posted it itself
            pass
    partial = channel.get_partial_message(message_id)  # type: ignore[attr-defined]
    await partial.edit(content=label + name_prefix(character) + text, allowed_mentions=NO_PINGS)
