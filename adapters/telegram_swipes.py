"""Swipes on Telegram: 🔁 writes a new sibling into the same message, ◀ ▶ page through the
siblings in place (one message, edited), with the rating buttons kept underneath."""

from __future__ import annotations

import logging

from telegram import CallbackQuery, Message
from telegram.constants import ParseMode
from telegram.error import TelegramError

from adapters.telegram_reply import (
    NO_PREVIEW,
    SWIPE_AT,
    SWIPE_BACK,
    SWIPE_ON,
    FloodGate,
    TelegramReplyTarget,
    format_reply,
    rating_keyboard,
)
from bot.core import Core
from bot.errors import CharbotError
from bot.reply import ReplyTarget

log = logging.getLogger(__name__)

PLATFORM = "telegram"
SWIPE_STEPS = {SWIPE_BACK: -1, SWIPE_ON: 1, SWIPE_AT: 0}


async def swipe_target(core: Core, target: TelegramReplyTarget, message: Message) -> ReplyTarget:
    """The target for a 🔁 on ``message``, from a new ``target`` in its chat and topic: the
    new sibling is written into ``message``, whose keyboard then shows it as the last of the
    siblings."""
    chat_id, message_id = str(message.chat.id), str(message.message_id)
    shown = await core.swipes.position(PLATFORM, chat_id, message_id)
    count = (shown.count if shown is not None else 1) + 1
    target.swipe = (count, count)
    return core.swipes.in_place(target, PLATFORM, chat_id, message_id)


async def swipe_page(
    core: Core, gate: FloodGate, query: CallbackQuery, message: Message, step: int
) -> None:
    """◀ (-1) or ▶ (+1) pressed under ``message``: show that sibling in the same message,
    through ``gate``, the flood gate of its chat."""
    chat_id, message_id = str(message.chat.id), str(message.message_id)
    shown = await core.swipes.page(PLATFORM, chat_id, message_id, step)
    if shown is None:
        await query.answer("That reply is no longer stored.")
        return
    if step != 0 and not shown.moved:  # ◀ on the first or ▶ on the last: say so, edit nothing
        where, more = ("last", "🔁 writes another") if step > 0 else ("first", "▶ goes on")
        await query.answer(f"{shown.index + 1}/{shown.count}: the {where} version; {more}.")
        return
    await query.answer(f"{shown.index + 1}/{shown.count}")
    if step == 0:
        return
    try:
        character = core.character(shown.sibling.character)
    except CharbotError:  # a character removed from the config since
        character = core.default_character
    try:
        await gate.call(
            lambda: message.get_bot().edit_message_text(
                format_reply(character, shown.sibling.text),
                chat_id=message.chat.id,
                message_id=message.message_id,
                parse_mode=ParseMode.HTML,
                link_preview_options=NO_PREVIEW,
                reply_markup=rating_keyboard((shown.index + 1, shown.count)),
            )
        )
    except TelegramError as exc:
        # "not modified" at either end of the row, or a message deleted meanwhile.
        log.info("telegram: swipe edit in chat %s not shown: %s", chat_id, exc)
