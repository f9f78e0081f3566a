"""At start-up, finish what a stopped run left: answer the recent backlog, skip the old,
and finish replies that were cut off mid-stream."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bot.characters import Character
from bot.messages import Inbound
from bot.reply import ReplyTarget
from bot.streaming import finish_interrupted
from storage.records import StoredInbound
from storage.store import Store
from storage.unfinished import cut_off, mark_interrupted, unanswered

log = logging.getLogger(__name__)

# chat id, thread id ("" or None: none), platform id of the message to reply to
TargetFor = Callable[[str, str | None, str | None], ReplyTarget]


class Resumer(Protocol):
    """What recovery needs of the core: its store, a character by name (the default for
    a name no longer configured) and answering a stored message in its chat's line."""

    store: Store

    def character_or_default(self, name: str | None) -> Character: ...

    def resume(self, msg: Inbound, stored: StoredInbound, target: ReplyTarget) -> object: ...


@dataclass(frozen=True, slots=True)
class Recovered:
    """What recovery did for one platform."""

    answered: int  # backlog messages queued for answering, in order per chat
    skipped: int  # older than the backlog window: marked skipped, not answered
    interrupted: int  # cut-off replies finished with the [interrupted] marker


async def recover(
    core: Resumer,
    platform: str,
    target_for: TargetFor,
    backlog_minutes: float,
    owns: Callable[[str], bool] | None = None,
) -> Recovered:
    """Finish cut-off replies first (they are older than anything pending), then queue the
    pending messages younger than ``backlog_minutes`` in their chats' lines, oldest first;
    older ones are marked skipped. Returns at once; the answers follow in the background.
    ``owns(chat_id)``: only those chats (a Discord shard's), when the platform's chats are
    split over several processes."""
    store = core.store
    interrupted = 0
    for reply in await cut_off(store, platform):
        if owns is not None and not owns(reply.chat_id):
            continue
        target = target_for(reply.chat_id, reply.thread_id or None, None)
        character = core.character_or_default(reply.character)
        try:
            text = await finish_interrupted(target, reply.platform_ids, reply.text, character)
        except Exception as exc:  # deleted meanwhile, or the platform refuses: still record
            log.warning("could not finish interrupted reply %s: %s", reply.id, exc)
            text = reply.text
        await mark_interrupted(store, platform, reply, text)
        interrupted += 1
    oldest = time.time() - backlog_minutes * 60
    pending = await unanswered(store, platform)
    if owns is not None:
        pending = [m for m in pending if owns(m.chat_id)]
    old = [m.id for m in pending if m.created_at < oldest]
    await store.set_progress(old, "skipped")
    queued = 0
    for message in pending:
        if message.created_at < oldest:
            continue
        msg = Inbound(
            platform=platform,
            chat_id=message.chat_id,
            message_id=message.platform_message_id or "",
            author_id=message.author_id,
            author_name=message.author_name,
            text=message.text,
            thread_id=message.thread_id or None,
            character=message.wanted_character,
            default_character=message.default_character,
            sent_at=message.created_at,
        )
        stored = StoredInbound(
            conversation_id=message.conversation_id,
            message_id=message.id,
            parent_id=message.parent_id,
            # An unlinked message is linked again; for the conversation's first that is a
            # no-op, so an ambiguous NULL is safe to settle.
            linked=message.parent_id is not None,
            replied=None,
            chat_character=await store.chat_character(platform, message.chat_id),
        )
        target = target_for(message.chat_id, message.thread_id or None, msg.message_id or None)
        core.resume(msg, stored, target)
        queued += 1
    if interrupted or queued or old:
        log.warning(
            "%s: answering %s messages left from the last run, skipped %s older than %g "
            "minutes, finished %s interrupted replies",
            platform,
            queued,
            len(old),
            backlog_minutes,
            interrupted,
        )
    return Recovered(answered=queued, skipped=len(old), interrupted=interrupted)
