"""The core: store what arrives, pick the character, build the prompt, stream the reply."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bot.characters import Character
from bot.config import ModelSettings
from bot.errors import CharbotError, UnknownCharacter
from bot.greeting import show_greeting
from bot.history import Chain, ChainCache
from bot.knowledge import Knowledge
from bot.messages import Inbound
from bot.progress import INTERRUPTED, ShownReply
from bot.prompt import build_prompt
from bot.recovery import Recovered, TargetFor, recover
from bot.reply import ReplyTarget, StreamRenderer
from bot.sequencer import ChatLines, Turn
from bot.swipes import Swipes
from bot.turns import TurnFilter, cut_short_usage, scene_filter
from engine import ChatModel, GenerationRequest, LoraSpec, Sampling, Usage
from engine.errors import Busy
from storage.records import (
    HistoryMessage,
    NewInbound,
    NewReply,
    ReplyAddress,
    StoredInbound,
    StoredMessage,
)
from storage.schema import clean_text
from storage.store import StorageUnavailable, Store

log = logging.getLogger(__name__)

APOLOGY = "Sorry — I couldn't come up with a reply just now. Please try again."
BUSY = "I'm busy with other conversations — please try again shortly."
FINISH_S = 10.0  # at a stop, after the grace period: time for interrupted replies' final edits
STORE_BUSY = "I'm having trouble saving messages right now — I'll answer as soon as I can."
HISTORY_LIMIT = 200  # messages walked up the reply tree before the token budget trims


@dataclass(frozen=True, slots=True)
class ReplyResult:
    """What the core did with one inbound message that it answered."""

    reply_id: int  # the stored assistant message's row id
    character: str
    text: str
    message_ids: list[str]  # platform ids of the messages that show the reply
    status: str  # "ok" | "error" | "busy" | "cancelled" | "interrupted"


class _Run:
    """A reply being generated, so that /reset (cancelled) or a stop (interrupted) can end it."""

    __slots__ = ("cancelled", "interrupted")

    def __init__(self) -> None:
        self.cancelled = False
        self.interrupted = False


class Core:
    """Platform-neutral bot logic. Adapters call these methods; nothing here knows a platform.

    The core holds no state that the database does not also hold, except caches and the
    per-chat ordering of messages in flight, so a restart loses nothing.
    """

    def __init__(
        self,
        *,
        store: Store,
        model: ChatModel,
        characters: Sequence[Character],
        settings: ModelSettings,
        default_character: str | None = None,
        answer_backlog_minutes: float = 10.0,
        max_replies: int = 16,
    ) -> None:
        """``answer_backlog_minutes``: after a restart, unanswered messages older than this are
        skipped; ``max_replies``: replies written at once over all chats (the rest wait)."""
        if not characters:
            raise ValueError("at least one character is needed")
        self.store = store
        self.model = model
        self.settings = settings
        self._characters = {c.name.lower(): c for c in characters}
        # By name, not a copy: switch_lora replaces the Character object.
        self._default_key = self.character(default_character or characters[0].name).name.lower()
        self._lines = ChatLines()
        self._store_lines = ChatLines()
        self._chains = ChainCache(max_length=HISTORY_LIMIT)
        self.swipes = Swipes(store)
        self.knowledge = Knowledge(settings.cache_dir / "knowledge", settings.knowledge_tokens)
        # The echo backend is the instant smoke test: no embedding model (lorebooks apply).
        self.knowledge.retrieval = settings.backend != "echo"
        self._runs: dict[tuple[str, str, str], set[_Run]] = {}
        self._answering: set[asyncio.Task[ReplyResult | None]] = set()  # see receive()
        self._background: set[asyncio.Task[Any]] = set()  # notices sent on the side
        self._stopping = False
        self.answer_backlog_minutes = answer_backlog_minutes
        # Replies being written at once, over all chats. More only queue up in the model and
        # the platform's HTTP pool, and they would starve intake of the event loop.
        self._replying = asyncio.Semaphore(max_replies)
        # The persisted LoRA choices (bot.loras.LoraSwitcher), set by charbot.wiring; None in a
        # core without versions (tests, benchmarks).
        self.loras: Any = None
        # A character is named when the message starts with its name ("Mara, ...") or
        # @-mentions it anywhere; merely talking about a character does not summon it.
        # Longest names first, so "Captain Mara" wins over "Mara".
        names = "|".join(sorted((re.escape(c.name) for c in characters), key=len, reverse=True))
        self._name_pattern = re.compile(
            rf"^\s*@?({names})(?!\w)|(?<!\w)@({names})(?!\w)", re.IGNORECASE
        )

    async def start(self) -> None:
        """Start the model and, at the same time, the knowledge indexes and their embedding
        model (one waited for the other before: their start-up times added up)."""
        knowledge = asyncio.ensure_future(
            asyncio.to_thread(self.knowledge.prepare, self.characters)
        )
        try:
            await self.model.start()
        except BaseException:
            knowledge.cancel()  # its thread finishes on its own; nobody needs the result
            raise
        await knowledge

    async def close(self) -> None:
        if not self._stopping:
            await self.stop(grace_s=0.0)
        await self.model.close()

    # -- characters ----------------------------------------------------------------------

    @property
    def characters(self) -> list[Character]:
        return list(self._characters.values())

    @property
    def default_character(self) -> Character:
        return self._characters[self._default_key]

    def character(self, name: str) -> Character:
        """Look up a character by name (case-insensitive); raises UnknownCharacter."""
        found = self._characters.get(name.strip().lower())
        if found is None:
            raise UnknownCharacter(name, [c.name for c in self._characters.values()])
        return found

    async def switch_lora(self, name: str, path: str | None) -> str | None:
        """Give character ``name`` the LoRA at ``path`` (None: the bare base model) while the
        bot runs; return the LoRA's version. Replies already generating finish on the
        version they started with. A bad LoRA raises LoraLoadError and changes
        nothing."""
        character = self.character(name)
        version = None
        if path is not None:
            version = await self.model.load_lora(character.name, path)
        else:
            await self.model.unload_lora(character.name)
        updated = dataclasses.replace(character, lora=path)
        self._characters[character.name.lower()] = updated
        return version

    async def set_character(self, platform: str, chat_id: str, name: str) -> Character:
        """Make ``name`` this chat's current character (persisted)."""
        character = self.character(name)
        await self.store.set_chat_character(platform, chat_id, character.name)
        return character

    async def current_character(
        self, platform: str, chat_id: str, default: str | None = None
    ) -> Character:
        """The chat's current character, else ``default``, else the configured default."""
        return self._first_known(await self.store.chat_character(platform, chat_id), default)

    def character_or_default(self, name: str | None) -> Character:
        """The character named ``name``, else the default (a name no longer configured)."""
        return self._first_known(name)

    def _first_known(self, *names: str | None) -> Character:
        """The first of ``names`` that is a configured character, else the default."""
        for name in names:
            if name and name.lower() in self._characters:
                return self._characters[name.lower()]
        return self.default_character

    # -- messages ------------------------------------------------------------------------

    async def handle(self, msg: Inbound, target: ReplyTarget) -> ReplyResult | None:
        """Store ``msg``, then answer it through ``target`` if it is addressed; return once
        answered. Raises UnknownCharacter when ``msg.character`` names no character (the
        message is stored). Adapters call :meth:`receive` instead, which does not wait."""
        task = await self.receive(msg, target, report_errors=False)
        return None if task is None else await task

    async def receive(
        self, msg: Inbound, target: ReplyTarget, *, report_errors: bool = True
    ) -> asyncio.Task[ReplyResult | None] | None:
        """Intake: store ``msg`` (one short transaction) and return at once. Answering runs
        in the core's own per-chat line, as the task returned (None when there is nothing to
        answer: empty text, or a redelivered message already stored).

        Messages in one chat are stored and answered in arrival order (the order is fixed
        synchronously here, before any await); chats run concurrently. While the database is
        busy the user gets one notice and storing is retried until it succeeds; only a stop
        ends that (StorageUnavailable). With ``report_errors`` our own errors (an unknown
        character) become a notice to the user instead of the task's exception.
        """
        if not msg.text.strip():
            return None
        msg = dataclasses.replace(
            msg, text=clean_text(msg.text), author_name=clean_text(msg.author_name)
        )
        key = (msg.platform, msg.chat_id, msg.thread_id or "")
        # Two lines per chat: a short one for storing (row ids follow arrival), a long one
        # for answering.
        storing, turn = self._store_lines.enter(key), self._lines.enter(key)
        stored: StoredInbound | None = None
        try:
            await storing.wait()
            # With nothing ahead of it in this chat, its place is known now.
            stored = await self._store_inbound(msg, target, link_now=turn.first)
        finally:
            storing.done()
            # The answering line is entered; it must be left in order even when nothing is
            # answered (a duplicate, a failure), so that is a task too.
            answer = stored if stored is not None and not stored.duplicate else None
            task = asyncio.create_task(
                self._answer_turn(turn, key, msg, answer, target, report_errors)
            )
            self._answering.add(task)
            task.add_done_callback(self._answered)
        return task if stored is not None and not stored.duplicate else None

    async def recover(self, platform: str, target_for: TargetFor) -> Recovered:
        """At start-up: finish ``platform``'s replies cut off by the last run (edited to end
        with "[interrupted]", with their buttons), answer its unanswered messages younger
        than ``answer_backlog_minutes`` in order per chat, and mark older ones skipped.
        ``target_for(chat_id, thread_id, reply_to_id)`` makes the adapter's reply target."""
        return await recover(self, platform, target_for, self.answer_backlog_minutes)

    def resume(
        self, msg: Inbound, stored: StoredInbound, target: ReplyTarget
    ) -> asyncio.Task[ReplyResult | None]:
        """Answer a message stored earlier (by a run that stopped before answering it) in
        its chat's line, after whatever is already waiting there."""
        key = (msg.platform, msg.chat_id, msg.thread_id or "")
        task = asyncio.create_task(
            self._answer_turn(self._lines.enter(key), key, msg, stored, target, True)
        )
        self._answering.add(task)
        task.add_done_callback(self._answered)
        return task

    async def _store_inbound(
        self, msg: Inbound, target: ReplyTarget, *, link_now: bool
    ) -> StoredInbound:
        record = NewInbound(
            platform=msg.platform,
            chat_id=msg.chat_id,
            thread_id=msg.thread_id,
            platform_message_id=msg.message_id,
            author_id=msg.author_id,
            author_name=msg.author_name,
            text=msg.text,
            reply_to_platform_id=msg.reply_to_id,
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
                self._spawn(self._notice(target, STORE_BUSY))

        while True:
            try:
                return await self.store.store_inbound(record, link_now=link_now, on_wait=waiting)
            except StorageUnavailable:
                if self._stopping:
                    raise
                log.error("database unavailable; still holding message %s", msg.message_id)
                waiting()

    async def _answer_turn(
        self,
        turn: Turn,
        key: tuple[str, str, str],
        msg: Inbound,
        stored: StoredInbound | None,
        target: ReplyTarget,
        report_errors: bool,
    ) -> ReplyResult | None:
        """Wait for this message's turn in its chat, link it into the conversation, and
        answer it if it is addressed, unless the core is stopping (then it stays pending and
        the next start answers it)."""
        try:
            await turn.wait()
            if stored is None:
                return None
            parent = stored.parent_id
            if not stored.linked:
                parent = await self.store.settle(stored.message_id, stored.conversation_id)
            # After swipes, the conversation goes on from the sibling shown (choice stored).
            parent = await self.swipes.continue_from(
                stored.message_id, parent, msg.author_id, explicit=stored.replied is not None
            )
            me = HistoryMessage(stored.message_id, "user", msg.text, None, msg.author_name)
            chain = self._chains.extend(parent, me)
            if chain is None:
                chain = self._chains.put(tuple(await self.store.history(me.id, HISTORY_LIMIT)))
            if not msg.addressed or self._stopping:
                return None
            try:
                character = self._choose(msg, stored)
            except CharbotError as exc:
                # Told to the user; answered in that sense, so a restart does not repeat it.
                await self.store.set_progress([stored.message_id], "answered")
                if not report_errors:
                    raise
                await self._notice(target, str(exc))
                return None
            async with self._replying:
                if self._stopping:
                    return None
                return await self._answer(
                    key=key,
                    conversation=stored.conversation_id,
                    chain=chain,
                    character=character,
                    user_name=msg.author_name,
                    target=target,
                    answers=stored.message_id,
                )
        finally:
            turn.done()

    def _answered(self, task: asyncio.Task[ReplyResult | None]) -> None:
        self._answering.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.error("answering failed: %s", error, exc_info=error)

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def begin_stop(self) -> None:
        """The first step of a stop, before the adapters stop intake: no new reply starts
        (what is received from now on is stored and stays pending), and storing gives up
        instead of retrying a database that stays unavailable (so intake can end)."""
        self._stopping = True

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop answering. Replies being generated get ``grace_s`` seconds to finish; then
        they are cut short and shown with an [interrupted] marker and their buttons.
        Messages still waiting for their turn stay pending: the next start answers them."""
        self._stopping = True
        tasks = list(self._answering)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace_s)
        if not late:
            return
        for runs in self._runs.values():
            for run in runs:
                run.cancelled = run.interrupted = True
        # The final edits and the reply rows still need a moment. A reply still unfinished
        # after that keeps its "streaming" row, and the next start finishes it.
        _, late = await asyncio.wait(late, timeout=FINISH_S)
        for task in late:  # a platform or model that does not respond: give up on it
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    def _choose(self, msg: Inbound, stored: StoredInbound) -> Character:
        """An explicit choice, a name at the start or @-mentioned, the character replied to,
        the chat's current character, the adapter's default for the chat, the default."""
        if msg.character:
            return self.character(msg.character)
        named = self._name_pattern.search(msg.text)
        if named:
            return self.character(named.group(1) or named.group(2))
        replied = stored.replied
        continuing = (
            replied.character if replied is not None and replied.role == "assistant" else None
        )
        return self._first_known(continuing, stored.chat_character, msg.default_character)

    def sampling_for(self, character: Character) -> Sampling:
        s = self.settings
        return Sampling(
            max_new_tokens=character.max_new_tokens or s.max_new_tokens,
            temperature=s.temperature if character.temperature is None else character.temperature,
            top_p=s.top_p if character.top_p is None else character.top_p,
            repetition_penalty=(
                s.repetition_penalty
                if character.repetition_penalty is None
                else character.repetition_penalty
            ),
        )

    async def _answer(
        self,
        *,
        key: tuple[str, str, str],
        conversation: int,
        chain: Chain,
        character: Character,
        user_name: str,
        target: ReplyTarget,
        regenerated_from: int | None = None,
        answers: int | None = None,
    ) -> ReplyResult:
        """Generate and show a reply to the end of ``chain``; store it. ``answers``: the user
        message it answers (marked answered with it)."""
        platform, chat_id, _thread = key
        parent = chain[-1].id
        notes = await self.knowledge.notes(character, [t.text for t in chain], self._text_tokens)
        prompt = build_prompt(
            self.model, character, chain, self.settings.context_tokens, user_name, notes
        )
        sampling = self.sampling_for(character)
        lora = LoraSpec(character.name, character.lora) if character.lora else None
        request = GenerationRequest(
            messages=prompt, sampling=sampling, lora=lora, lora_name=character.name
        )

        run = _Run()
        self._runs.setdefault(key, set()).add(run)
        started = time.perf_counter()
        text, usage, status, error = "", Usage(), "ok", None
        message_ids: list[str] = []
        # Records the reply as "streaming" once it is on the platform, so a crash mid-stream
        # leaves a row that the next start can finish.
        address = ReplyAddress(conversation, platform, chat_id, parent, character.name)
        shown = ShownReply(target, self.store, address)
        try:
            async with StreamRenderer(shown, character) as renderer:
                try:
                    turns = scene_filter(self.characters, chain, user_name)
                    text, usage = await self._generate(request, renderer, run, turns)
                    if run.cancelled:
                        status = "interrupted" if run.interrupted else "cancelled"
                    text = text or "…"  # a model that says nothing still gets a visible reply
                    if status == "interrupted":  # cut short by a stop: say so on the platform
                        text = f"{text} {INTERRUPTED}"
                    message_ids = await renderer.close(text)
                except Busy:
                    status, error = "busy", "generation queue full"
                    await self._notice(target, BUSY)
                except Exception as exc:  # any model failure: apologise, keep running
                    log.exception("generation failed for %s in %s/%s", character.name, *key[:2])
                    status, error = "error", f"{type(exc).__name__}: {exc}"[:500]
                    # what the user saw stays on record (the history reads only "ok" rows)
                    text, message_ids = renderer.shown_text, list(renderer.message_ids)
                    await self._notice(target, APOLOGY)
        finally:
            self._runs[key].discard(run)
            if not self._runs[key]:
                del self._runs[key]
        latency_ms = (time.perf_counter() - started) * 1000
        await shown.settled()
        reply = NewReply(
            address,
            text,
            platform_message_ids=message_ids,
            prompt=prompt,
            sampling=sampling.as_dict(),
            model=usage.model or self.model.name,
            lora_version=usage.lora_version,
            latency_ms=latency_ms,
            prompt_tokens=usage.prompt_tokens or None,
            completion_tokens=usage.completion_tokens or None,
            status="ok" if status == "cancelled" else status,
            error=error if status != "cancelled" else "cancelled",
            regenerated_from_id=regenerated_from,
        )
        reply_id = await self.store.add_reply(
            reply, streaming_id=shown.streaming_id, answers=answers
        )
        if status in ("ok", "cancelled"):
            self._chains.put(
                (*chain, HistoryMessage(reply_id, "assistant", text, character.name, ""))
            )
        return ReplyResult(reply_id, character.name, text, message_ids, status)

    def _text_tokens(self, text: str) -> int:
        return self.model.count_tokens([{"role": "system", "content": text}])

    async def _generate(
        self, request: GenerationRequest, renderer: StreamRenderer, run: _Run, turns: TurnFilter
    ) -> tuple[str, Usage]:
        # Text goes through the turn filter: a reply ends where another speaker's turn
        # starts, and the cut text is neither shown nor stored.
        text, usage, chunks = "", Usage(), 0
        stream = self.model.stream(request)
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                if chunk.text:
                    chunks += 1
                    shown = turns.feed(chunk.text)
                    if shown != text:
                        text = shown
                        await renderer.feed(text)
                    if turns.stopped:
                        usage = cut_short_usage(usage, request, chunks)
                        break
                if run.cancelled:
                    usage.finish_reason = "cancelled"
                    break
        finally:
            await stream.aclose()  # type: ignore[attr-defined]  # frees the model's slot
        return turns.text, usage

    @staticmethod
    async def _notice(target: ReplyTarget, text: str) -> None:
        try:
            await target.notice(text)
        except Exception:  # the platform is failing too; the error row still gets stored
            log.warning("could not deliver a notice to the user", exc_info=True)

    # -- feedback ------------------------------------------------------------------------

    async def _reply_row(
        self, platform: str, chat_id: str, message_id: str
    ) -> StoredMessage | None:
        row = await self.store.find_message(platform, chat_id, message_id)
        if row is None or row.role != "assistant":
            return None
        return row

    async def reply_character(self, platform: str, chat_id: str, message_id: str) -> str | None:
        """The character whose reply includes platform message ``message_id``, or None."""
        row = await self._reply_row(platform, chat_id, message_id)
        return row.character if row is not None else None

    async def rate(
        self, platform: str, chat_id: str, message_id: str, user_id: str, value: int
    ) -> bool:
        """Vote +1 / -1 on the reply containing ``message_id``; 0 removes the user's vote.

        One vote per user per reply: a new vote replaces the old. False if not a reply.
        """
        row = await self._reply_row(platform, chat_id, message_id)
        if row is None:
            return False
        await self.store.set_rating(row.id, user_id, value)
        return True

    async def correct(
        self, platform: str, chat_id: str, message_id: str, user_id: str, text: str
    ) -> bool:
        """Store ``text`` as a better reply for the reply containing ``message_id``."""
        row = await self._reply_row(platform, chat_id, message_id)
        if row is None or not text.strip():
            return False
        await self.store.add_correction(row.id, user_id, text.strip())
        return True

    async def regenerate(
        self, platform: str, chat_id: str, message_id: str, target: ReplyTarget
    ) -> ReplyResult | None:
        """A new sibling of the reply containing ``message_id``, from the same history."""
        row = await self._reply_row(platform, chat_id, message_id)
        if row is None or row.parent_id is None:
            return None
        parent = await self.store.get_message(row.parent_id)
        thread = await self.store.conversation_thread(row.conversation_id)
        key = (platform, chat_id, thread)
        turn = self._lines.enter(key)
        try:
            await turn.wait()
            character = self._first_known(row.character)
            return await self._answer(
                key=key,
                conversation=row.conversation_id,
                chain=self._chains.get(row.parent_id)
                or tuple(await self.store.history(row.parent_id, HISTORY_LIMIT)),
                character=character,
                user_name=parent.author_name if parent is not None else "user",
                target=target,
                regenerated_from=row.regenerated_from_id or row.id,
            )
        finally:
            turn.done()

    async def greet(
        self,
        platform: str,
        chat_id: str,
        thread_id: str | None,
        user: str,
        target: ReplyTarget,
        default: str | None = None,
    ) -> int:
        """Show the chat's current character's greeting through ``target`` and store it as
        the next assistant turn of the conversation (the first, in a new one); its row id."""
        key = (platform, chat_id, thread_id or "")
        turn = self._lines.enter(key)  # in line with the chat's messages
        try:
            await turn.wait()
            character = await self.current_character(platform, chat_id, default)
            return await show_greeting(self.store, key, character, user, target)
        finally:
            turn.done()

    def cancel(self, platform: str, chat_id: str, thread_id: str | None = None) -> bool:
        """Stop the reply being written in this chat (it is stored, marked cancelled);
        False when none is being written."""
        runs = self._runs.get((platform, chat_id, thread_id or ""), set())
        for run in runs:
            run.cancelled = True
        return bool(runs)

    async def reset(self, platform: str, chat_id: str, thread_id: str | None = None) -> None:
        """Start a fresh conversation in this chat and stop a reply being generated there."""
        for run in self._runs.get((platform, chat_id, thread_id or ""), ()):
            run.cancelled = True
        await self.store.reset_conversation(platform, chat_id, thread_id)
