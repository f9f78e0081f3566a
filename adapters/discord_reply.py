"""Showing a character's reply on Discord: webhook identities and the ReplyTarget.

A character speaks through a channel webhook with its own name and avatar when the bot may
manage webhooks; otherwise the bot posts a normal message that starts with the character's
name. Throttling and splitting are the core's :class:`~bot.reply.StreamRenderer`'s job; this
module only sends and edits.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import ClassVar

import discord
from discord.utils import MISSING, escape_markdown, escape_mentions

from bot.characters import Character
from bot.reply import ReplyTarget

log = logging.getLogger(__name__)

DISCORD_LIMIT = 2000
HEADER_BUDGET = 250  # the most a name prefix or a reply quote adds to one message
WEBHOOK_NAME = "charbot"
# Pings are opt-in: a reply that repeats "@everyone" or a role mention must ping no one.
NO_PINGS = discord.AllowedMentions.none()

WebhookChannel = discord.TextChannel | discord.VoiceChannel | discord.ForumChannel


@dataclass(frozen=True, slots=True)
class Quote:
    """The message a reply answers. Webhook messages cannot be native replies, so the first
    part of a webhook reply starts with a one-line quote that links to it."""

    author_name: str
    text: str
    jump_url: str
    reference: discord.MessageReference | None = None  # for a native reply (plain messages)

    def header(self) -> str:
        """``-# ↪ [author](link): snippet`` — one small line, at most HEADER_BUDGET long."""
        snippet = " ".join(self.text.split())
        if len(snippet) > 80:
            snippet = snippet[:79] + "…"
        # escape_mentions keeps a quoted "@everyone" visibly inert; NO_PINGS makes it harmless.
        line = f"-# ↪ [{escape_markdown(self.author_name[:32])}](<{self.jump_url}>)"
        if snippet:
            line += ": " + escape_mentions(escape_markdown(snippet))
        return line[: HEADER_BUDGET - 1] + "\n"


def name_prefix(character: Character) -> str:
    """How a plain (non-webhook) message says who speaks."""
    return f"**{escape_markdown(character.name[:40])}**: "


class WebhookPool:
    """One webhook per channel, reused across restarts (found by name and owner) and cached.

    ``get`` returns None where webhooks cannot be used: DMs, channels where the bot lacks
    Manage Webhooks, or after an API failure (retried after ``retry_after`` seconds).
    """

    retry_after: ClassVar[float] = 300.0

    def __init__(self, client: discord.Client, *, enabled: bool) -> None:
        self._client = client
        self._enabled = enabled
        self._hooks: dict[int, discord.Webhook] = {}
        self._failed: dict[int, float] = {}  # channel id -> monotonic time of the failure
        self._locks: dict[int, asyncio.Lock] = {}
        self.ids: set[int] = set()  # our webhooks, so their messages are never answered

    def owns(self, webhook_id: int | None) -> bool:
        return webhook_id is not None and webhook_id in self.ids

    async def get(self, channel: discord.abc.Messageable) -> discord.Webhook | None:
        parent = channel.parent if isinstance(channel, discord.Thread) else channel
        if not self._enabled or not isinstance(parent, WebhookChannel):
            return None
        me = parent.guild.me
        # Checked every time (cheap, from the cache) so a permission granted later is used.
        if me is None or not parent.permissions_for(me).manage_webhooks:
            return None
        if parent.id in self._hooks:
            return self._hooks[parent.id]
        if time.monotonic() - self._failed.get(parent.id, -self.retry_after) < self.retry_after:
            return None
        async with self._locks.setdefault(parent.id, asyncio.Lock()):
            if parent.id not in self._hooks:
                try:
                    self._hooks[parent.id] = await self._find_or_create(parent)
                except discord.HTTPException as exc:
                    log.warning("cannot use a webhook in channel %s: %s", parent.id, exc.text)
                    self._failed[parent.id] = time.monotonic()
                    return None
            return self._hooks[parent.id]

    async def _find_or_create(self, channel: WebhookChannel) -> discord.Webhook:
        me = self._client.user
        for hook in await channel.webhooks():
            if hook.token and hook.name == WEBHOOK_NAME and hook.user and me and hook.user == me:
                self.ids.add(hook.id)
                return hook
        hook = await channel.create_webhook(name=WEBHOOK_NAME, reason="charbot character names")
        self.ids.add(hook.id)
        return hook

    def forget(self, channel: discord.abc.Messageable) -> None:
        """Drop a webhook that stopped working (deleted by someone); the next get retries."""
        parent = channel.parent if isinstance(channel, discord.Thread) else channel
        self._hooks.pop(getattr(parent, "id", 0), None)


class DiscordReplyTarget(ReplyTarget):
    """Sends and edits the messages of one reply in one channel (or thread, or DM)."""

    # Every part is split to leave room for the header that one message may carry.
    max_chars: ClassVar[int] = DISCORD_LIMIT - HEADER_BUDGET

    def __init__(
        self,
        channel: discord.abc.Messageable,
        webhooks: WebhookPool,
        quote: Quote | None = None,
    ) -> None:
        self.channel = channel
        self._webhooks = webhooks
        self._quote = quote
        self._use_webhook = True  # until a webhook fails for this reply
        # message id -> (webhook that posted it or None, header it carries)
        self._sent: dict[int, tuple[discord.Webhook | None, str]] = {}

    @property
    def _thread(self) -> discord.abc.Snowflake:
        return self.channel if isinstance(self.channel, discord.Thread) else MISSING

    async def typing(self) -> None:
        await self.channel.typing()

    async def send(self, text: str, *, character: Character) -> str:
        first = not self._sent
        webhook = await self._webhooks.get(self.channel) if self._use_webhook else None
        if webhook is not None:
            header = self._quote.header() if first and self._quote else ""
            try:
                message = await webhook.send(
                    header + text,
                    username=character.name[:80],
                    avatar_url=character.avatar_url or MISSING,
                    allowed_mentions=NO_PINGS,
                    wait=True,
                    thread=self._thread,
                )
            except discord.HTTPException as exc:
                # A deleted webhook (404) or a name Discord refuses (400): speak plainly.
                log.warning("webhook send failed (%s); falling back to a plain message", exc.text)
                self._webhooks.forget(self.channel)
                self._use_webhook = False
            else:
                self._sent[message.id] = (webhook, header)
                return str(message.id)
        header = name_prefix(character)
        reference = self._quote.reference if first and self._quote else None
        message = await self.channel.send(
            header + text,
            allowed_mentions=NO_PINGS,
            reference=reference or MISSING,
            mention_author=False,
        )
        self._sent[message.id] = (None, header)
        return str(message.id)

    async def edit(self, message_id: str, text: str, *, character: Character) -> None:
        webhook, header = self._sent[int(message_id)]
        if webhook is not None:
            await webhook.edit_message(
                int(message_id),
                content=header + text,
                allowed_mentions=NO_PINGS,
                thread=self._thread,
            )
        else:
            partial = self.channel.get_partial_message(int(message_id))  # type: ignore[attr-defined]
            await partial.edit(content=header + text, allowed_mentions=NO_PINGS)

    async def notice(self, text: str) -> str | None:
        message = await self.channel.send(text[:DISCORD_LIMIT], allowed_mentions=NO_PINGS)
        return str(message.id)


_QUOTE_LINE = re.compile(r"^-# ↪ .*\n")
_NAME_PREFIX = re.compile(r"^\*\*[^*\n]{1,80}\*\*: ")


def visible_text(content: str) -> str:
    """A reply message's text without the header this module added (quote or name)."""
    return _NAME_PREFIX.sub("", _QUOTE_LINE.sub("", content, count=1), count=1)
