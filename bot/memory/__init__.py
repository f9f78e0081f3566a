"""Memory: what a character remembers beyond the history that fits in its prompt.

Three parts, each in its own module, put together here for the answerer:

- :mod:`bot.memory.recall` — old messages of the same chat (and thread), found by meaning
  and shown as recalled past events;
- :mod:`bot.memory.summaries` — the conversation's rolling summary, the story so far;
- :mod:`bot.memory.notes` — what the character knows about each person speaking.

:meth:`Memory.prompt` builds a reply's prompt with them (the exact text inserted is in the
stored prompt, so the export trains on what the model saw); :meth:`Memory.answered` starts
the background work a reply leaves: embedding new messages, extending the summary, taking
notes from what the person said. ``[memory] enabled = false`` builds no Memory at all, and
prompts are exactly as they were without it.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Sequence
from typing import Any

from bot.characters import Character
from bot.config import MemorySettings
from bot.knowledge import Embedder, MiniLM
from bot.memory.extract import model_note, rule_notes
from bot.memory.notes import NoteError, Notes, Person
from bot.memory.recall import ChatKey, Indexer, Recall
from bot.memory.summaries import Summarizer, speaker
from bot.prompt import FittedPrompt, PromptMemory, fit_prompt
from engine import ChatModel
from storage import memory as sql
from storage.records import HistoryMessage, MemoryMessage
from storage.store import Store

__all__ = ["Memory", "NoteError", "Person"]

log = logging.getLogger(__name__)

SPEAKERS = 3  # people whose notes enter, the newest speaker first
SPEAKER_ROWS = 8  # ... among the authors of the last rows
QUERY_TURNS = 3  # the turns embedded together as the second recall query
LINE_TOKENS = 64  # of one recalled message


class Memory:
    """Recall, summaries and notes for one bot (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        model: ChatModel,
        settings: MemorySettings,
        *,
        context_tokens: int,
        embedder: Embedder | None = None,
        writer: ChatModel | None = None,
        progress: bool = True,
    ) -> None:
        """``model``: the bot's model (counting tokens; writing, unless ``writer`` — the
        ``[memory] base_url`` model — is given, which this object starts and closes)."""
        self.store = store
        self.model = model
        self.settings = settings
        self.embedder = embedder or MiniLM()
        self.own_writer = writer
        self.writer = writer or model
        self.indexer = Indexer(store, self.embedder, progress=progress)
        self.recall = Recall(
            store,
            self.embedder,
            top_k=settings.recall_top_k,
            min_score=settings.recall_min_score,
            cache_bytes=settings.cache_mb << 20,
            indexer=self.indexer,
        )
        self.summaries = Summarizer(store, self.writer, settings, context_tokens)
        self.notes = Notes(store, settings)
        self._covered: dict[int, int] = {}  # conversation -> last message its summary covers
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Load the embedding model (in a thread), start the writer model and the indexer."""
        await asyncio.to_thread(self.embedder.encode, ["warm-up"])
        if self.own_writer is not None:
            await self.own_writer.start()
        self.indexer.start()

    async def settled(self) -> None:
        """Wait for the background work started so far: notes, summaries, embedding."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.summaries.settled()
        await self.indexer.catch_up()

    async def close(self) -> None:
        await self.indexer.close()
        await self.summaries.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.own_writer is not None:
            await self.own_writer.close()

    # -- a reply's prompt ----------------------------------------------------------------

    async def prompt(
        self,
        key: ChatKey,
        conversation_id: int,
        character: Character,
        chain: Sequence[HistoryMessage],
        budget: int,
        user_name: str,
        knowledge: Sequence[str],
        since: int = 0,
    ) -> FittedPrompt:
        """The reply's prompt with the story so far, notes about the people speaking, and
        old messages recalled from outside the history it holds (only newer than message
        ``since``: a character that joined the scene then never recalls what came before)."""
        count = self._text_tokens
        summary, about = await asyncio.gather(
            self.summaries.current(conversation_id),
            self.notes.for_prompt(character.name, key[0], key[1], speakers(chain), count),
        )
        self._covered[conversation_id] = summary.last_message_id if summary else 0
        story = ""
        if summary is not None:
            story = self.model.truncate(summary.text, self.settings.summary_tokens)
        # At most a quarter of the prompt, so that a small context keeps its newest turns.
        room = min(self.settings.recall_tokens, budget // 4)
        memory = PromptMemory(story, about, (), room)
        fitted = fit_prompt(self.model, character, chain, budget, user_name, knowledge, memory)
        lines = await self._recalled(key, chain, fitted.first_row, room, since) if chain else []
        # The history stays where it was fitted: the lines take the room reserved for them.
        used = sum(count(line) + 2 for line in lines)
        memory = PromptMemory(story, about, lines, max(0, room - used))
        if not lines:
            memory = PromptMemory(story, about)
        return fit_prompt(self.model, character, chain, budget, user_name, knowledge, memory)

    async def _recalled(
        self, key: ChatKey, chain: Sequence[HistoryMessage], first_row: int, room: int, since: int
    ) -> list[str]:
        """Recalled lines, oldest first, within ``room`` tokens: messages of this chat older
        than the oldest one the prompt holds."""
        if room <= 0 or first_row >= len(chain):
            return []
        newest = chain[-1].text
        recent = " ".join(row.text for row in chain[-QUERY_TURNS:])
        queries = [newest] if recent == newest else [newest, recent]
        try:
            found = await self.recall.search(key, queries, chain[first_row].id, since)
        except Exception:  # recall is a help, never a reason not to answer
            log.warning("memory: recall failed; answering without it", exc_info=True)
            return []
        budget, chosen = room, []
        for message in found:  # best first
            line = recalled_line(message, self.model.truncate, LINE_TOKENS)
            cost = self._text_tokens(line) + 2
            if cost <= budget:
                chosen.append((message.id, line))
                budget -= cost
        return [line for _, line in sorted(chosen)]

    def _text_tokens(self, text: str) -> int:
        return self.model.count_tokens([{"role": "system", "content": text}])

    # -- after a reply -------------------------------------------------------------------

    def answered(
        self,
        key: ChatKey,
        conversation_id: int,
        character: Character,
        chain: Sequence[HistoryMessage],
        first_kept: int | None,
        private: bool | None,
        learn: bool,
    ) -> None:
        """Start what a reply leaves to do, in the background: embed the new messages,
        extend the summary if it is due, and (``learn``: the reply answered a person's new
        message) take notes from what they said."""
        self.indexer.wake()
        covered = self._covered.get(conversation_id, 0)
        self.summaries.consider(conversation_id, character.name, chain, covered, first_kept)
        said = next((row for row in reversed(chain) if row.role == "user"), None)
        if learn and said is not None and said.author_id and self.settings.extract != "off":
            person = Person(key[0], said.author_id, said.author_name, key[1], private)
            self._spawn(self._learn(character.name, person, said))

    async def _learn(self, character: str, person: Person, said: HistoryMessage) -> None:
        try:
            forgotten = await self.store.read(
                lambda conn: sql.is_forgotten(conn, person.platform, person.user_id)
            )
            if forgotten:  # `charbot forget-user`: no memory of them is built again
                return
            if self.settings.extract == "model":
                note = await model_note(self.writer, person.name, said.text)
                found = [note] if note else []
            else:
                found = rule_notes(said.text)
            for text in found:
                if len(text) <= self.settings.note_chars:
                    source = self.settings.extract
                    await self.notes.remember(
                        character, person, text, source=source, message_id=said.id
                    )
        except Exception:
            log.warning("memory: taking a note failed", exc_info=True)

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def speakers(chain: Sequence[HistoryMessage]) -> list[tuple[str, str]]:
    """(user id, name) of the people among the last rows, the newest speaker first."""
    found: list[tuple[str, str]] = []
    for row in reversed(chain[-SPEAKER_ROWS:]):
        if row.role == "user" and row.author_id and row.author_id not in {u for u, _ in found}:
            found.append((row.author_id, row.author_name))
    return found[:SPEAKERS]


def recalled_line(message: MemoryMessage, truncate: Callable[[str, int], str], tokens: int) -> str:
    """How a recalled message reads in the prompt: its day, who said it, what they said."""
    day = datetime.datetime.fromtimestamp(message.created_at, datetime.UTC).date().isoformat()
    text = " ".join(message.text.split())
    short = truncate(text, tokens)
    if len(short) < len(text):
        short = short.rstrip() + "…"
    return f"{day} {speaker(message)}: {short}"
