"""Bot commands: /start, /help, /characters, /character, /join, /leave, /scene, /reset,
/ask, /fix, /remember, /memory, /forget, /quota and /lora (/adapter, its older name, still
works but is shown nowhere).

Each command is a handler below, and :data:`COMMANDS` is the one list of them: what is
registered, what /help says and what Telegram's command menu shows all come from it.

In a group, ``/character NAME``, ``/join NAME``, ``/leave NAME`` and ``/reset`` change the
chat for everyone, so they are admin commands: users listed in ``[telegram] admins``, or,
when that list is empty, the group's own administrators. In a private chat they are the user's own.

/remember, /memory and /forget are each person's notes (bot.memory.commands): a note made in
a private chat stays in it unless made with ``/remember --public TEXT``.

The handlers see the adapter only through :class:`TelegramEdge`, so this module does not
import the adapter that registers them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from telegram import Message, Update
from telegram.constants import ChatMemberStatus, ChatType, ParseMode
from telegram.error import TelegramError
from telegram.ext import CommandHandler, ContextTypes, filters

from adapters.telegram_access import TelegramAccess
from adapters.telegram_reply import FloodGate, TelegramReplyTarget, escape
from bot.config import TelegramSettings
from bot.core import Core
from bot.errors import CharbotError
from bot.limits import COMMAND as QUOTA
from bot.limits import quota_command
from bot.lora_admin import COMMAND, OLD_COMMAND, RENAMED, lora_command
from bot.memory.commands import FORGET, MEMORY, REMEMBER, memory_command
from bot.memory.commands import HELP as MEMORY_HELP
from bot.memory.notes import Person
from bot.scene_commands import JOIN, LEAVE, SCENE, SCENE_HELP, scene_command

log = logging.getLogger(__name__)

PLATFORM = "telegram"
_ADMIN_STATUSES = {ChatMemberStatus.ADMINISTRATOR, ChatMemberStatus.OWNER}


class TelegramEdge(Protocol):
    """What the commands use of the Telegram adapter (``TelegramAdapter`` is one)."""

    core: Core
    settings: TelegramSettings
    access: TelegramAccess

    def allowed(self, chat_id: int, user_id: int, chat_type: str) -> bool: ...

    def track(self) -> None: ...

    def gate(self, chat_id: int) -> FloodGate: ...

    def target(
        self, chat_id: int, thread_id: int | None, reply_to: int | None
    ) -> TelegramReplyTarget: ...

    async def route(self, message: Message, text: str, *, forced: bool = False) -> None: ...

    async def save_correction(self, message: Message, reply_id: int, text: str) -> None: ...


# A command's handler gets the adapter, the command message and the text after the command.
Handler = Callable[[TelegramEdge, Message, str], Awaitable[None]]


# -- shared helpers -------------------------------------------------------------------------


async def say(adapter: TelegramEdge, message: Message, html_text: str) -> None:
    """Answer ``message`` with HTML text, through the chat's flood gate."""
    await adapter.gate(message.chat.id).call(
        lambda: message.reply_text(html_text[:4096], parse_mode=ParseMode.HTML)
    )


async def may_administer(adapter: TelegramEdge, message: Message) -> bool:
    """Whether the sender may change this chat for everyone (always, in a private chat)."""
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


async def current_name(adapter: TelegramEdge, message: Message) -> str:
    """The name of the character who speaks in the message's chat."""
    default = adapter.settings.default_character
    return (await adapter.core.current_character(PLATFORM, str(message.chat.id), default)).name


# -- the commands ---------------------------------------------------------------------------


async def start(adapter: TelegramEdge, message: Message, _argument: str) -> None:
    """The current character greets the user."""
    user = message.from_user.first_name if message.from_user else "there"
    target = adapter.target(message.chat.id, None, message.message_id)
    target.keyboard = False  # a greeting is not a generated reply: nothing to rate
    # Stored as the conversation's next (in a new one, first) turn: part of history.
    default = adapter.settings.default_character
    await adapter.core.greet(PLATFORM, str(message.chat.id), None, user, target, default)


async def help_command(adapter: TelegramEdge, message: Message, _argument: str) -> None:
    """What the bot does and its commands."""
    await say(adapter, message, escape(HELP))


async def characters(adapter: TelegramEdge, message: Message, _argument: str) -> None:
    """List every character, marking the one that speaks in this chat."""
    current = await current_name(adapter, message)
    lines = [
        f"{'▶' if c.name == current else '•'} <b>{escape(c.name)}</b>"
        + (f" — {escape(c.description[:100])}" if c.description else "")
        for c in adapter.core.characters
    ]
    await say(adapter, message, "\n".join(lines))


async def character(adapter: TelegramEdge, message: Message, name: str) -> None:
    """Without a name, show who speaks here; with one, make it this chat's character."""
    if not name:
        current = await current_name(adapter, message)
        await say(adapter, message, f"<b>{escape(current)}</b> speaks here.")
        return
    if not await may_administer(adapter, message):
        await say(adapter, message, "Only an admin can change this chat's character.")
        return
    try:
        chosen = await adapter.core.set_character(PLATFORM, str(message.chat.id), name)
    except CharbotError as exc:
        await say(adapter, message, escape(str(exc)))
        return
    await say(adapter, message, f"<b>{escape(chosen.name)}</b> speaks here now.")


def scene_handler(command: str) -> Handler:
    """The handler of /join, /leave or /scene (bot.scene_commands); changing the scene is
    an admin's in a group, like /character."""

    async def handler(adapter: TelegramEdge, message: Message, name: str) -> None:
        if command != SCENE and not await may_administer(adapter, message):
            await say(adapter, message, "Only an admin can change this chat's scene.")
            return
        chat, default = str(message.chat.id), adapter.settings.default_character
        answer = await scene_command(adapter.core, PLATFORM, chat, command, name, default)
        await say(adapter, message, escape(answer))

    handler.__doc__ = SCENE_HELP[command][1]
    return handler


async def reset(adapter: TelegramEdge, message: Message, _argument: str) -> None:
    """Start a fresh conversation; a reply in progress here is stopped."""
    if not await may_administer(adapter, message):
        await say(adapter, message, "Only an admin can reset this chat's conversation.")
        return
    topic = message.message_thread_id if message.is_topic_message else None
    await adapter.core.reset(PLATFORM, str(message.chat.id), str(topic) if topic else None)
    await say(adapter, message, "Started a fresh conversation.")


async def ask(adapter: TelegramEdge, message: Message, text: str) -> None:
    """/ask TEXT: talk to the character in a group without mentioning the bot."""
    if not text:
        await say(adapter, message, "Write /ask followed by your message.")
        return
    await adapter.route(message, text, forced=True)


async def fix(adapter: TelegramEdge, message: Message, text: str) -> None:
    """Reply to a character's message with /fix TEXT to suggest a better answer."""
    replied = message.reply_to_message
    if replied is None or not text:
        await say(adapter, message, "Reply to one of my messages with /fix and the better text.")
        return
    await adapter.save_correction(message, replied.message_id, text)


async def lora(adapter: TelegramEdge, message: Message, argument: str) -> None:
    """Bot admins only: the LoRA versions of this chat's character; switch or roll back."""
    await say(adapter, message, escape(await lora_answer(adapter, message, argument)))


async def lora_by_old_name(adapter: TelegramEdge, message: Message, argument: str) -> None:
    """/adapter, the deprecated name of /lora: the same answer, after a line that gives the
    new name."""
    answer = await lora_answer(adapter, message, argument)
    await say(adapter, message, escape(f"{RENAMED}\n{answer}"))


async def lora_answer(adapter: TelegramEdge, message: Message, argument: str) -> str:
    """What ``/lora ARGUMENT`` answers (plain text): a refusal, the list, or the switch."""
    assert message.from_user is not None
    user = str(message.from_user.id)
    if not adapter.access.is_admin(user):  # a switch changes the character everywhere
        return "Only the bot's admins ([telegram] admins) can switch versions."
    current = await current_name(adapter, message)
    return await lora_command(adapter.core, current, argument, f"telegram:{user}")


async def quota(adapter: TelegramEdge, message: Message, _argument: str) -> None:
    """Where the sender stands with their limits in this chat (bot.limits)."""
    assert message.from_user is not None
    user = str(message.from_user.id)
    answer = await quota_command(
        adapter.core,
        PLATFORM,
        str(message.chat.id),
        user,
        private=message.chat.type == ChatType.PRIVATE,
        exempt=adapter.access.is_admin(user),
        character=await current_name(adapter, message),
    )
    await say(adapter, message, escape(answer))


def memory_handler(command: str) -> Handler:
    """The handler of /remember, /memory or /forget: the sender's notes with this chat's
    character (bot.memory.commands)."""

    async def handler(adapter: TelegramEdge, message: Message, argument: str) -> None:
        assert message.from_user is not None
        user, chat = message.from_user, message.chat
        private = chat.type == ChatType.PRIVATE
        person = Person(PLATFORM, str(user.id), user.full_name, str(chat.id), private)
        current = await current_name(adapter, message)
        answer = await memory_command(adapter.core.memory, current, person, command, argument)
        await say(adapter, message, escape(answer))

    handler.__doc__ = MEMORY_HELP[command][1]
    return handler


def _scene_command(name: str, menu: str) -> Command:
    arguments, help_text = SCENE_HELP[name]
    return Command(name, scene_handler(name), arguments, help=help_text, menu=menu)


def _memory_command(name: str, menu: str) -> Command:
    arguments, help_text = MEMORY_HELP[name]
    return Command(name, memory_handler(name), arguments, help=help_text, menu=menu)


# -- the table ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """One command: its handler, and how /help and the command menu show it (not at all
    where the text is empty)."""

    name: str
    handler: Handler
    arguments: str = ""  # after the name in /help: "NAME", "[VERSION]"
    help: str = ""
    menu: str = ""

    def help_line(self) -> str:
        usage = f"/{self.name} {self.arguments}" if self.arguments else f"/{self.name}"
        return f"{usage} — {self.help}"


# In the order of the command menu; /start is what Telegram's clients send on their own.
COMMANDS = (
    Command("ask", ask, menu="Say something to the character"),
    Command("characters", characters, help="who can speak", menu="List the characters"),
    Command(
        "character",
        character,
        "NAME",
        help="choose who speaks in this chat (admins, in groups)",
        menu="Show or choose who speaks here",
    ),
    _scene_command(JOIN, "A character joins the scene"),
    _scene_command(LEAVE, "A character leaves the scene"),
    _scene_command(SCENE, "Who is in this chat's scene"),
    Command(
        "reset",
        reset,
        help="start a fresh conversation (admins, in groups)",
        menu="Start a fresh conversation",
    ),
    Command(
        "fix",
        fix,
        "TEXT",
        help="reply to one of my messages with a better answer",
        menu="Reply to a message with a better answer",
    ),
    _memory_command(REMEMBER, "Tell the character something about you"),
    _memory_command(MEMORY, "What the character remembers about you"),
    _memory_command(FORGET, "Make the character forget a note"),
    Command(
        QUOTA,
        quota,
        help="how many answers and reply tokens you have left",
        menu="Your answers and tokens left",
    ),
    Command(
        COMMAND,
        lora,
        "[VERSION]",
        help="list or switch the character's LoRA versions (bot admins)",
        menu="Bot admins: list or switch LoRA versions",
    ),
    Command("help", help_command, menu="What I do"),
    Command("start", start),
    Command(OLD_COMMAND, lora_by_old_name),  # deprecated: answers, but is listed nowhere
)


def _help_text(commands: Iterable[Command]) -> str:
    lines = "\n".join(c.help_line() for c in commands if c.help)
    return (
        "Talk to me: in a private chat every message gets an answer; in a group, mention me, "
        "reply to one of my messages, or write /ask and your message.\n\n"
        f"{lines}\n"
        "Buttons under a reply: 👍 👎 rate it, 🔁 asks for another, ✏️ suggests a better one. "
        "👍 and 👎 reactions rate too."
    )


HELP = _help_text(COMMANDS)
COMMAND_MENU = {c.name: c.menu for c in COMMANDS if c.menu}


def command_handlers(adapter: TelegramEdge) -> list[CommandHandler]:  # type: ignore[type-arg]
    """A CommandHandler per command of :data:`COMMANDS`, each behind the same checks."""
    return [_handler(adapter, command) for command in COMMANDS]


def _handler(adapter: TelegramEdge, command: Command) -> CommandHandler:  # type: ignore[type-arg]
    async def callback(update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None or message.text is None or message.from_user is None:
            return
        chat, user = message.chat, message.from_user
        if user.is_bot or not adapter.allowed(chat.id, user.id, chat.type):
            log.debug("telegram: ignoring /%s in %s (not allowed)", command.name, chat.id)
            return
        adapter.track()
        parts = message.text.split(maxsplit=1)
        await command.handler(adapter, message, parts[1].strip() if len(parts) > 1 else "")

    callback.__doc__ = command.handler.__doc__
    # Only new messages: commands in edited messages are not run again.
    return CommandHandler(command.name, callback, filters=filters.UpdateType.MESSAGE)
