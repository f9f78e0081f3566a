"""Intake: store what arrives at once, in arrival order per chat, then answer each message
in its chat's line — linked into the conversation first, answered if it is addressed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Coroutine
from typing import Any

from bot.answering import Answerer, ChatKey, ReplyResult, notice
from bot.cast import Cast
from bot.characters import Character
from bot.errors import CharbotError
from bot.history import HISTORY_LIMIT, Chain, ChainCache
from bot.limits import LIMITED, Limits
from bot.messages import Inbound
from bot.reply import ReplyTarget
from bot.scenes import Scenes, Turn, answering_back, next_speakers
from bot.sequencer import ChatLines, Place
from bot.swipes import Swipes
from storage.records import HistoryMessage, NewInbound, StoredInbound
from storage.schema import clean_text
from storage.store import StorageUnavailable, Store

log = logging.getLogger(__name__)

STORE_BUSY = "I'm having trouble saving messages right now — I'll answer as soon as I can."

Answering = asyncio.Task[ReplyResult | None]


class Intake:
    """Takes every inbound message in and answers it in its chat's line.

    Two lines per chat: a short one for storing (so row ids follow arrival) and the
    answering line (``lines``, shared with the rest of the core), where people take turns
    (bot/sequencer.py). At most ``max_replies`` replies are written at once over all chats,
    and with ``limits`` a person's limits decide whether a message is answered and a chat's
    share how many of its replies are written at once: never whether it is stored.
    """

    def __init__(
        self,
        *,
        store: Store,
        cast: Cast,
        answerer: Answerer,
        swipes: Swipes,
        chains: ChainCache,
        lines: ChatLines,
        max_replies: int,
        limits: Limits | None = None,
        scenes: Scenes | None = None,
    ) -> None:
        self.store = store
        self.scenes = scenes
        self.cast = cast
        self.answerer = answerer
        self.swipes = swipes
        self.chains = chains
        self.lines = lines
        self.limits = limits
        self._store_lines = ChatLines()
        # Per chat, the stored messages still waiting for their turn: turns are not arrival
        # order, so a message is linked to the newest message of the rest (see _link).
        self._waiting: dict[ChatKey, set[int]] = {}
        self.answering: set[Answering] = set()  # see receive()
        self._background: set[asyncio.Task[Any]] = set()  # notices sent on the side
        self.stopping = False  # set by Core.begin_stop: nothing new is answered
        # Replies being written at once, over all chats. More only queue up in the model and
        # the platform's HTTP pool, and they would starve intake of the event loop.
        self._replying = asyncio.Semaphore(max_replies)

    async def receive(
        self, msg: Inbound, target: ReplyTarget, *, report_errors: bool = True
    ) -> Answering | None:
        """Store ``msg`` and return at once with the task answering it (see
        :meth:`bot.core.Core.receive`)."""
        if not msg.text.strip():
            return None
        msg = dataclasses.replace(
            msg, text=clean_text(msg.text), author_name=clean_text(msg.author_name)
        )
        key = (msg.platform, msg.chat_id, msg.thread_id or "")
        storing, place = self._store_lines.enter(key), self.lines.enter(key, msg.author_id)
        stored: StoredInbound | None = None
        try:
            await storing.wait()
            # With nothing ahead of it in this chat, its place is known now.
            stored = await self._store(msg, target, link_now=place.first)
            if not stored.duplicate:
                self._waiting.setdefault(key, set()).add(stored.message_id)
        finally:
            storing.done()
            # The answering line is entered; it must be left in order even when nothing is
            # answered (a duplicate, a failure), so that is a task too.
            answer = stored if stored is not None and not stored.duplicate else None
            task = self._start(self._answer_in_line(place, key, msg, answer, target, report_errors))
        return task if stored is not None and not stored.duplicate else None

    def resume(self, msg: Inbound, stored: StoredInbound, target: ReplyTarget) -> Answering:
        """Answer a message stored earlier in its chat's line, after whatever waits there."""
        key = (msg.platform, msg.chat_id, msg.thread_id or "")
        place = self.lines.enter(key, msg.author_id)
        self._waiting.setdefault(key, set()).add(stored.message_id)
        return self._start(self._answer_in_line(place, key, msg, stored, target, True))

    def _start(self, work: Coroutine[Any, Any, ReplyResult | None]) -> Answering:
        task = asyncio.create_task(work)
        self.answering.add(task)
        task.add_done_callback(self._answered)
        return task

    async def _store(self, msg: Inbound, target: ReplyTarget, *, link_now: bool) -> StoredInbound:
        record = NewInbound(
            platform=msg.platform,
            chat_id=msg.chat_id,
            thread_id=msg.thread_id,
            platform_message_id=msg.message_id,
            author_id=msg.author_id,
            author_name=msg.author_name,
            text=msg.text,
            reply_to_platform_id=msg.reply_to_platform_id,
            created_at=msg.sent_at,
            wants_answer=msg.addressed,
            wanted_character=msg.character,
            default_character=msg.default_character,
        )
        noticed = False

        def waiting() -> None:  # the database is busy: tell the user once, then keep trying
            nonlocal noticed
            if not noticed and msg.addressed:
                noticed = True
                self._spawn(notice(target, STORE_BUSY))

        while True:
            try:
                return await self.store.store_inbound(record, link_now=link_now, on_wait=waiting)
            except StorageUnavailable:
                if self.stopping:
                    raise
                log.error("database unavailable; still holding message %s", msg.message_id)
                waiting()

    async def _answer_in_line(
        self,
        place: Place,
        key: ChatKey,
        msg: Inbound,
        stored: StoredInbound | None,
        target: ReplyTarget,
        report_errors: bool,
    ) -> ReplyResult | None:
        """Wait for this message's place in its chat's line, link it into the conversation,
        and answer it if it is addressed, unless the core is stopping (then it stays pending
        and the next start answers it)."""
        try:
            await place.wait()
            if stored is None:
                return None
            self._taken(key, stored.message_id)
            chain = await self._link(key, msg, stored)
            if not msg.addressed or self.stopping:
                return None
            try:
                character = self.cast.choose(msg, stored)
            except CharbotError as exc:
                # Told to the user; answered in that sense, so a restart does not repeat it.
                await self.store.set_progress([stored.message_id], "answered")
                if not report_errors:
                    raise
                await notice(target, str(exc))
                return None
            if self.limits is not None:
                verdict = await self.limits.admit(msg, character.name)
                if not verdict.answer:
                    # Stored and part of the conversation; a restart does not answer it.
                    await self.store.set_progress([stored.message_id], LIMITED)
                    if verdict.notice is not None:
                        await notice(target, verdict.notice)
                    return None
            async with self._share(msg), self._replying:
                if self.stopping:
                    return None
                return await self._speak(key, msg, stored, chain, character, target)
        finally:
            if stored is not None:
                self._taken(key, stored.message_id)
            place.done()

    async def _speak(
        self,
        key: ChatKey,
        msg: Inbound,
        stored: StoredInbound,
        chain: Chain,
        character: Character,
        target: ReplyTarget,
    ) -> ReplyResult | None:
        """Answer the message as ``character`` — or, in a scene of several characters, as
        each one the chat's policy gives the floor, in turn, each answering the line before
        it; then let them answer each other up to ``max_chain`` more lines, unless a person
        writes meanwhile. The last reply."""
        scene, policy = None, "natural"
        speakers = [character]
        if self.scenes is not None:
            current = self.cast.current(msg, stored)
            scene = await self.scenes.scene(msg.platform, msg.chat_id, current)
            policy = self.scenes.policy_for(msg.platform, msg.chat_id)
            if any(c.name == character.name for c in scene.present):
                turn = Turn(msg.text, self.cast.asked(msg, stored), _spoke_since(chain))
                speakers = next_speakers(
                    policy, scene.present, scene.present[0], turn, self.scenes.rng
                )
        if not speakers:  # manual, and nobody named: stored, part of the scene, unanswered
            await self.store.set_progress([stored.message_id], "answered")
            return None
        result, chained = None, 0
        queue = list(speakers)
        while queue:
            speaker = queue.pop(0)
            result = await self.answerer.answer(
                key=key,
                conversation=stored.conversation_id,
                chain=chain,
                character=speaker,
                user_name=msg.author_name,
                target=target,
                answers=stored.message_id if result is None else None,
                private=msg.private,
                since=scene.seen_from(speaker) if scene is not None else 0,
            )
            if self.limits is not None:
                self.limits.used(msg, result.tokens)
            grown = self.chains.get(result.reply_id)
            if result.status != "ok" or grown is None or scene is None:
                break
            chain = grown
            if queue or chained >= self.scenes.max_chain or self._interrupted(key, stored):
                continue
            if speaker not in scene.present:  # a guest named from outside the scene
                continue
            back = answering_back(policy, scene.present, speaker, result.text)
            if back:
                queue.append(back[0])
                chained += 1
        return result

    def _interrupted(self, key: ChatKey, stored: StoredInbound) -> bool:
        """Whether a person's message is waiting in the chat: characters stop answering
        each other and the floor returns to the people."""
        return bool(self._waiting.get(key, set()) - {stored.message_id})

    def _taken(self, key: ChatKey, message_id: int) -> None:
        """The message's turn has come: it no longer waits."""
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.discard(message_id)
            if not waiting:
                del self._waiting[key]

    def _share(self, msg: Inbound) -> contextlib.AbstractAsyncContextManager[None]:
        """One of the chat's places for a reply being written (no limits: no share)."""
        if self.limits is None:
            return contextlib.nullcontext()
        return self.limits.share(msg.platform, msg.chat_id)

    async def _link(self, key: ChatKey, msg: Inbound, stored: StoredInbound) -> Chain:
        """Link the stored message to the one it follows; its chain, ending with it.

        It follows the newest message of its conversation that is not still waiting for
        its turn. Linking takes a place in the chat's storing line, so no message of the
        chat is half stored (written, not yet known as waiting) meanwhile."""
        parent = stored.parent_id
        if not stored.linked:
            storing = self._store_lines.enter(key)
            try:
                await storing.wait()
                waiting = sorted(self._waiting.get(key, ()))
                parent = await self.store.settle(stored.message_id, stored.conversation_id, waiting)
            finally:
                storing.done()
        # After swipes, the conversation goes on from the sibling shown (choice stored).
        parent = await self.swipes.continue_from(
            stored.message_id, parent, msg.author_id, explicit=stored.replied is not None
        )
        me = HistoryMessage(
            stored.message_id, "user", msg.text, None, msg.author_name, msg.author_id
        )
        chain = self.chains.extend(parent, me)
        if chain is None:
            chain = self.chains.put(tuple(await self.store.history(me.id, HISTORY_LIMIT)))
        return chain

    def _answered(self, task: Answering) -> None:
        self.answering.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.error("answering failed: %s", error, exc_info=error)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _spoke_since(chain: Chain) -> frozenset[str]:
    """The characters who spoke since the person's previous message (pooled's rule)."""
    author = chain[-1].author_id if chain else ""
    spoke: set[str] = set()
    for row in reversed(chain[:-1]):
        if row.role == "user" and row.author_id == author:
            break
        if row.role == "assistant" and row.character:
            spoke.add(row.character.lower())
    return frozenset(spoke)
