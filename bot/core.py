"""The core: the one object adapters talk to. It wires the parts that do the work and
starts and stops them; nothing here knows a platform.

- :mod:`bot.intake` stores what arrives and answers it in its chat's line;
- :mod:`bot.answering` writes one reply: prompt, generation, streaming, the stored row;
- :mod:`bot.feedback` takes votes, corrections and regenerations of a shown reply;
- :mod:`bot.cast` knows the characters and picks who answers;
- :mod:`bot.limits` counts what each person used and says who is answered.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from bot.answering import Answerer, ReplyResult, Runs
from bot.canary import Canaries, CanaryRoute
from bot.cast import Cast, default_rule
from bot.characters import Character
from bot.config import LimitRules, MemorySettings, ModelSettings, SceneSettings
from bot.feedback import Feedback
from bot.greeting import show_greeting
from bot.history import HISTORY_LIMIT, ChainCache
from bot.intake import Intake
from bot.knowledge import Embedder, Knowledge
from bot.languages import script_warnings
from bot.limits import Limits
from bot.memory import Memory
from bot.messages import Inbound
from bot.recovery import Recovered, TargetFor, recover
from bot.reply import ReplyTarget
from bot.scenes import Scene, Scenes
from bot.sequencer import ChatLines
from bot.swipes import Swipes
from engine import ChatModel, Sampling
from storage.greetings import conversation_started
from storage.records import StoredInbound
from storage.store import Store

__all__ = ["Core", "ReplyResult"]

FINISH_S = 10.0  # at a stop, after the grace period: time for interrupted replies' final edits


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
        memory: MemorySettings | None = None,
        memory_model: ChatModel | None = None,
        embedder: Embedder | None = None,
        limits: LimitRules | None = None,
        scenes: SceneSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``answer_backlog_minutes``: after a restart, unanswered messages older than this are
        skipped; ``max_replies``: replies written at once over all chats (the rest wait);
        ``memory``: [memory] (None or disabled: no memory, prompts as without it), with
        ``memory_model`` for its summaries and notes ([memory] base_url) and ``embedder``
        for recall (default: MiniLM, shared with the knowledge files); ``limits``: [limits]
        (None: nobody is limited, as in most tests), counted on ``clock``; ``scenes``:
        [scenes], who speaks when several characters are in a chat (default: natural)."""
        self.store = store
        self.settings = settings
        self._cast = Cast(characters, default_character)
        self.swipes = Swipes(store)
        self.knowledge = Knowledge(
            settings.cache_dir / "knowledge", settings.knowledge_tokens, embedder=embedder
        )
        # The echo backend is the instant smoke test: no embedding model (lorebooks apply).
        self.knowledge.retrieval = settings.backend != "echo"
        self.answer_backlog_minutes = answer_backlog_minutes
        # The persisted LoRA choices (bot.loras.LoraSwitcher), set by charbot.wiring; None in a
        # core without versions (tests, benchmarks).
        self.loras: Any = None
        # Live canaries: which people meet a character's candidate version (bot.canary).
        self.canaries = Canaries()
        # Shared by the parts: one answering line per chat (messages, regenerations and
        # greetings take their place in it), the reply chains read lately, the runs.
        self._lines = ChatLines()
        chains = ChainCache(max_length=HISTORY_LIMIT)
        self._runs = Runs()
        self.memory: Memory | None = None
        if memory is not None and memory.enabled:
            self.memory = Memory(
                store,
                model,
                memory,
                context_tokens=settings.context_tokens,
                embedder=self.knowledge.embedder,
                writer=memory_model,
            )
        # A person's limits and a chat's share of the model (bot.limits); None: no limits.
        self.limits = Limits(limits, store, clock) if limits is not None else None
        self._answerer = Answerer(
            store=store,
            model=model,
            settings=settings,
            cast=self._cast,
            knowledge=self.knowledge,
            chains=chains,
            runs=self._runs,
            memory=self.memory,
            canaries=self.canaries,
        )
        scenes = scenes or SceneSettings()
        self.scenes = Scenes(
            store, self._cast, scenes.policy, scenes.max_chain, scenes.seed, scenes.chats
        )
        self._intake = Intake(
            store=store,
            scenes=self.scenes,
            cast=self._cast,
            answerer=self._answerer,
            swipes=self.swipes,
            chains=chains,
            lines=self._lines,
            max_replies=max_replies,
            limits=self.limits,
        )
        self._feedback = Feedback(
            store=store,
            cast=self._cast,
            answerer=self._answerer,
            chains=chains,
            lines=self._lines,
            scenes=self.scenes,
        )

    @property
    def model(self) -> ChatModel:
        """The model every reply is generated with."""
        return self._answerer.model

    @model.setter
    def model(self, model: ChatModel) -> None:  # a test swaps in a failing one
        self._answerer.model = model

    async def start(self) -> None:
        """Start the model and, at the same time, the knowledge indexes and their embedding
        model (one waited for the other before: their start-up times added up)."""
        if self.knowledge.retrieval and any(c.knowledge for c in self.characters):
            # Both threads import ``tokenizers`` (the embedder; transformers, for the model's
            # tokenizer). Imported by both at once it raced (a first start with a new
            # knowledge file died with KeyError: 'tokenizers'): import it once, here, first.
            importlib.import_module("tokenizers")
        knowledge = asyncio.ensure_future(
            asyncio.to_thread(self.knowledge.prepare, self.characters)
        )
        try:
            await self.model.start()
        except BaseException:
            knowledge.cancel()  # its thread finishes on its own; nobody needs the result
            raise
        await knowledge
        if self.memory is not None:
            await self.memory.start()

    async def close(self) -> None:
        if not self._intake.stopping:
            await self.stop(grace_s=0.0)
        if self.memory is not None:
            await self.memory.close()
        await self.model.close()

    def begin_stop(self) -> None:
        """The first step of a stop, before the adapters stop intake: no new reply starts
        (what is received from now on is stored and stays pending), and storing gives up
        instead of retrying a database that stays unavailable (so intake can end)."""
        self._intake.stopping = True

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop answering. Replies being generated get ``grace_s`` seconds to finish; then
        they are cut short and shown with an [interrupted] marker and their buttons.
        Messages still waiting for their place in line stay pending: the next start answers
        them."""
        self._intake.stopping = True
        tasks = list(self._intake.answering)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace_s)
        if not late:
            return
        self._runs.interrupt_all()
        # The final edits and the reply rows still need a moment. A reply still unfinished
        # after that keeps its "streaming" row, and the next start finishes it.
        _, late = await asyncio.wait(late, timeout=FINISH_S)
        for task in late:  # a platform or model that does not respond: give up on it
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    # -- characters ----------------------------------------------------------------------

    @property
    def characters(self) -> list[Character]:
        return self._cast.characters

    @property
    def default_character(self) -> Character:
        return self._cast.default

    async def default_rule(self) -> str | None:
        """One line for the start, when chats keep a character they chose with /character
        over ``default_character`` (which answers only chats that never chose)."""
        return default_rule(self.default_character.name, await self.store.chosen_characters())

    def script_warnings(self) -> list[str]:
        """One line per character whose card is mostly in a script the base model's tokenizer
        handles badly (bot.languages): what it cannot write, and the fix."""
        empty = self.model.count_tokens([{"role": "user", "content": ""}])

        def count(text: str) -> int:
            return self.model.count_tokens([{"role": "user", "content": text}]) - empty

        return script_warnings(self.characters, count, self.settings.base)

    def character(self, name: str) -> Character:
        """Look up a character by name (case-insensitive); raises UnknownCharacter."""
        return self._cast.get(name)

    def character_or_default(self, name: str | None) -> Character:
        """The character named ``name``, else the default (a name no longer configured)."""
        return self._cast.first_known(name)

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
        self._cast.with_lora(character.name, path)
        return version

    async def scene(self, platform: str, chat_id: str, default: str | None = None) -> Scene:
        """The chat's scene: its current character, then those who joined it."""
        current = await self.current_character(platform, chat_id, default)
        return await self.scenes.scene(platform, chat_id, current)

    async def join(self, platform: str, chat_id: str, name: str) -> Character:
        """``name`` joins the chat's scene beside its current character (persisted); it sees
        the chat from now on. Raises UnknownCharacter."""
        return await self.scenes.join(platform, chat_id, name)

    async def leave(self, platform: str, chat_id: str, name: str) -> bool:
        """``name`` leaves the chat's scene; whether it had joined. Raises UnknownCharacter."""
        return await self.scenes.leave(platform, chat_id, name)

    async def start_canary(self, route: CanaryRoute) -> str:
        """Load ``route``'s candidate under its own slot and send its share of people to it;
        return its version. A LoRA that does not load raises and changes nothing."""
        character = self.character(route.character)
        route = CanaryRoute(character.name, route.version, route.path, route.share, route.canary_id)
        version = await self.model.load_lora(route.slot, route.path)
        self.canaries.set(route)
        return version

    async def stop_canary(self, name: str) -> None:
        """Everyone meets the character's current version again; replies already generating
        on the candidate finish on it."""
        route = self.canaries.drop(name)
        if route is not None:
            await self.model.unload_lora(route.slot)

    async def set_character(self, platform: str, chat_id: str, name: str) -> Character:
        """Make ``name`` this chat's current character (persisted)."""
        character = self.character(name)
        await self.store.set_chat_character(platform, chat_id, character.name)
        return character

    async def current_character(
        self, platform: str, chat_id: str, default: str | None = None
    ) -> Character:
        """The chat's current character, else ``default``, else the configured default."""
        chosen = await self.store.chat_character(platform, chat_id)
        return self._cast.first_known(chosen, default)

    def sampling_for(self, character: Character) -> Sampling:
        """[model]'s sampling with the character's own overrides."""
        return self._answerer.sampling_for(character)

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
        return await self._intake.receive(msg, target, report_errors=report_errors)

    async def recover(
        self, platform: str, target_for: TargetFor, owns: Callable[[str], bool] | None = None
    ) -> Recovered:
        """At start-up: finish ``platform``'s replies cut off by the last run (edited to end
        with "[interrupted]", with their buttons), answer its unanswered messages younger
        than ``answer_backlog_minutes`` in order per chat, and mark older ones skipped.
        ``target_for(chat_id, thread_id, reply_to_platform_id)`` makes the adapter's reply
        target. ``owns(chat_id)``: only those chats (this process's Discord shards)."""
        return await recover(self, platform, target_for, self.answer_backlog_minutes, owns)

    def resume(
        self, msg: Inbound, stored: StoredInbound, target: ReplyTarget
    ) -> asyncio.Task[ReplyResult | None]:
        """Answer a message stored earlier (by a run that stopped before answering it) in
        its chat's line, after whatever is already waiting there."""
        return self._intake.resume(msg, stored, target)

    async def greet(
        self,
        platform: str,
        chat_id: str,
        thread_id: str | None,
        user: str,
        target: ReplyTarget,
        default: str | None = None,
        only_new: bool = False,
    ) -> int | None:
        """Show the chat's current character's greeting through ``target`` and store it as
        the next assistant message of the conversation (the first, in a new one); its row
        id. ``only_new``: only as the first message of a conversation (None otherwise), so
        two page loads of one empty chat greet once."""
        key = (platform, chat_id, thread_id or "")
        place = self._lines.enter(key)  # in line with the chat's messages
        try:
            await place.wait()
            if only_new and await conversation_started(self.store, *key):
                return None
            character = await self.current_character(platform, chat_id, default)
            return await show_greeting(self.store, key, character, user, target)
        finally:
            place.done()

    def cancel(self, platform: str, chat_id: str, thread_id: str | None = None) -> bool:
        """Stop the reply being written in this chat (it is stored, marked cancelled);
        False when none is being written."""
        return self._runs.cancel((platform, chat_id, thread_id or ""))

    async def reset(self, platform: str, chat_id: str, thread_id: str | None = None) -> None:
        """Start a fresh conversation in this chat and stop a reply being generated there."""
        self._runs.cancel((platform, chat_id, thread_id or ""))
        await self.store.reset_conversation(platform, chat_id, thread_id)

    # -- feedback ------------------------------------------------------------------------

    async def reply_character(self, platform: str, chat_id: str, message_id: str) -> str | None:
        """The character whose reply includes platform message ``message_id``, or None."""
        row = await self._feedback.reply(platform, chat_id, message_id)
        return row.character if row is not None else None

    async def vote(
        self, platform: str, chat_id: str, message_id: str, user_id: str, value: int
    ) -> bool:
        """Vote +1 / -1 on the reply containing ``message_id``; 0 removes the user's vote.

        One vote per user per reply: a new vote replaces the old. False if not a reply.
        """
        return await self._feedback.vote(platform, chat_id, message_id, user_id, value)

    async def correct(
        self, platform: str, chat_id: str, message_id: str, user_id: str, text: str
    ) -> bool:
        """Store ``text`` as a better reply for the reply containing ``message_id``."""
        return await self._feedback.correct(platform, chat_id, message_id, user_id, text)

    async def regenerate(
        self, platform: str, chat_id: str, message_id: str, target: ReplyTarget
    ) -> ReplyResult | None:
        """A new sibling of the reply containing ``message_id``, from the same history."""
        return await self._feedback.regenerate(platform, chat_id, message_id, target)
