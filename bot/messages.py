"""The one platform-neutral message type that crosses from an adapter into the core."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message someone sent, as an adapter saw it. Nothing platform-specific leaks past this.

    Ids are strings because platforms disagree on their type (Discord snowflakes, Telegram
    ints, console counters); they are unique within ``(platform, chat_id)``.
    """

    platform: str  # "discord", "telegram", "console", ...
    chat_id: str  # channel / chat / DM id
    message_id: str  # the platform's id of this message
    author_id: str
    author_name: str
    text: str
    thread_id: str | None = None  # a Discord thread or Telegram forum topic
    reply_to_platform_id: str | None = None  # platform id of the message this one replies to
    addressed: bool = True  # the bot was mentioned, DMed, replied to or commanded
    character: str | None = None  # an explicit choice (slash command option, /ask as NAME)
    default_character: str | None = None  # the adapter's configured default for this chat
    # A one-to-one chat with the bot (a DM, Telegram's private chat, the console): notes
    # taken from it stay in it (bot.memory). None: not known (a message resumed after a
    # restart), treated as private.
    private: bool | None = None
    # One of the bot's admins ([discord] / [telegram] admins): no limits apply (bot.limits).
    exempt: bool = False
    sent_at: float = field(default_factory=time.time)  # unix seconds
