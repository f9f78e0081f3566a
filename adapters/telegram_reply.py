"""Showing a reply in a Telegram chat: HTML formatting, flood waits, the rating keyboard.

The core's StreamRenderer decides when to send and edit and where to split; this module only
talks to the Bot API. Every text is HTML-escaped here, after splitting, so an entity is never
cut in half and nothing a user or the model wrote can become markup.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
import warnings
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import ClassVar, TypeVar

from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LinkPreviewOptions,
    ReplyParameters,
)
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest, RetryAfter, TelegramError

from bot.characters import Character
from bot.reply import ReplyTarget, utf16_length

log = logging.getLogger(__name__)

TELEGRAM_LIMIT = 4096  # characters of visible text per message
NAME_LIMIT = 64  # a longer character name is cut in the header
# The header is "<b>Name</b>\n": its visible part is the name and a line break.
HEADER_BUDGET = NAME_LIMIT + 2
MAX_FLOOD_WAIT = 120.0  # seconds; a longer flood wait gives up rather than hang a reply
FLOOD_ATTEMPTS = 5

THUMBS_UP, THUMBS_DOWN, REGENERATE, CORRECT = "👍", "👎", "🔁", "✏️"
# callback_data of the keyboard buttons (the message they sit on says which reply).
VOTE_UP, VOTE_DOWN, REGEN, FIX = "vote:+1", "vote:-1", "regen", "fix"
SWIPE_BACK, SWIPE_ON, SWIPE_AT = "swipe:-1", "swipe:+1", "swipe:0"  # ◀ ▶ and the "2/3" label
NO_PREVIEW = LinkPreviewOptions(is_disabled=True)

T = TypeVar("T")


def rating_keyboard(swipe: tuple[int, int] | None = None) -> InlineKeyboardMarkup:
    """👍 👎 🔁 ✏️ under a reply; with ``swipe`` (sibling shown, of how many; from 1) a
    ◀ n/N ▶ row above them pages through the reply's siblings."""
    rows = rating_rows()
    if swipe is not None and swipe[1] > 1:
        rows.insert(
            0,
            [
                InlineKeyboardButton("◀", callback_data=SWIPE_BACK),
                InlineKeyboardButton(f"{swipe[0]}/{swipe[1]}", callback_data=SWIPE_AT),
                InlineKeyboardButton("▶", callback_data=SWIPE_ON),
            ],
        )
    return InlineKeyboardMarkup(rows)


def rating_rows() -> list[list[InlineKeyboardButton]]:
    return list(
        [
            [
                InlineKeyboardButton(THUMBS_UP, callback_data=VOTE_UP),
                InlineKeyboardButton(THUMBS_DOWN, callback_data=VOTE_DOWN),
                InlineKeyboardButton(REGENERATE, callback_data=REGEN),
                InlineKeyboardButton(CORRECT, callback_data=FIX),
            ]
        ]
    )


def escape(text: str) -> str:
    """Escape text for parse_mode HTML (only <, > and & are special outside attributes)."""
    return html.escape(text, quote=False)


def format_reply(character: Character, text: str) -> str:
    """The character's name in bold on its own line, then the text; both escaped."""
    return f"<b>{escape(character.name[:NAME_LIMIT])}</b>\n{escape(text)}"


def retry_seconds(exc: RetryAfter) -> float:
    """``retry_after`` in seconds: PTB 22.2+ holds a timedelta and warns when it returns an
    int for compatibility; older versions hold an int."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class FloodGate:
    """Remembers a chat's flood wait so every call in it waits until Telegram allows it."""

    def __init__(self) -> None:
        self.until = 0.0  # monotonic time before which calls would get 429

    @property
    def blocked(self) -> bool:
        return time.monotonic() < self.until

    def hit(self, exc: RetryAfter) -> None:
        self.until = max(self.until, time.monotonic() + retry_seconds(exc))

    async def call(self, action: Callable[[], Awaitable[T]]) -> T:
        """Run ``action``, waiting out flood limits (RetryAfter) a few times."""
        for attempt in range(FLOOD_ATTEMPTS):
            wait = self.until - time.monotonic()
            if wait > MAX_FLOOD_WAIT:
                break
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                return await action()
            except RetryAfter as exc:
                self.hit(exc)
                log.info("telegram: flood wait of %.0f s (attempt %d)", retry_seconds(exc), attempt)
        raise TimeoutError("Telegram kept refusing with flood waits")


class TelegramReplyTarget(ReplyTarget):
    """Sends and edits the messages of one reply in one chat (or forum topic).

    Edits while the chat is under a flood wait are not dropped: the newest text of each
    message is kept and shown by ``finished`` once the wait is over, so the final text
    always arrives while the model keeps generating in the meantime.
    """

    max_chars: ClassVar[int] = TELEGRAM_LIMIT - HEADER_BUDGET
    typing_interval: ClassVar[float] = 4.5  # Telegram shows "typing…" for about 5 s
    text_length = staticmethod(utf16_length)  # Telegram's limit counts UTF-16 code units

    def __init__(
        self,
        bot: Bot,
        chat_id: int,
        *,
        thread_id: int | None = None,
        reply_to: int | None = None,
        gate: FloodGate | None = None,
        keyboard: bool = True,
    ) -> None:
        self.bot = bot
        self.chat_id = chat_id
        self.thread_id = thread_id
        self.reply_to = reply_to
        self.gate = gate or FloodGate()
        self.keyboard = keyboard
        self.swipe: tuple[int, int] | None = None  # (sibling shown, of how many) for ◀ ▶
        self._pending: dict[str, tuple[str, Character]] = {}  # message id -> text to show

    async def typing(self) -> None:
        if self.gate.blocked:
            return
        await self.bot.send_chat_action(
            self.chat_id, ChatAction.TYPING, message_thread_id=self.thread_id
        )

    async def send(self, text: str, *, character: Character) -> str:
        return await self._send_html(format_reply(character, text))

    async def _send_html(self, body: str, **extra: object) -> str:
        # Only the first message of a reply is a native reply to the user's message.
        reply = (
            ReplyParameters(self.reply_to, allow_sending_without_reply=True)
            if self.reply_to is not None
            else None
        )
        self.reply_to = None
        message = await self.gate.call(
            lambda: self.bot.send_message(
                self.chat_id,
                body,
                parse_mode=ParseMode.HTML,
                message_thread_id=self.thread_id,
                reply_parameters=reply,
                link_preview_options=NO_PREVIEW,
                **extra,  # type: ignore[arg-type]
            )
        )
        return str(message.message_id)

    async def edit(self, message_id: str, text: str, *, character: Character) -> None:
        self._pending[message_id] = (text, character)
        if self.gate.blocked:
            return  # shown later, by a later edit or by finished()
        try:
            await self._edit(message_id, text, character)
        except RetryAfter as exc:
            self.gate.hit(exc)
            log.info("telegram: flood wait of %.0f s; edit deferred", retry_seconds(exc))
        except TelegramError as exc:
            # A network hiccup must not end the reply: the text stays pending and
            # finished() tries once more.
            log.warning(
                "telegram: edit failed in chat %s, retried at the end: %s", self.chat_id, exc
            )

    async def _edit(
        self,
        message_id: str,
        text: str,
        character: Character,
        markup: InlineKeyboardMarkup | None = None,
    ) -> None:
        try:
            await self.bot.edit_message_text(
                format_reply(character, text),
                chat_id=self.chat_id,
                message_id=int(message_id),
                parse_mode=ParseMode.HTML,
                link_preview_options=NO_PREVIEW,
                reply_markup=markup,
            )
        except BadRequest as exc:
            if "not modified" not in exc.message.lower():
                raise
        if self._pending.get(message_id, (None,))[0] == text:
            del self._pending[message_id]

    async def finished(self, message_ids: list[str], text: str, *, character: Character) -> None:
        """Show deferred edits, then put the rating keyboard under the last message."""
        if not message_ids:
            return
        last = message_ids[-1]
        markup = rating_keyboard(self.swipe) if self.keyboard else None
        for message_id in [m for m in message_ids if m in self._pending and m != last]:
            shown, who = self._pending[message_id]
            await self._flood_safe(lambda m=message_id, s=shown, w=who: self._edit(m, s, w))
        if last in self._pending:
            shown, who = self._pending[last]
            await self._flood_safe(lambda: self._edit(last, shown, who, markup))
        elif markup is not None:
            await self._flood_safe(
                lambda: self.bot.edit_message_reply_markup(
                    chat_id=self.chat_id, message_id=int(last), reply_markup=markup
                )
            )

    async def _flood_safe(self, action: Callable[[], Awaitable[object]]) -> None:
        try:
            await self.gate.call(action)
        except (TelegramError, TimeoutError) as exc:
            # The reply is stored either way; a message we cannot edit (deleted by someone,
            # a flood wait of minutes) must not turn it into an error.
            log.warning("telegram: could not finish a reply in chat %s: %s", self.chat_id, exc)

    async def notice(self, text: str) -> str | None:
        return await self._send_html(escape(text[:TELEGRAM_LIMIT]))
