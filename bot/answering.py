"""Answering: one character's reply to the end of a chain — the prompt, the generation
through the turn filter, the reply shown as it streams, and the stored row."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from bot.canary import Canaries
from bot.cast import Cast
from bot.characters import Character
from bot.config import ModelSettings
from bot.history import Chain, ChainCache
from bot.knowledge import Knowledge
from bot.memory import Memory
from bot.prompt import FittedPrompt, fit_prompt
from bot.reply import ReplyTarget, StreamRenderer
from bot.streaming import INTERRUPTED, ShownReply
from bot.turns import TurnFilter, cut_short_usage, scene_filter
from engine import ChatModel, GenerationRequest, Sampling, Usage
from engine.errors import Busy
from storage.records import HistoryMessage, NewReply, ReplyAddress
from storage.store import Store

log = logging.getLogger(__name__)

APOLOGY = "Sorry — I couldn't come up with a reply just now. Please try again."
BUSY = "I'm busy with other conversations — please try again shortly."

ChatKey = tuple[str, str, str]  # platform, chat id, thread id ("" for none)


@dataclass(frozen=True, slots=True)
class ReplyResult:
    """What the core did with one inbound message that it answered."""

    reply_id: int  # the stored assistant message's row id
    character: str
    text: str
    message_ids: list[str]  # platform ids of the messages that show the reply
    status: str  # "ok" | "error" | "busy" | "cancelled" | "interrupted"
    tokens: int = 0  # completion tokens the model wrote (a person's day budget counts them)


class Run:
    """A reply being generated, so that /reset (cancelled) or a stop (interrupted) can end it."""

    __slots__ = ("cancelled", "interrupted")

    def __init__(self) -> None:
        self.cancelled = False
        self.interrupted = False


class Runs:
    """The replies being generated, per chat."""

    def __init__(self) -> None:
        self._by_chat: dict[ChatKey, set[Run]] = {}

    @contextlib.contextmanager
    def running(self, key: ChatKey) -> Iterator[Run]:
        """A new run in chat ``key`` for as long as the block lasts."""
        run = Run()
        self._by_chat.setdefault(key, set()).add(run)
        try:
            yield run
        finally:
            self._by_chat[key].discard(run)
            if not self._by_chat[key]:
                del self._by_chat[key]

    def cancel(self, key: ChatKey) -> bool:
        """Cancel every reply being generated in chat ``key``; False when there is none."""
        runs = self._by_chat.get(key, set())
        for run in runs:
            run.cancelled = True
        return bool(runs)

    def interrupt_all(self) -> None:
        """Cut every reply short, to be shown with the [interrupted] marker (a stop)."""
        for runs in self._by_chat.values():
            for run in runs:
                run.cancelled = run.interrupted = True


async def notice(target: ReplyTarget, text: str) -> None:
    """Tell the user ``text``; a platform failing too is logged, never raised."""
    try:
        await target.notice(text)
    except Exception:  # the platform is failing too; the error row still gets stored
        log.warning("could not deliver a notice to the user", exc_info=True)


@dataclass(slots=True)
class _Outcome:
    """What showing one generation came to, as the reply row records it."""

    text: str = ""
    usage: Usage = field(default_factory=Usage)
    status: str = "ok"  # "ok" | "cancelled" | "interrupted" | "busy" | "error"
    error: str | None = None
    message_ids: list[str] = field(default_factory=list)


class Answerer:
    """Writes one character's reply to the end of a chain and stores it.

    A model failure stores an error row (with what the user already saw) and apologises; a
    full queue says "busy"; a cancelled or interrupted reply is stored as far as it got.
    """

    def __init__(
        self,
        *,
        store: Store,
        model: ChatModel,
        settings: ModelSettings,
        cast: Cast,
        knowledge: Knowledge,
        chains: ChainCache,
        runs: Runs,
        memory: Memory | None = None,
        canaries: Canaries | None = None,
    ) -> None:
        self.store = store
        self.memory = memory
        self.canaries = canaries if canaries is not None else Canaries()
        self.model = model
        self.settings = settings
        self.cast = cast
        self.knowledge = knowledge
        self.chains = chains
        self.runs = runs

    def sampling_for(self, character: Character) -> Sampling:
        """[model]'s sampling with the character's own overrides."""
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

    async def answer(
        self,
        *,
        key: ChatKey,
        conversation: int,
        chain: Chain,
        character: Character,
        user_name: str,
        target: ReplyTarget,
        regenerated_from: int | None = None,
        answers: int | None = None,
        private: bool | None = None,
        since: int = 0,
    ) -> ReplyResult:
        """Generate and show a reply to the end of ``chain``; store it. ``answers``: the user
        message it answers (marked answered with it; memory may take notes from it);
        ``regenerated_from``: the first sibling, when this is a regenerated one;
        ``private``: whether the chat is one-to-one (None: not known); ``since``: the
        character sees only the messages after this one (it joined the scene then)."""
        platform, chat_id, _thread = key
        seen = (tuple(m for m in chain if m.id > since) or chain[-1:]) if since else chain
        fitted = await self._prompt(key, conversation, character, seen, user_name, since)
        prompt = fitted.messages
        sampling = self.sampling_for(character)
        # The person answered decides the version during a canary (bot.canary): the author
        # of the message this reply follows, also for a regenerated take.
        person = chain[-1].author_id if chain and chain[-1].role == "user" else ""
        lora, slot = self.canaries.lora_for(character, platform, person)
        request = GenerationRequest(messages=prompt, sampling=sampling, lora=lora, lora_name=slot)
        address = ReplyAddress(conversation, platform, chat_id, chain[-1].id, character.name)
        # Records the reply as "streaming" once it is on the platform, so a crash mid-stream
        # leaves a row that the next start can finish.
        shown = ShownReply(target, self.store, address)
        started = time.perf_counter()
        with self.runs.running(key) as run:
            outcome = await self._show(request, shown, character, run, chain, user_name, key)
        latency_ms = (time.perf_counter() - started) * 1000
        await shown.settled()
        cancelled = outcome.status == "cancelled"
        reply = NewReply(
            address,
            outcome.text,
            platform_message_ids=outcome.message_ids,
            prompt=prompt,
            sampling=sampling.as_dict(),
            model=outcome.usage.model or self.model.name,
            lora_version=outcome.usage.lora_version,
            latency_ms=latency_ms,
            prompt_tokens=outcome.usage.prompt_tokens or None,
            completion_tokens=outcome.usage.completion_tokens or None,
            status="ok" if cancelled else outcome.status,
            error="cancelled" if cancelled else outcome.error,
            regenerated_from_id=regenerated_from,
        )
        reply_id = await self.store.add_reply(
            reply, streaming_id=shown.streaming_id, answers=answers
        )
        if outcome.status in ("ok", "cancelled"):
            said = HistoryMessage(reply_id, "assistant", outcome.text, character.name, "")
            chain = self.chains.put((*chain, said))
        if self.memory is not None:
            first = fitted.first_row  # of the lines it saw
            kept = seen[first].id if first < len(seen) else None
            learn = answers is not None and regenerated_from is None
            self.memory.answered(key, conversation, character, chain, kept, private, learn)
        return ReplyResult(
            reply_id,
            character.name,
            outcome.text,
            outcome.message_ids,
            outcome.status,
            outcome.usage.completion_tokens or 0,
        )

    async def _prompt(
        self,
        key: ChatKey,
        conversation: int,
        character: Character,
        chain: Chain,
        user_name: str,
        since: int = 0,
    ) -> FittedPrompt:
        notes = await self.knowledge.notes(character, [m.text for m in chain], self._text_tokens)
        budget = self.settings.context_tokens
        if self.memory is not None:
            return await self.memory.prompt(
                key, conversation, character, chain, budget, user_name, notes, since
            )
        return fit_prompt(self.model, character, chain, budget, user_name, notes)

    def _text_tokens(self, text: str) -> int:
        return self.model.count_tokens([{"role": "system", "content": text}])

    async def _show(
        self,
        request: GenerationRequest,
        shown: ShownReply,
        character: Character,
        run: Run,
        chain: Chain,
        user_name: str,
        key: ChatKey,
    ) -> _Outcome:
        """Generate into ``shown`` as the tokens come; what it came to."""
        outcome = _Outcome()
        async with StreamRenderer(shown, character) as renderer:
            try:
                speakers = scene_filter(self.cast.characters, chain, user_name)
                outcome.text, outcome.usage = await self._generate(request, renderer, run, speakers)
                if run.cancelled:
                    outcome.status = "interrupted" if run.interrupted else "cancelled"
                # A model that says nothing still gets a visible reply; one cut short by a
                # stop says so on the platform.
                outcome.text = outcome.text or "…"
                if outcome.status == "interrupted":
                    outcome.text = f"{outcome.text} {INTERRUPTED}"
                outcome.message_ids = await renderer.close(outcome.text)
            except Busy:
                outcome.status, outcome.error = "busy", "generation queue full"
                await notice(shown, BUSY)
            except Exception as exc:  # any model failure: apologise, keep running
                log.exception("generation failed for %s in %s/%s", character.name, *key[:2])
                outcome.status, outcome.error = "error", f"{type(exc).__name__}: {exc}"[:500]
                # what the user saw stays on record (the history reads only "ok" rows)
                outcome.text = renderer.shown_text
                outcome.message_ids = list(renderer.message_ids)
                await notice(shown, APOLOGY)
        return outcome

    async def _generate(
        self, request: GenerationRequest, renderer: StreamRenderer, run: Run, turns: TurnFilter
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
