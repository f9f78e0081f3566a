"""Slash commands, the "Suggest a better reply" message command and its modal, as one Cog.

``/chat``, ``/character``, ``/characters``, ``/join``, ``/leave``, ``/scene``, ``/reset``,
``/remember``, ``/memory``, ``/forget``, ``/fix``, ``/quota`` and ``/lora`` (``/adapter`` is its
older name, still registered). In a server, ``/character NAME``, ``/join NAME``,
``/leave NAME`` and ``/reset`` change the channel for everyone, so they are admin
commands: users listed in ``[discord] admins``, or, when that list is empty, members who may
manage the channel. In a DM they are the user's own. ``/lora`` is for the bot's admins only:
a switch changes the character everywhere. ``/remember``, ``/memory`` and ``/forget`` are each
person's own notes (bot.memory.commands), answered so that only they see them; a note made in
a DM stays in that DM unless made public. ``/quota`` tells the user, and only them, where
they stand with their limits (bot.limits).

The Cog sees the adapter only through :class:`DiscordEdge`, so this module does not import
the adapter that loads it.
"""

from __future__ import annotations

import logging
import re
from typing import Protocol

import discord
from discord import app_commands
from discord.ext import commands

from adapters.discord_access import AccessPolicy, place_of
from adapters.discord_reply import NO_PINGS, DiscordReplyTarget, Quote, visible_text
from bot.config import DiscordSettings
from bot.core import Core
from bot.errors import CharbotError
from bot.limits import quota_command
from bot.lora_admin import COMMAND, OLD_COMMAND, RENAMED, lora_command
from bot.memory.commands import FORGET, HELP, MEMORY, PUBLIC_FLAG, REMEMBER, memory_command
from bot.memory.notes import Person
from bot.messages import Inbound
from bot.scene_commands import JOIN, LEAVE, SCENE, SCENE_HELP, scene_command

log = logging.getLogger(__name__)

PLATFORM = "discord"
NOT_HERE = "I'm not available here."
THANKS = "Thanks — saved as a correction for the next training run."
SUGGEST = "Suggest a better reply"
_MESSAGE_LINK = re.compile(r"(\d{15,21})\s*>?\s*$")  # a message id, or a link ending in one
# /lora and its older name /adapter take the same options.
_LORA_OPTIONS = {
    "version": "A version (v3), base for none, or rollback; leave empty to list them",
    "character": "Whose LoRA (default: who speaks in this channel)",
}


class DiscordEdge(Protocol):
    """What the commands use of the Discord adapter (``DiscordAdapter`` is one)."""

    core: Core
    settings: DiscordSettings
    access: AccessPolicy

    def track(self) -> None: ...

    def channel_character(self, channel: object) -> str | None: ...

    def target(
        self, channel: discord.abc.Messageable, quote: Quote | None
    ) -> DiscordReplyTarget: ...

    async def answer(self, inbound: Inbound, target: DiscordReplyTarget) -> None: ...


async def say(interaction: discord.Interaction, text: str, *, ephemeral: bool = True) -> None:
    """Answer an interaction with plain text that pings no one (only the user sees it unless
    ``ephemeral`` is False)."""
    await interaction.response.send_message(
        text[:2000], ephemeral=ephemeral, allowed_mentions=NO_PINGS
    )


class DiscordCommands(commands.Cog):
    """Every application command of the bot. Each command first checks the allow-lists
    (:meth:`allowed`); admin commands then check :meth:`may_administer` or the bot's admins.

    The message command and the error handler belong to the tree rather than to a Cog
    (discord.py allows no context menu inside a class), so ``cog_load`` adds them and
    ``cog_unload`` takes them back.
    """

    def __init__(self, bot: commands.Bot, adapter: DiscordEdge) -> None:
        self.bot = bot
        self.adapter = adapter
        self.core = adapter.core
        self._suggest = app_commands.ContextMenu(name=SUGGEST, callback=self.suggest)
        self._tree_error = bot.tree.on_error

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self._suggest)
        self.bot.tree.error(self.on_error)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self._suggest.name, type=self._suggest.type)
        self.bot.tree.on_error = self._tree_error  # type: ignore[method-assign]

    # -- shared checks and completions ---------------------------------------------------

    def allowed(self, interaction: discord.Interaction) -> bool:
        """Whether the allow-lists let the bot act where and for whom ``interaction`` came."""
        place = place_of(
            interaction.user.id, interaction.guild_id, interaction.channel, interaction.user
        )
        return self.adapter.access.allows(place)

    def may_administer(self, interaction: discord.Interaction) -> bool:
        """Whether the user may change this channel for everyone (always, in a DM)."""
        if interaction.guild_id is None:
            return True
        if self.adapter.settings.admins:
            return self.adapter.access.is_admin(str(interaction.user.id))
        return interaction.permissions.manage_channels

    async def current_name(self, interaction: discord.Interaction) -> str:
        """The name of the character who speaks in the interaction's channel."""
        default = self.adapter.channel_character(interaction.channel)
        chat_id = str(interaction.channel_id)
        return (await self.core.current_character(PLATFORM, chat_id, default)).name

    async def complete_character(
        self, _interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        names = [c.name for c in self.core.characters if current.lower() in c.name.lower()]
        return [app_commands.Choice(name=n, value=n) for n in names[:25]]

    async def complete_version(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        loras = self.core.loras
        if loras is None or not self.adapter.access.is_admin(str(interaction.user.id)):
            return []
        name = getattr(interaction.namespace, "character", None)
        if not name:
            name = await self.current_name(interaction)
        try:
            ids = [v.id for v in reversed(loras.versions(name))]
        except CharbotError:
            ids = []
        options = [i for i in [*ids, "base", "rollback"] if current.lower() in i.lower()]
        return [app_commands.Choice(name=o, value=o) for o in options[:25]]

    # -- talking -------------------------------------------------------------------------

    @app_commands.command(name="chat", description="Say something to a character")
    @app_commands.describe(character="Who answers", message="What you say")
    @app_commands.autocomplete(character=complete_character)
    async def chat(self, interaction: discord.Interaction, character: str, message: str) -> None:
        """Answer ``message`` as ``character``, in this channel, in front of everyone."""
        if not self.allowed(interaction):
            await say(interaction, NOT_HERE)
            return
        try:
            name = self.core.character(character).name
        except CharbotError as exc:
            await say(interaction, str(exc))
            return
        self.adapter.track()
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
            private=interaction.guild_id is None,
            exempt=self.adapter.access.is_admin(str(interaction.user.id)),
            character=name,
            default_character=self.adapter.channel_character(channel),
        )
        quote = Quote(
            interaction.user.display_name,
            message,
            shown.jump_url,
            shown.to_reference(fail_if_not_exists=False),
        )
        await self.adapter.answer(inbound, self.adapter.target(channel, quote))  # type: ignore[arg-type]

    # -- who speaks here -----------------------------------------------------------------

    @app_commands.command(name="character", description="Show or set who speaks in this channel")
    @app_commands.describe(name="The character to speak here from now on")
    @app_commands.autocomplete(name=complete_character)
    async def character(self, interaction: discord.Interaction, name: str | None = None) -> None:
        """Without a name, show the current character; with one, make it this chat's."""
        if not self.allowed(interaction):
            await say(interaction, NOT_HERE)
            return
        if name is None:
            await say(interaction, f"**{await self.current_name(interaction)}** speaks here.")
            return
        if not self.may_administer(interaction):
            await say(interaction, "Only an admin can change this channel's character.")
            return
        try:
            chosen = await self.core.set_character(PLATFORM, str(interaction.channel_id), name)
        except CharbotError as exc:
            await say(interaction, str(exc))
            return
        await say(interaction, f"**{chosen.name}** speaks here now.", ephemeral=False)

    @app_commands.command(name=JOIN, description=SCENE_HELP[JOIN][1][:100])
    @app_commands.describe(name="The character who joins")
    @app_commands.autocomplete(name=complete_character)
    async def join(self, interaction: discord.Interaction, name: str) -> None:
        """A character joins this channel's scene (admins, in a server)."""
        await self.scene_answer(interaction, JOIN, name)

    @app_commands.command(name=LEAVE, description=SCENE_HELP[LEAVE][1][:100])
    @app_commands.describe(name="The character who leaves")
    @app_commands.autocomplete(name=complete_character)
    async def leave(self, interaction: discord.Interaction, name: str) -> None:
        """A character leaves this channel's scene (admins, in a server)."""
        await self.scene_answer(interaction, LEAVE, name)

    @app_commands.command(name=SCENE, description=SCENE_HELP[SCENE][1][:100])
    async def scene(self, interaction: discord.Interaction) -> None:
        """Who is in this channel's scene."""
        await self.scene_answer(interaction, SCENE, "")

    async def scene_answer(self, interaction: discord.Interaction, command: str, name: str) -> None:
        """/join, /leave and /scene: everyone in the channel sees a change to its scene."""
        if not self.allowed(interaction):
            await say(interaction, NOT_HERE)
            return
        if command != SCENE and not self.may_administer(interaction):
            await say(interaction, "Only an admin can change this channel's scene.")
            return
        default = self.adapter.channel_character(interaction.channel)
        chat_id = str(interaction.channel_id)
        answer = await scene_command(self.core, PLATFORM, chat_id, command, name, default)
        await say(interaction, answer, ephemeral=command == SCENE)

    @app_commands.command(name="characters", description="List the characters")
    async def characters(self, interaction: discord.Interaction) -> None:
        """List every character, marking the one that speaks in this chat."""
        if not self.allowed(interaction):
            await say(interaction, NOT_HERE)
            return
        current = await self.current_name(interaction)
        lines = [
            f"{'▶' if c.name == current else '•'} **{c.name}**"
            + (f" — {c.description[:100]}" if c.description else "")
            for c in self.core.characters
        ]
        await say(interaction, "\n".join(lines) or "No characters are configured.")

    @app_commands.command(name="reset", description="Start a fresh conversation in this chat")
    async def reset(self, interaction: discord.Interaction) -> None:
        """Older messages no longer enter the prompt; a reply in progress is cancelled."""
        if not self.allowed(interaction):
            await say(interaction, NOT_HERE)
            return
        if not self.may_administer(interaction):
            await say(interaction, "Only an admin can reset this channel's conversation.")
            return
        chat_id = str(interaction.channel_id)
        thread_id = chat_id if isinstance(interaction.channel, discord.Thread) else None
        await self.core.reset(PLATFORM, chat_id, thread_id)
        await say(interaction, "Started a fresh conversation.", ephemeral=False)

    # -- what the character remembers about you -----------------------------------------

    @app_commands.command(name=REMEMBER, description=HELP[REMEMBER][1].capitalize())
    @app_commands.describe(
        text="What the character should know about you",
        public="Made in a DM: use it in every chat, not only this DM",
    )
    async def remember(
        self, interaction: discord.Interaction, text: str, public: bool = False
    ) -> None:
        argument = f"{PUBLIC_FLAG} {text}" if public else text
        await say(interaction, await self.memory_answer(interaction, REMEMBER, argument))

    @app_commands.command(name=MEMORY, description=HELP[MEMORY][1].capitalize())
    async def memory(self, interaction: discord.Interaction) -> None:
        await say(interaction, await self.memory_answer(interaction, MEMORY, ""))

    @app_commands.command(name=FORGET, description=HELP[FORGET][1].capitalize())
    @app_commands.describe(which="A note's number from /memory, or all")
    async def forget(self, interaction: discord.Interaction, which: str) -> None:
        await say(interaction, await self.memory_answer(interaction, FORGET, which))

    async def memory_answer(
        self, interaction: discord.Interaction, command: str, argument: str
    ) -> str:
        """What ``/COMMAND ARGUMENT`` answers the user, with this channel's character."""
        if not self.allowed(interaction):
            return NOT_HERE
        user = interaction.user
        person = Person(
            PLATFORM,
            str(user.id),
            user.display_name,
            str(interaction.channel_id),
            private=interaction.guild_id is None,
        )
        current = await self.current_name(interaction)
        return await memory_command(self.core.memory, current, person, command, argument)

    # -- limits --------------------------------------------------------------------------

    @app_commands.command(name="quota", description="Where you stand with your limits here")
    async def quota(self, interaction: discord.Interaction) -> None:
        """Answered messages this minute and reply tokens today, against the limits."""
        if not self.allowed(interaction):
            await say(interaction, NOT_HERE)
            return
        user = str(interaction.user.id)
        answer = await quota_command(
            self.core,
            PLATFORM,
            str(interaction.channel_id),
            user,
            private=interaction.guild_id is None,
            exempt=self.adapter.access.is_admin(user),
            character=await self.current_name(interaction),
        )
        await say(interaction, answer)

    # -- LoRA versions -------------------------------------------------------------------

    @app_commands.command(name=COMMAND, description="Bot admins: list or switch LoRA versions")
    @app_commands.describe(**_LORA_OPTIONS)
    @app_commands.autocomplete(character=complete_character, version=complete_version)
    async def lora(
        self,
        interaction: discord.Interaction,
        version: str | None = None,
        character: str | None = None,
    ) -> None:
        """List a character's LoRA versions, switch to one, or roll back (admins only: the
        switch changes the character everywhere, not only in this channel)."""
        await say(interaction, await self.lora_answer(interaction, version, character))

    @app_commands.command(
        name=OLD_COMMAND, description=f"The older name of /{COMMAND}: list or switch LoRA versions"
    )
    @app_commands.describe(**_LORA_OPTIONS)
    @app_commands.autocomplete(character=complete_character, version=complete_version)
    async def lora_by_old_name(
        self,
        interaction: discord.Interaction,
        version: str | None = None,
        character: str | None = None,
    ) -> None:
        """``/adapter``, the deprecated name of ``/lora``: the same answer, after a line that
        gives the new name."""
        answer = await self.lora_answer(interaction, version, character)
        await say(interaction, f"{RENAMED}\n{answer}")

    async def lora_answer(
        self, interaction: discord.Interaction, version: str | None, character: str | None
    ) -> str:
        """What ``/lora version character`` answers: a refusal, the list, or the switch."""
        if not self.allowed(interaction):
            return NOT_HERE
        user = str(interaction.user.id)
        if not self.adapter.access.is_admin(user):
            return "Only the bot's admins ([discord] admins) can switch versions."
        words = (
            ["rollback", character or ""]
            if version == "rollback"
            else [character or "", version or ""]
        )
        current = await self.current_name(interaction)
        return await lora_command(self.core, current, " ".join(words), f"discord:{user}")

    # -- corrections ---------------------------------------------------------------------

    @app_commands.command(name="fix", description="Suggest a better text for a character's reply")
    @app_commands.describe(
        text="The reply the character should have given",
        message="A link to (or the id of) the reply; by default the latest one here",
    )
    async def fix(
        self, interaction: discord.Interaction, text: str, message: str | None = None
    ) -> None:
        """Store ``text`` as a correction of a reply, for the next fine-tune."""
        if not self.allowed(interaction):
            await say(interaction, NOT_HERE)
            return
        chat_id = str(interaction.channel_id)
        if message is not None:
            match = _MESSAGE_LINK.search(message)
            target_id = match.group(1) if match else None
        else:
            target_id = await self.latest_reply(interaction, chat_id)
        saved = target_id is not None and await self.core.correct(
            PLATFORM, chat_id, target_id, str(interaction.user.id), text
        )
        await say(interaction, THANKS if saved else "I couldn't find that character reply here.")

    async def latest_reply(self, interaction: discord.Interaction, chat_id: str) -> str | None:
        """The id of the newest character reply among the channel's last 50 messages."""
        me, channel = interaction.client.user, interaction.channel
        if me is None or not isinstance(channel, discord.abc.Messageable):
            return None
        async for old in channel.history(limit=50):
            if old.webhook_id is not None or old.author.id == me.id:
                message_id = str(old.id)
                if await self.core.reply_character(PLATFORM, chat_id, message_id) is not None:
                    return message_id
        return None

    async def suggest(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Open a form to write a better version of a character's reply."""
        chat_id = str(message.channel.id)
        if not self.allowed(interaction):
            await say(interaction, NOT_HERE)
            return
        if await self.core.reply_character(PLATFORM, chat_id, str(message.id)) is None:
            await say(interaction, "That message is not a character's reply.")
            return
        await interaction.response.send_modal(
            CorrectionModal(self.core, chat_id, str(message.id), visible_text(message.content))
        )

    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        """Any command that fails: logged, and the user is told rather than left waiting."""
        log.error("discord: command failed: %s", error, exc_info=error)
        if not interaction.response.is_done():
            await say(interaction, "Something went wrong; please try again.")


class CorrectionModal(discord.ui.Modal, title=SUGGEST):
    """A form prefilled with the reply's text; what is submitted becomes a correction."""

    def __init__(self, core: Core, chat_id: str, message_id: str, current: str):
        super().__init__()
        self._core = core
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
        saved = await self._core.correct(
            PLATFORM, self._chat_id, self._message_id, str(interaction.user.id), self.text.value
        )
        await interaction.response.send_message(
            THANKS if saved else "That reply is no longer stored.", ephemeral=True
        )
