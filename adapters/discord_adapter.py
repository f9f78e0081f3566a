"""The Discord edge: a discord.py client that turns messages, reactions and commands into
core calls, running inside the shared event loop (``login`` + ``connect`` as a task, never the
blocking ``run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import discord
import yarl
from discord.ext import commands
from discord.gateway import DiscordWebSocket
from discord.http import Route

from adapters.base import PlatformAdapter
from adapters.discord_access import AccessPolicy, place_of
from adapters.discord_commands import DiscordCommands
from adapters.discord_reply import NO_PINGS, DiscordReplyTarget, Quote, WebhookPool
from adapters.discord_swipes import SWIPES, offer_swipes, swipe
from bot.config import DiscordSettings
from bot.core import Core
from bot.errors import CharbotError
from bot.messages import Inbound
from engine.errors import EngineError
from storage.errors import StorageError

log = logging.getLogger(__name__)


class _NoVoiceWarnings(logging.Filter):
    """discord.py warns at every start that its voice libraries (PyNaCl, davey) are missing;
    the bot sends no voice, so those two lines say nothing. Other warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "voice will NOT be supported" not in record.getMessage()


logging.getLogger("discord.client").addFilter(_NoVoiceWarnings())

PLATFORM = "discord"
THUMBS_UP, THUMBS_DOWN, REGENERATE = "👍", "👎", "🔁"
_EMOJI_MODIFIERS = re.compile("[\U0001f3fb-\U0001f3ff\ufe0f]")  # 👍🏽 counts as 👍
_VOTES = {THUMBS_UP: 1, THUMBS_DOWN: -1}
START_TIMEOUT = 60.0


class DiscordAdapter(PlatformAdapter):
    """Connects one bot token to the core. Characters speak through channel webhooks.

    ``start`` logs in and returns once the gateway session is up; ``stop`` cancels replies in
    progress and closes the connection. The token is kept private and never logged.
    """

    platform = PLATFORM

    def __init__(self, settings: DiscordSettings, core: Core, token: str) -> None:
        self.settings = settings
        self.core = core
        self.__token = token  # name-mangled: not in vars() dumps by accident, never in repr
        self.access = AccessPolicy(settings)
        self.client = _make_client(self)
        self.webhooks = WebhookPool(self.client, enabled=settings.use_webhooks)
        self._runner: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._tasks: set[asyncio.Task[object]] = set()
        self._restore_endpoints: Callable[[], None] = lambda: None
        # (chat, message, user) -> the vote reactions a user has on a message, oldest first,
        # so removing 👎 while 👍 is still there restores +1 instead of clearing the vote.
        self._reactions: OrderedDict[tuple[str, str, str], list[int]] = OrderedDict()

    def __repr__(self) -> str:
        return f"<DiscordAdapter token_env={self.settings.token_env!r}>"

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if not self.__token:
            raise CharbotError(
                f"no Discord token: set the environment variable {self.settings.token_env}"
            )
        self._restore_endpoints = override_endpoints(
            self.settings.api_base_url, self.settings.gateway_url
        )
        try:
            await self.client.login(self.__token)
        except discord.LoginFailure as exc:
            await self.stop()
            raise CharbotError(
                f"Discord refused the token from ${self.settings.token_env}"
            ) from exc
        except (discord.HTTPException, OSError) as exc:
            await self.stop()
            raise CharbotError(f"cannot log in to Discord: {exc}") from exc
        self._runner = asyncio.create_task(self.client.connect(reconnect=True))
        connected = asyncio.create_task(self._connected.wait())
        await asyncio.wait(
            {self._runner, connected}, timeout=START_TIMEOUT, return_when="FIRST_COMPLETED"
        )
        if self._connected.is_set():
            log.info("discord: connected as %s", self.client.user)
            # What a previous run stored but did not answer (answered in the background).
            await self.core.recover(PLATFORM, self.reply_target, self.owns)
            return
        connected.cancel()
        error = self._runner.exception() if self._runner.done() else None
        await self.stop()
        if isinstance(error, discord.PrivilegedIntentsRequired):
            raise CharbotError(
                "Discord refused the Message Content intent: enable it for the bot in the "
                "Developer Portal (Bot → Privileged Gateway Intents)"
            ) from error
        raise CharbotError(f"cannot connect to the Discord gateway: {error or 'timed out'}")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if not self.client.is_closed():
            await self.client.close()
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
            self._runner = None
        self._restore_endpoints()
        self._restore_endpoints = lambda: None

    def owns(self, chat_id: str) -> bool:
        """Whether this process answers channel ``chat_id``: with shards, a guild channel
        belongs to its guild's shard and a DM (or a channel not seen) to shard 0, as Discord
        delivers their events. Without shards, every channel."""
        count = self.settings.shard_count
        if count is None:
            return True
        mine = set(self.settings.shard_ids or range(count))
        channel = self.client.get_channel(int(chat_id)) if chat_id.isdigit() else None
        guild = getattr(channel, "guild", None)
        return ((guild.id >> 22) % count if guild is not None else 0) in mine

    def owns_shard_zero(self) -> bool:
        """Unsharded, or running shard 0: the process that syncs the slash commands."""
        count = self.settings.shard_count
        return count is None or 0 in (self.settings.shard_ids or range(count))

    def mark_connected(self) -> None:
        """Called on every gateway session start; the first one ends ``start``."""
        self._connected.set()

    def track(self) -> None:
        """Remember the running handler task so ``stop`` can cancel a reply in progress."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- messages ------------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        me = self.client.user
        if me is None or message.author.bot or message.author.id == me.id:
            return  # other bots, ourselves, and every webhook (their authors are bots)
        if message.webhook_id is not None or message.type not in (
            discord.MessageType.default,
            discord.MessageType.reply,
        ):
            return
        guild_id = message.guild.id if message.guild else None
        place = place_of(message.author.id, guild_id, message.channel, message.author)
        if not self.access.allows(place):
            log.debug("discord: ignoring message %s in %s (not allowed)", message.id, place)
            return
        self.track()
        chat_id = str(message.channel.id)
        reference = message.reference
        reply_to = str(reference.message_id) if reference and reference.message_id else None
        replied_character = (
            await self.core.reply_character(PLATFORM, chat_id, reply_to) if reply_to else None
        )
        text = clean_text(message, me.id)
        if replied_character and text.lower().startswith("/fix "):
            await self._fix_by_reply(message, reply_to, text[5:].strip())
            return
        resolved = reference.resolved if reference else None
        addressed = (
            message.guild is None
            or any(user.id == me.id for user in message.mentions)
            or replied_character is not None
            or (isinstance(resolved, discord.Message) and resolved.author.id == me.id)
        )
        inbound = Inbound(
            platform=PLATFORM,
            chat_id=chat_id,
            message_id=str(message.id),
            author_id=str(message.author.id),
            author_name=message.author.display_name,
            text=text,
            thread_id=chat_id if isinstance(message.channel, discord.Thread) else None,
            reply_to_platform_id=reply_to,
            addressed=addressed,
            private=message.guild is None,
            exempt=self.access.is_admin(str(message.author.id)),
            default_character=self.channel_character(message.channel),
            sent_at=message.created_at.timestamp(),
        )
        quote = Quote(
            message.author.display_name,
            text,
            message.jump_url,
            message.to_reference(fail_if_not_exists=False),
        )
        await self.answer(inbound, self.target(message.channel, quote))

    def channel_character(self, channel: object) -> str | None:
        """The configured character of a channel (a thread inherits its parent's)."""
        configured = self.settings.channel_characters
        name = configured.get(str(getattr(channel, "id", "")))
        if name is None and isinstance(channel, discord.Thread):
            name = configured.get(str(channel.parent_id))
        return name

    def target(self, channel: discord.abc.Messageable, quote: Quote | None) -> DiscordReplyTarget:
        return DiscordReplyTarget(channel, self.webhooks, quote)

    async def answer(self, inbound: Inbound, target: DiscordReplyTarget) -> None:
        """Hand a message to the core, which stores it and returns; it answers in its own
        per-chat line (our own errors, like an unknown character, become a notice there)."""
        try:
            await self.core.receive(inbound, target)
        except StorageError as exc:  # only while stopping with the database unavailable
            log.error("discord: message %s could not be stored: %s", inbound.message_id, exc)

    def reply_target(
        self, chat_id: str, thread_id: str | None, reply_to: str | None
    ) -> DiscordReplyTarget:
        """A target from stored ids, for answering after a restart (no quote header)."""
        channel = self.client.get_channel(int(chat_id)) or self.client.get_partial_messageable(
            int(chat_id)
        )
        return self.target(channel, None)  # type: ignore[arg-type]

    async def _fix_by_reply(
        self, message: discord.Message, reply_to: str | None, text: str
    ) -> None:
        if not text or reply_to is None:
            return
        saved = await self.core.correct(
            PLATFORM, str(message.channel.id), reply_to, str(message.author.id), text
        )
        with contextlib.suppress(discord.HTTPException):
            await message.add_reaction("✅" if saved else "❓")

    # -- reactions -----------------------------------------------------------------------

    async def on_reaction(self, payload: discord.RawReactionActionEvent, added: bool) -> None:
        me = self.client.user
        emoji = (
            _EMOJI_MODIFIERS.sub("", payload.emoji.name or "")
            if payload.emoji.is_unicode_emoji()
            else ""
        )
        if me is None or payload.user_id == me.id or emoji not in (*_VOTES, REGENERATE, *SWIPES):
            return
        user = payload.member or self.client.get_user(payload.user_id)
        if user is not None and user.bot:
            return
        channel = self.client.get_channel(
            payload.channel_id
        ) or self.client.get_partial_messageable(payload.channel_id, guild_id=payload.guild_id)
        place = place_of(payload.user_id, payload.guild_id, channel, payload.member)
        # A removal carries no member (no roles): taking back one's own vote is always fine.
        if not self.access.allows(place, check_roles=added):
            return
        self.track()
        chat_id, message_id, user_id = (
            str(payload.channel_id),
            str(payload.message_id),
            str(payload.user_id),
        )
        if emoji == REGENERATE:
            if added:
                await self._regenerate(channel, payload)
            return
        if emoji in SWIPES:  # taking the reaction back pages too: it can be pressed again
            step = SWIPES[emoji]
            await swipe(self.core, self.webhooks, channel, message_id, step)  # type: ignore[arg-type]
            return
        value = self._remember_vote((chat_id, message_id, user_id), _VOTES[emoji], added)
        await self.core.vote(PLATFORM, chat_id, message_id, user_id, value)

    def _remember_vote(self, key: tuple[str, str, str], value: int, added: bool) -> int:
        active = self._reactions.pop(key, [])
        if value in active:
            active.remove(value)
        if added:
            active.append(value)
        if active:
            self._reactions[key] = active
            while len(self._reactions) > 10_000:
                self._reactions.popitem(last=False)
        return active[-1] if active else 0

    async def _regenerate(self, channel: object, payload: discord.RawReactionActionEvent) -> None:
        guild = payload.guild_id or "@me"
        url = f"https://discord.com/channels/{guild}/{payload.channel_id}/{payload.message_id}"
        target = self.target(channel, Quote("another take on this reply", "", url))  # type: ignore[arg-type]
        try:
            result = await self.core.regenerate(
                PLATFORM, str(payload.channel_id), str(payload.message_id), target
            )
        except (CharbotError, EngineError) as exc:
            await target.notice(str(exc))
            return
        if result is not None and result.message_ids:
            await offer_swipes(self.core, channel, result.message_ids[0])  # type: ignore[arg-type]


def _make_client(adapter: DiscordAdapter) -> commands.Bot:
    """The discord.py client for ``[discord]``: one gateway connection; with shard_count and
    one shard id, that shard (``shard_id``/``shard_count``); with several or all of them,
    discord.py's AutoShardedBot over those (``shard_ids``)."""
    intents = discord.Intents.default()  # guilds, messages, reactions, DMs
    intents.message_content = True  # privileged: enable it in the Developer Portal
    # No prefix commands: on_message hands every message to the adapter and never calls
    # process_commands, so the prefix is never looked at.
    options: dict[str, Any] = {
        "help_command": None,
        "intents": intents,
        "allowed_mentions": NO_PINGS,
    }
    count, ids = adapter.settings.shard_count, adapter.settings.shard_ids
    if count is None:
        return _CharbotClient(adapter, **options)
    if len(ids) == 1:
        return _CharbotClient(adapter, shard_id=ids[0], shard_count=count, **options)
    return _ShardedClient(adapter, shard_ids=list(ids) or None, shard_count=count, **options)


class _Handlers:
    """The client's events, forwarded to the adapter; the application commands are a Cog
    (adapters/discord_commands.py), which is why the clients are ``commands`` bots."""

    adapter: DiscordAdapter

    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        super().__init__(commands.when_mentioned, **options)  # type: ignore[call-arg]
        self.adapter = adapter

    async def setup_hook(self) -> None:
        await self.add_cog(DiscordCommands(self, self.adapter))  # type: ignore[attr-defined]
        if not self.adapter.owns_shard_zero():
            return  # the commands are global: the process with shard 0 syncs them
        try:
            # A bulk overwrite: unchanged commands do not count against Discord's daily limit.
            await self.tree.sync()  # type: ignore[attr-defined]
        except discord.HTTPException as exc:
            log.warning("discord: could not sync slash commands: %s", exc)

    async def on_connect(self) -> None:
        self.adapter.mark_connected()

    async def on_message(self, message: discord.Message) -> None:
        await self.adapter.on_message(message)

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self.adapter.on_reaction(payload, added=True)

    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        await self.adapter.on_reaction(payload, added=False)

    async def on_error(self, event_method: str, /, *args: object, **kwargs: object) -> None:
        log.exception("discord: unhandled error in %s", event_method)


class _CharbotClient(_Handlers, commands.Bot):
    """One gateway connection: all of the bot's guilds, or one shard of them."""


class _ShardedClient(_Handlers, commands.AutoShardedBot):
    """Several shards in this process, one connection each (discord.py's AutoShardedBot)."""


def clean_text(message: discord.Message, bot_id: int) -> str:
    """The message text for the model: the bot's mention removed, other mentions as names."""
    text = re.sub(rf"<@!?{bot_id}>", "", message.content)
    for user in message.mentions:
        text = re.sub(rf"<@!?{user.id}>", f"@{user.display_name}", text)
    for role in message.role_mentions:
        text = text.replace(f"<@&{role.id}>", f"@{role.name}")
    text = text.strip().lstrip(",:").strip()
    for attachment in message.attachments:
        text += f"\n[attachment: {attachment.filename}]"
    return text.strip()


def override_endpoints(api_base_url: str | None, gateway_url: str | None) -> Callable[[], None]:
    """Point discord.py at another REST API and gateway (a test server, a proxy).

    discord.py keeps both as class attributes (``Route.BASE``,
    ``DiscordWebSocket.DEFAULT_GATEWAY``), so an override is global to this process: every
    discord.py client in it uses the new URLs until the returned function restores them.
    charbot runs one Discord client per process, so this is safe here.
    """
    old_base, old_gateway = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    if api_base_url:
        Route.BASE = api_base_url.rstrip("/")
    if gateway_url:
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)

    def restore() -> None:
        Route.BASE = old_base
        DiscordWebSocket.DEFAULT_GATEWAY = old_gateway

    return restore
