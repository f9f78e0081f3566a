"""The Telegram edge: a python-telegram-bot Application that turns messages, button presses
and reactions into core calls, running inside the shared event loop (``initialize``,
``start``, ``updater.start_polling``; never the blocking ``run_polling``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence

from telegram import (
    CallbackQuery,
    ForceReply,
    Message,
    ReactionType,
    ReactionTypeEmoji,
    ReplyParameters,
    Update,
)
from telegram.constants import ChatType, ParseMode
from telegram.error import InvalidToken, TelegramError
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    ContextTypes,
    MessageHandler,
    MessageReactionHandler,
    filters,
)

from adapters.base import PlatformAdapter
from adapters.telegram_access import TelegramAccess
from adapters.telegram_commands import COMMAND_MENU, command_handlers
from adapters.telegram_logging import install_redactor
from adapters.telegram_reply import (
    FIX,
    REGEN,
    THUMBS_DOWN,
    THUMBS_UP,
    VOTE_DOWN,
    VOTE_UP,
    FloodGate,
    TelegramReplyTarget,
    escape,
)
from adapters.telegram_swipes import SWIPE_STEPS, swipe_page, swipe_target
from adapters.telegram_updates import (
    IntakeLedger,
    StoreThenConfirm,
    TolerantUpdatesRequest,
    not_stored,
)
from bot.config import TelegramSettings
from bot.core import Core
from bot.errors import CharbotError
from bot.messages import Inbound
from bot.reply import ReplyTarget
from engine.errors import EngineError
from storage.errors import StorageError

log = logging.getLogger(__name__)

PLATFORM = "telegram"
ALLOWED_UPDATES = ("message", "callback_query", "message_reaction")
_VOTES = {THUMBS_UP: 1, THUMBS_DOWN: -1, VOTE_UP: 1, VOTE_DOWN: -1}
SAVED_REACTION = "👌"  # bots may only react with Telegram's standard set; ✅ is not in it
NOT_STORED = "That reply is no longer stored."
_REMEMBERED = 10_000  # flood gates and ✏️ prompts kept in memory, newest first


class TelegramAdapter(PlatformAdapter):
    """Connects one bot token to the core. One token serves every character: each reply
    starts with the speaking character's name.

    Receiving a message stores it and returns (``Core.receive``); the core answers it in
    its own time, and an update is confirmed to Telegram only once it is stored
    (adapters/telegram_updates.py).

    ``start`` answers what an earlier run left unanswered, then returns once polling runs;
    ``stop_intake`` stops fetching and stores everything fetched; ``stop`` then shuts the
    Application down. The token is kept private and never logged.
    """

    platform = PLATFORM
    poll_timeout: float = 10.0  # seconds a getUpdates long poll may wait

    def __init__(self, settings: TelegramSettings, core: Core, token: str) -> None:
        self.settings = settings
        self.core = core
        self.__token = token  # name-mangled: not in vars() dumps by accident, never in repr
        self.access = TelegramAccess(settings)
        self.app: Application | None = None  # type: ignore[type-arg]
        self._remove_redactor: Callable[[], None] = lambda: None
        self._tasks: set[asyncio.Task[object]] = set()
        self._gates: OrderedDict[int, FloodGate] = OrderedDict()
        # (chat id, ✏️ prompt message id) -> the reply message the prompt asks to correct.
        self._fix_prompts: OrderedDict[tuple[int, int], int] = OrderedDict()
        self._ledger = IntakeLedger()
        self._updates_request: TolerantUpdatesRequest | None = None

    def __repr__(self) -> str:
        return f"<TelegramAdapter token_env={self.settings.token_env!r}>"

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if not self.__token:
            raise CharbotError(
                f"no Telegram token: set the environment variable {self.settings.token_env}"
            )
        # Before build(): the Bot logs its API URL, token included, as it is constructed.
        self._remove_redactor = install_redactor(self.__token)
        app = self.app = self._application()
        try:
            await app.initialize()  # getMe: checks the token
            await self._publish_commands()
            # What a previous run stored but did not answer, before anything new arrives.
            await self.core.recover(PLATFORM, self.reply_target)
            await app.start()
            assert app.updater is not None  # the builder makes one unless told not to
            await app.updater.start_polling(
                timeout=self.poll_timeout, allowed_updates=list(ALLOWED_UPDATES)
            )
        except InvalidToken:
            await self.stop()
            # Not str(exc): PTB's message quotes the token.
            raise CharbotError(
                f"Telegram refused the token from ${self.settings.token_env}"
            ) from None
        except (TelegramError, OSError) as exc:
            await self.stop()
            raise CharbotError(f"cannot connect to the Telegram Bot API: {exc}") from exc
        log.info("telegram: polling as @%s", app.bot.username)

    def _application(self) -> Application:  # type: ignore[type-arg]
        """A new Application for this token, on a fresh intake ledger, every handler added;
        nothing is fetched yet."""
        self._ledger = IntakeLedger()
        self._updates_request = TolerantUpdatesRequest(self._ledger)
        builder = (
            Application.builder()
            .token(self.__token)
            # Handlers only store (the core keeps each chat in order and answers later), and
            # an update is confirmed only once stored.
            .concurrent_updates(StoreThenConfirm(self._ledger))
            .get_updates_request(self._updates_request)
        )
        if self.settings.base_url:
            base = self.settings.base_url
            builder = builder.base_url(base).base_file_url(_file_url(base))
        app = builder.build()
        app.add_handler(CallbackQueryHandler(self.on_button))
        app.add_handler(MessageReactionHandler(self.on_reaction))
        app.add_handlers(command_handlers(self))
        app.add_handler(
            MessageHandler(
                filters.UpdateType.MESSAGE & filters.TEXT & ~filters.COMMAND, self.on_text
            )
        )
        app.add_handler(MessageHandler(filters.ALL, self.on_other))
        app.add_error_handler(self.on_error)
        return app

    async def _publish_commands(self) -> None:
        """The command menu in Telegram's clients; a failure here is not worth stopping for."""
        assert self.app is not None
        try:
            await self.app.bot.set_my_commands(list(COMMAND_MENU.items()))
        except TelegramError as exc:
            log.warning("telegram: could not publish the command menu: %s", exc)

    async def stop_intake(self) -> None:
        """Stop fetching updates; store every update already fetched, and confirm them to
        Telegram only if they all were. Replies in progress keep running (see ``stop``)."""
        app = self.app
        if app is None:
            return
        if self._updates_request is not None:
            self._updates_request.stopping = True  # the last getUpdates waits a bounded time
        if app.updater is not None and app.updater.running:
            await app.updater.stop()
        if app.running:
            await app.stop()  # handles every update still queued: each one is stored

    async def stop(self) -> None:
        await self.stop_intake()
        app = self.app
        if app is not None:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await app.shutdown()
        self.app = None
        self._remove_redactor()
        self._remove_redactor = lambda: None

    def _regenerated(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("telegram: regenerating failed: %s", task.exception())

    def track(self) -> None:
        """Remember the running handler task so ``stop`` can cancel a reply in progress."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @property
    def bot_id(self) -> int:
        assert self.app is not None
        return self.app.bot.id

    def gate(self, chat_id: int) -> FloodGate:
        """One flood gate per chat: Telegram's flood waits are per chat."""
        gate = self._gates.pop(chat_id, None) or FloodGate()
        self._gates[chat_id] = gate
        if len(self._gates) > _REMEMBERED:
            self._gates.popitem(last=False)
        return gate

    def target(
        self, chat_id: int, thread_id: int | None, reply_to: int | None
    ) -> TelegramReplyTarget:
        assert self.app is not None
        return TelegramReplyTarget(
            self.app.bot, chat_id, thread_id=thread_id, reply_to=reply_to, gate=self.gate(chat_id)
        )

    def reply_target(
        self, chat_id: str, thread_id: str | None, reply_to: str | None
    ) -> ReplyTarget:
        """A target from stored ids (strings), for answering after a restart."""
        return self.target(
            int(chat_id),
            int(thread_id) if thread_id else None,
            int(reply_to) if reply_to and reply_to.lstrip("-").isdigit() else None,
        )

    def allowed(self, chat_id: int, user_id: int, chat_type: str) -> bool:
        return self.access.allows(str(chat_id), str(user_id), private=chat_type == ChatType.PRIVATE)

    # -- messages ------------------------------------------------------------------------

    async def on_text(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        """Any text message that is not a command."""
        message = update.message
        if message is None or message.text is None:
            return
        await self.route(message, message.text)

    async def on_other(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        """Whatever no other handler took: unknown commands, stickers, service messages."""
        message = update.effective_message
        text = (message.text or "")[:40] if message is not None else ""
        log.debug("telegram: ignoring update %s (%r)", update.update_id, text)

    async def route(self, message: Message, text: str, *, forced: bool = False) -> None:
        """Hand a message to the core, which stores it and returns: answered later if
        addressed (``forced`` for /ask), else context. Messages from chats or users not
        allowed are dropped entirely."""
        chat, user = message.chat, message.from_user
        if chat is None:  # malformed; PTB normally refuses these before they get here
            log.debug("telegram: ignoring message %s without a chat", message.message_id)
            return
        if user is None or user.is_bot:
            log.debug("telegram: ignoring message %s without a human sender", message.message_id)
            return
        if not self.allowed(chat.id, user.id, chat.type):
            log.debug("telegram: ignoring message %s in %s (not allowed)", message.id, chat.id)
            return
        self.track()
        replied = replied_message(message)
        if replied is not None and (chat.id, replied.message_id) in self._fix_prompts:
            original = self._fix_prompts.pop((chat.id, replied.message_id))
            await self.save_correction(message, original, text)
            return
        mentioned, text = strip_mention(text, self.app.bot.username if self.app else "")
        private = chat.type == ChatType.PRIVATE
        to_us = replied is not None and replied.from_user is not None
        to_us = to_us and replied.from_user.id == self.bot_id  # type: ignore[union-attr]
        thread_id = topic_of(message)
        inbound = Inbound(
            platform=PLATFORM,
            chat_id=str(chat.id),
            message_id=str(message.message_id),
            author_id=str(user.id),
            author_name=user.full_name,
            text=text,
            thread_id=str(thread_id) if thread_id is not None else None,
            reply_to_platform_id=str(replied.message_id) if replied is not None else None,
            addressed=forced or private or mentioned or to_us,
            private=private,
            exempt=self.access.is_admin(str(user.id)),
            default_character=self.settings.default_character,
            sent_at=message.date.timestamp(),
        )
        target = self.target(chat.id, thread_id, message.message_id)
        try:
            await self.core.receive(inbound, target)
        except StorageError as exc:  # only while stopping with the database unavailable
            not_stored()  # so never confirmed: Telegram delivers it again after a restart
            log.error("telegram: message %s not stored: %s", message.message_id, exc)

    async def save_correction(self, message: Message, reply_id: int, text: str) -> None:
        """Store ``text`` as a better version of our reply ``reply_id``; acknowledge it."""
        assert message.from_user is not None
        saved = await self.core.correct(
            PLATFORM, str(message.chat.id), str(reply_id), str(message.from_user.id), text
        )
        if saved:
            try:
                await message.set_reaction(SAVED_REACTION)
                return
            except TelegramError:  # reactions may be turned off in this chat
                pass
        await message.reply_text(
            "Thanks — saved as a correction for the next training run."
            if saved
            else "Reply to one of my characters' messages with /fix and the better text."
        )

    # -- buttons -------------------------------------------------------------------------

    async def on_button(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        """👍 👎 🔁 ✏️ under a reply."""
        query = update.callback_query
        if query is None:
            return
        message = query.message
        if message is None or not isinstance(message, Message):
            await query.answer(NOT_STORED)  # too old for Telegram to include
            return
        chat = message.chat
        if not self.allowed(chat.id, query.from_user.id, chat.type):
            await query.answer("I'm not available here.")
            return
        self.track()
        chat_id, message_id = str(chat.id), str(message.message_id)
        if query.data in (VOTE_UP, VOTE_DOWN):
            value = _VOTES[query.data]
            saved = await self.core.vote(
                PLATFORM, chat_id, message_id, str(query.from_user.id), value
            )
            thanks = f"Thanks for the {THUMBS_UP if value > 0 else THUMBS_DOWN}"
            await query.answer(thanks if saved else NOT_STORED)
        elif query.data == REGEN:
            # A whole generation: not in the handler, which would hold up getUpdates.
            task = asyncio.create_task(self.regenerate(query, message))
            self._tasks.add(task)
            task.add_done_callback(self._regenerated)
        elif query.data == FIX:
            await self.ask_for_fix(query, message)
        elif query.data in SWIPE_STEPS:
            step = SWIPE_STEPS[query.data]
            await swipe_page(self.core, self.gate(chat.id), query, message, step)
        else:
            log.debug("telegram: ignoring button %r", (query.data or "")[:40])
            await query.answer()

    async def regenerate(self, query: CallbackQuery, message: Message) -> None:
        chat_id, message_id = str(message.chat.id), str(message.message_id)
        if await self.core.reply_character(PLATFORM, chat_id, message_id) is None:
            await query.answer(NOT_STORED)
            return
        await query.answer("🔁 Writing another reply…")
        # Written into the same message, which then pages through the siblings with ◀ ▶.
        new_target = self.target(message.chat.id, topic_of(message), None)
        target = await swipe_target(self.core, new_target, message)
        try:
            await self.core.regenerate(PLATFORM, chat_id, message_id, target)
        except (CharbotError, EngineError) as exc:
            await target.notice(str(exc))
        await self.core.swipes.regenerated(PLATFORM, chat_id, message_id)

    async def ask_for_fix(self, query: CallbackQuery, message: Message) -> None:
        """Telegram has no forms: a ForceReply prompt asks for the better answer, and a reply
        to that prompt becomes the correction."""
        chat_id, message_id = str(message.chat.id), str(message.message_id)
        name = await self.core.reply_character(PLATFORM, chat_id, message_id)
        if name is None:
            await query.answer(NOT_STORED)
            return
        await query.answer("✏️ Reply to my prompt with the better answer")
        user = query.from_user
        # Mentioning the presser makes the selective ForceReply open only their keyboard.
        who = f'<a href="tg://user?id={user.id}">{escape(user.first_name)}</a>'
        prompt = await self.gate(message.chat.id).call(
            lambda: message.reply_text(
                f"✏️ {who}, reply to this message with a better answer for {escape(name)}.",
                parse_mode=ParseMode.HTML,
                reply_markup=ForceReply(selective=True, input_field_placeholder="A better reply"),
                reply_parameters=ReplyParameters(message.message_id),
            )
        )
        self._fix_prompts[(message.chat.id, prompt.message_id)] = message.message_id
        while len(self._fix_prompts) > _REMEMBERED:
            self._fix_prompts.popitem(last=False)

    # -- reactions -----------------------------------------------------------------------

    async def on_reaction(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        """👍 / 👎 reactions rate a reply; removing the reaction removes the vote."""
        reaction = update.message_reaction
        if reaction is None or reaction.user is None or reaction.user.is_bot:
            log.debug("telegram: ignoring an anonymous or bot reaction")
            return
        chat, user = reaction.chat, reaction.user
        if not self.allowed(chat.id, user.id, chat.type):
            return
        old, new = votes(reaction.old_reaction), votes(reaction.new_reaction)
        if not old and not new:
            return  # ❤️ and friends are not votes
        self.track()
        await self.core.vote(
            PLATFORM, str(chat.id), str(reaction.message_id), str(user.id), new[-1] if new else 0
        )

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Log and carry on: one bad update must not stop the bot."""
        update_id = getattr(update, "update_id", None)
        log.warning("telegram: error while handling update %s", update_id, exc_info=context.error)


def votes(reactions: Sequence[ReactionType]) -> list[int]:
    """The +1 / -1 votes among a user's reactions, in their order."""
    return [
        _VOTES[r.emoji]
        for r in reactions
        if isinstance(r, ReactionTypeEmoji) and r.emoji in (THUMBS_UP, THUMBS_DOWN)
    ]


def replied_message(message: Message) -> Message | None:
    """The message this one replies to. In a forum topic every message "replies" to the
    topic's creation message; that is not a reply."""
    replied = message.reply_to_message
    if replied is None or replied.forum_topic_created is not None:
        return None
    return replied


def topic_of(message: Message) -> int | None:
    """The forum topic id, or None outside forums (reply threads are not topics)."""
    return message.message_thread_id if message.is_topic_message else None


def strip_mention(text: str, username: str | None) -> tuple[bool, str]:
    """Whether ``text`` @-mentions the bot, and the text without that mention."""
    if not username:
        return False, text
    pattern = re.compile(rf"(?<!\w)@{re.escape(username)}(?!\w)", re.IGNORECASE)
    stripped, count = pattern.subn("", text)
    if not count:
        return False, text
    return True, stripped.strip().lstrip(",:").strip()


def _file_url(base_url: str) -> str:
    """The file-download URL of a self-hosted server, from its API URL (".../bot")."""
    root = base_url[: -len("/bot")] if base_url.endswith("/bot") else base_url.rstrip("/")
    return f"{root}/file/bot"
