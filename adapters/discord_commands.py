"""Slash commands, the "Suggest a better reply" message command and its modal.

``/chat``, ``/character``, ``/characters``, ``/reset`` and ``/fix``. In a server,
``/character NAME`` and ``/reset`` change the channel for everyone, so they are admin
commands: users listed in ``[discord] admins``, or, when that list is empty, members who may
manage the channel. In a DM they are the user's own.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from adapters.discord_access import place_of
from adapters.discord_reply import NO_PINGS, Quote, visible_text
from bot.errors import CharbotError
from bot.lora_admin import lora_command
from bot.messages import Inbound

if TYPE_CHECKING:
    from adapters.discord_adapter import DiscordAdapter

log = logging.getLogger(__name__)

PLATFORM = "discord"
NOT_HERE = "I'm not available here."
_MESSAGE_LINK = re.compile(r"(\d{15,21})\s*>?\s*$")  # a message id, or a link ending in one


def register_commands(tree: app_commands.CommandTree, adapter: DiscordAdapter) -> None:
    """Add every command to ``tree``; their callbacks close over ``adapter``."""
    core = adapter.core

    def allowed(interaction: discord.Interaction) -> bool:
        place = place_of(
            interaction.user.id, interaction.guild_id, interaction.channel, interaction.user
        )
        return adapter.access.allows(place)

    def may_administer(interaction: discord.Interaction) -> bool:
        if interaction.guild_id is None:
            return True
        if adapter.settings.admins:
            return adapter.access.is_admin(str(interaction.user.id))
        return interaction.permissions.manage_channels

    async def say(interaction: discord.Interaction, text: str, *, ephemeral: bool = True) -> None:
        await interaction.response.send_message(
            text[:2000], ephemeral=ephemeral, allowed_mentions=NO_PINGS
        )

    async def complete_character(
        _interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        names = [c.name for c in core.characters if current.lower() in c.name.lower()]
        return [app_commands.Choice(name=n, value=n) for n in names[:25]]

    @tree.command(name="chat", description="Say something to a character")
    @app_commands.describe(character="Who answers", message="What you say")
    @app_commands.autocomplete(character=complete_character)
    async def chat(interaction: discord.Interaction, character: str, message: str) -> None:
        """Answer ``message`` as ``character``, in this channel, in front of everyone."""
        if not allowed(interaction):
            await say(interaction, NOT_HERE)
            return
        try:
            name = core.character(character).name
        except CharbotError as exc:
            await say(interaction, str(exc))
            return
        adapter.track()
        # The response shows what was asked (under "X used /chat"); the reply quotes it.
        response = await interaction.response.send_message(
            message[:2000], allowed_mentions=NO_PINGS
        )
        shown = response.resource
        if not isinstance(shown, discord.InteractionMessage):
            shown = await interaction.original_response()
        channel = interaction.channel
        chat_id = str(interaction.channel_id)
        inbound = Inbound(
            platform=PLATFORM,
            chat_id=chat_id,
            message_id=str(shown.id),
            author_id=str(interaction.user.id),
            author_name=interaction.user.display_name,
            text=message,
            thread_id=chat_id if isinstance(channel, discord.Thread) else None,
            addressed=True,
            character=name,
            default_character=adapter.channel_character(channel),
        )
        quote = Quote(
            interaction.user.display_name,
            message,
            shown.jump_url,
            shown.to_reference(fail_if_not_exists=False),
        )
        await adapter.answer(inbound, adapter.target(channel, quote))  # type: ignore[arg-type]

    @tree.command(name="character", description="Show or set who speaks in this channel")
    @app_commands.describe(name="The character to speak here from now on")
    @app_commands.autocomplete(name=complete_character)
    async def character(interaction: discord.Interaction, name: str | None = None) -> None:
        """Without a name, show the current character; with one, make it this chat's."""
        if not allowed(interaction):
            await say(interaction, NOT_HERE)
            return
        chat_id = str(interaction.channel_id)
        default = adapter.channel_character(interaction.channel)
        if name is None:
            current = await core.current_character(PLATFORM, chat_id, default)
            await say(interaction, f"**{current.name}** speaks here.")
            return
        if not may_administer(interaction):
            await say(interaction, "Only an admin can change this channel's character.")
            return
        try:
            chosen = await core.set_character(PLATFORM, chat_id, name)
        except CharbotError as exc:
            await say(interaction, str(exc))
            return
        await say(interaction, f"**{chosen.name}** speaks here now.", ephemeral=False)

    @tree.command(name="characters", description="List the characters")
    async def characters(interaction: discord.Interaction) -> None:
        """List every character, marking the one that speaks in this chat."""
        if not allowed(interaction):
            await say(interaction, NOT_HERE)
            return
        default = adapter.channel_character(interaction.channel)
        current = await core.current_character(PLATFORM, str(interaction.channel_id), default)
        lines = [
            f"{'▶' if c.name == current.name else '•'} **{c.name}**"
            + (f" — {c.description[:100]}" if c.description else "")
            for c in core.characters
        ]
        await say(interaction, "\n".join(lines) or "No characters are configured.")

    @tree.command(name="reset", description="Start a fresh conversation in this chat")
    async def reset(interaction: discord.Interaction) -> None:
        """Older messages no longer enter the prompt; a reply in progress is cancelled."""
        if not allowed(interaction):
            await say(interaction, NOT_HERE)
            return
        if not may_administer(interaction):
            await say(interaction, "Only an admin can reset this channel's conversation.")
            return
        chat_id = str(interaction.channel_id)
        thread_id = chat_id if isinstance(interaction.channel, discord.Thread) else None
        await core.reset(PLATFORM, chat_id, thread_id)
        await say(interaction, "Started a fresh conversation.", ephemeral=False)

    async def complete_version(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        if core.loras is None or not adapter.access.is_admin(str(interaction.user.id)):
            return []
        name = getattr(interaction.namespace, "character", None)
        if not name:
            default = adapter.channel_character(interaction.channel)
            chat_id = str(interaction.channel_id)
            name = (await core.current_character(PLATFORM, chat_id, default)).name
        try:
            ids = [v.id for v in reversed(core.loras.versions(name))]
        except CharbotError:
            ids = []
        options = [i for i in [*ids, "base", "rollback"] if current.lower() in i.lower()]
        return [app_commands.Choice(name=o, value=o) for o in options[:25]]

    @tree.command(name="adapter", description="Bot admins: list or switch LoRA versions")
    @app_commands.describe(
        version="A version (v3), base for none, or rollback; leave empty to list them",
        character="Whose LoRA (default: who speaks in this channel)",
    )
    @app_commands.autocomplete(character=complete_character, version=complete_version)
    async def adapter_(
        interaction: discord.Interaction, version: str | None = None, character: str | None = None
    ) -> None:
        """List a character's LoRA versions, switch to one, or roll back (admins only: the
        switch changes the character everywhere, not only in this channel)."""
        if not allowed(interaction):
            await say(interaction, NOT_HERE)
            return
        user = str(interaction.user.id)
        if not adapter.access.is_admin(user):
            await say(interaction, "Only the bot's admins ([discord] admins) can switch versions.")
            return
        default = adapter.channel_character(interaction.channel)
        current = await core.current_character(PLATFORM, str(interaction.channel_id), default)
        words = (
            ["rollback", character or ""]
            if version == "rollback"
            else [character or "", version or ""]
        )
        text = await lora_command(core, current.name, " ".join(words), f"discord:{user}")
        await say(interaction, text)

    @tree.command(name="fix", description="Suggest a better text for a character's reply")
    @app_commands.describe(
        text="The reply the character should have given",
        message="A link to (or the id of) the reply; by default the latest one here",
    )
    async def fix(interaction: discord.Interaction, text: str, message: str | None = None) -> None:
        """Store ``text`` as a correction of a reply, for the next fine-tune."""
        if not allowed(interaction):
            await say(interaction, NOT_HERE)
            return
        chat_id = str(interaction.channel_id)
        if message is not None:
            match = _MESSAGE_LINK.search(message)
            target_id = match.group(1) if match else None
        else:
            target_id = await latest_reply(interaction.channel, chat_id)
        saved = target_id is not None and await core.correct(
            PLATFORM, chat_id, target_id, str(interaction.user.id), text
        )
        await say(interaction, THANKS if saved else "I couldn't find that character reply here.")

    async def latest_reply(channel: object, chat_id: str) -> str | None:
        me = adapter.client.user
        if me is None or not isinstance(channel, discord.abc.Messageable):
            return None
        async for old in channel.history(limit=50):
            if old.webhook_id is not None or old.author.id == me.id:
                message_id = str(old.id)
                if await core.reply_character(PLATFORM, chat_id, message_id) is not None:
                    return message_id
        return None

    async def suggest(interaction: discord.Interaction, message: discord.Message) -> None:
        """Open a form to write a better version of a character's reply."""
        chat_id = str(message.channel.id)
        if not allowed(interaction):
            await say(interaction, NOT_HERE)
            return
        if await core.reply_character(PLATFORM, chat_id, str(message.id)) is None:
            await say(interaction, "That message is not a character's reply.")
            return
        await interaction.response.send_modal(
            CorrectionModal(adapter, chat_id, str(message.id), visible_text(message.content))
        )

    tree.add_command(app_commands.ContextMenu(name="Suggest a better reply", callback=suggest))

    @tree.error
    async def on_error(
        interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        log.error("discord: command failed: %s", error, exc_info=error)
        if not interaction.response.is_done():
            await say(interaction, "Something went wrong; please try again.")


THANKS = "Thanks — saved as a correction for the next training run."


class CorrectionModal(discord.ui.Modal, title="Suggest a better reply"):
    """A form prefilled with the reply's text; what is submitted becomes a correction."""

    def __init__(self, adapter: DiscordAdapter, chat_id: str, message_id: str, current: str):
        super().__init__()
        self._adapter = adapter
        self._chat_id = chat_id
        self._message_id = message_id
        self.text: discord.ui.TextInput[CorrectionModal] = discord.ui.TextInput(
            label="A better reply",
            style=discord.TextStyle.paragraph,
            default=current[:4000] or None,
            max_length=4000,
        )
        self.add_item(self.text)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        saved = await self._adapter.core.correct(
            PLATFORM, self._chat_id, self._message_id, str(interaction.user.id), self.text.value
        )
        await interaction.response.send_message(
            THANKS if saved else "That reply is no longer stored.", ephemeral=True
        )
