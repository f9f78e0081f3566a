"""Bot commands: /start, /help, /characters, /character, /reset, /ask and /fix.

In a group, ``/character NAME`` and ``/reset`` change the chat for everyone, so they are
admin commands: users listed in ``[telegram] admins``, or, when that list is empty, the
group's own administrators. In a private chat they are the user's own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from telegram import Message, Update
from telegram.constants import ChatMemberStatus, ChatType, ParseMode
from telegram.error import TelegramError
from telegram.ext import Application, CommandHandler, ContextTypes, filters

from adapters.telegram_reply import escape
from bot.errors import CharbotError
from bot.lora_admin import lora_command

if TYPE_CHECKING:
    from adapters.telegram_adapter import TelegramAdapter

log = logging.getLogger(__name__)

PLATFORM = "telegram"
HELP = (
    "Talk to me: in a private chat every message gets an answer; in a group, mention me, "
    "reply to one of my messages, or write /ask and your message.\n\n"
    "/characters — who can speak\n"
    "/character NAME — choose who speaks in this chat (admins, in groups)\n"
    "/reset — start a fresh conversation (admins, in groups)\n"
    "/fix TEXT — reply to one of my messages with a better answer\n"
    "/adapter [VERSION] — list or switch the character's LoRA versions (bot admins)\n"
    "Buttons under a reply: 👍 👎 rate it, 🔁 asks for another, ✏️ suggests a better one. "
    "👍 and 👎 reactions rate too."
)
COMMANDS = ("start", "help", "characters", "character", "reset", "ask", "fix", "adapter")
COMMAND_MENU = {
    "ask": "Say something to the character",
    "characters": "List the characters",
    "character": "Show or choose who speaks here",
    "reset": "Start a fresh conversation",
    "fix": "Reply to a message with a better answer",
    "help": "What I do",
}
_ADMIN_STATUSES = {ChatMemberStatus.ADMINISTRATOR, ChatMemberStatus.OWNER}

Handler = Callable[[Message, str], Awaitable[None]]


def register_commands(app: Application, adapter: TelegramAdapter) -> None:  # type: ignore[type-arg]
    """Add a CommandHandler per command; their callbacks close over ``adapter``."""
    core = adapter.core
    default = adapter.settings.default_character

    def command(name: str, handler: Handler) -> None:
        async def callback(update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
            message = update.message
            if message is None or message.text is None or message.from_user is None:
                return
            chat, user = message.chat, message.from_user
            if user.is_bot or not adapter.allowed(chat.id, user.id, chat.type):
                log.debug("telegram: ignoring /%s in %s (not allowed)", name, chat.id)
                return
            adapter.track()
            parts = message.text.split(maxsplit=1)
            await handler(message, parts[1].strip() if len(parts) > 1 else "")

        callback.__doc__ = handler.__doc__
        # Only new messages: commands in edited messages are not run again.
        app.add_handler(CommandHandler(name, callback, filters=filters.UpdateType.MESSAGE))

    async def say(message: Message, html_text: str) -> None:
        await adapter.gate(message.chat.id).call(
            lambda: message.reply_text(html_text[:4096], parse_mode=ParseMode.HTML)
        )

    async def may_administer(message: Message) -> bool:
        assert message.from_user is not None
        user_id = message.from_user.id
        if message.chat.type == ChatType.PRIVATE or adapter.access.is_admin(str(user_id)):
            return True
        if adapter.access.has_admins:
            return False
        try:
            member = await message.chat.get_member(user_id)
        except TelegramError as exc:
            log.warning("telegram: cannot check admin rights in %s: %s", message.chat.id, exc)
            return False
        return member.status in _ADMIN_STATUSES

    async def start(message: Message, _args: str) -> None:
        """The current character greets the user."""
        user = message.from_user.first_name if message.from_user else "there"
        target = adapter.target(message.chat.id, None, message.message_id)
        target.keyboard = False  # a greeting is not a generated reply: nothing to rate
        # Stored as the conversation's next (in a new one, first) turn: part of history.
        await core.greet(PLATFORM, str(message.chat.id), None, user, target, default)

    async def help_(message: Message, _args: str) -> None:
        """What the bot does and its commands."""
        await say(message, escape(HELP))

    async def characters(message: Message, _args: str) -> None:
        """List every character, marking the one that speaks in this chat."""
        current = await core.current_character(PLATFORM, str(message.chat.id), default)
        lines = [
            f"{'▶' if c.name == current.name else '•'} <b>{escape(c.name)}</b>"
            + (f" — {escape(c.description[:100])}" if c.description else "")
            for c in core.characters
        ]
        await say(message, "\n".join(lines))

    async def character(message: Message, name: str) -> None:
        """Without a name, show who speaks here; with one, make it this chat's character."""
        chat_id = str(message.chat.id)
        if not name:
            current = await core.current_character(PLATFORM, chat_id, default)
            await say(message, f"<b>{escape(current.name)}</b> speaks here.")
            return
        if not await may_administer(message):
            await say(message, "Only an admin can change this chat's character.")
            return
        try:
            chosen = await core.set_character(PLATFORM, chat_id, name)
        except CharbotError as exc:
            await say(message, escape(str(exc)))
            return
        await say(message, f"<b>{escape(chosen.name)}</b> speaks here now.")

    async def reset(message: Message, _args: str) -> None:
        """Start a fresh conversation; a reply in progress here is stopped."""
        if not await may_administer(message):
            await say(message, "Only an admin can reset this chat's conversation.")
            return
        topic = message.message_thread_id if message.is_topic_message else None
        await core.reset(PLATFORM, str(message.chat.id), str(topic) if topic else None)
        await say(message, "Started a fresh conversation.")

    async def ask(message: Message, text: str) -> None:
        """/ask TEXT: talk to the character in a group without mentioning the bot."""
        if not text:
            await say(message, "Write /ask followed by your message.")
            return
        await adapter.route(message, text, forced=True)

    async def fix(message: Message, text: str) -> None:
        """Reply to a character's message with /fix TEXT to suggest a better answer."""
        replied = message.reply_to_message
        if replied is None or not text:
            await say(message, "Reply to one of my messages with /fix and the better text.")
            return
        await adapter.save_correction(message, replied.message_id, text)

    async def adapter_(message: Message, argument: str) -> None:
        """Bot admins only: the LoRA versions of this chat's character; switch or roll back."""
        assert message.from_user is not None
        user = str(message.from_user.id)
        if not adapter.access.is_admin(user):  # a switch changes the character everywhere
            await say(message, "Only the bot's admins ([telegram] admins) can switch versions.")
            return
        current = await core.current_character(PLATFORM, str(message.chat.id), default)
        text = await lora_command(core, current.name, argument, f"telegram:{user}")
        await say(message, escape(text))

    handlers = (start, help_, characters, character, reset, ask, fix, adapter_)
    for name, handler in zip(COMMANDS, handlers, strict=True):
        command(name, handler)
