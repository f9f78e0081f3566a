"""The rolling summary of a conversation: the story so far, extended in the background.

Every ``[memory] summarize_every`` new messages, and whenever the prompt's history has
dropped messages the summary does not cover yet, a job asks the memory model (the bot's
own, or ``[memory] base_url``'s) to extend the previous summary with what happened since.
It never holds up a reply. A summary is stored only whole: a model error, an empty text or
one cut off at the token limit leaves the previous summary and is tried again later (with
growing pauses, and fewer messages at once). Each stored row keeps the range of messages it
covers; the newest row of a conversation is current.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from bot.config import MemorySettings
from bot.memory.writing import write
from engine import ChatMessages, ChatModel
from storage import memory as sql
from storage.records import HistoryMessage, MemoryMessage, StoredSummary
from storage.store import Store

log = logging.getLogger(__name__)

LINE_CHARS = 400  # of one message, in the summary's input
FIRST_PAUSE_S = 30.0
LONGEST_PAUSE_S = 600.0

INSTRUCTIONS = (
    "You keep the story so far of a chat for {character}, who will read it before replying. "
    "Keep who is who, what people said about themselves, what happened, and what was "
    "promised or planned. Write in the language the chat is written in, in at most {words} "
    "words, as plain sentences. Write only the updated story."
)


class SummaryFailed(Exception):
    """The model gave no whole summary (empty, or cut off at the token limit)."""


def summary_prompt(
    character: str, previous: str, messages: Sequence[MemoryMessage], words: int
) -> ChatMessages:
    """What the memory model is asked: the story so far and the messages since."""
    lines = "\n".join(f"{speaker(m)}: {m.text.strip()[:LINE_CHARS]}" for m in messages)
    return [
        {"role": "system", "content": INSTRUCTIONS.format(character=character, words=words)},
        {
            "role": "user",
            "content": f"The story so far:\n{previous.strip() or '(nothing yet)'}\n\n"
            f"What was said since:\n{lines}\n\nThe story so far, updated:",
        },
    ]


def speaker(message: MemoryMessage) -> str:
    """Who wrote a message, as memory shows it."""
    if message.role == "assistant":
        return message.character or message.author_name
    return message.author_name


class Summarizer:
    """Extends conversations' summaries in the background; reads the current one."""

    def __init__(
        self, store: Store, model: ChatModel, settings: MemorySettings, context_tokens: int
    ) -> None:
        self.store = store
        self.model = model
        self.settings = settings
        self.context_tokens = context_tokens
        self._running: dict[int, asyncio.Task[Any]] = {}
        self._pause: dict[int, tuple[float, float]] = {}  # conversation -> (until, length)
        self._batch: dict[int, int] = {}  # messages per job, halved after a cut-off summary

    async def current(self, conversation_id: int) -> StoredSummary | None:
        return await self.store.read(lambda conn: sql.latest_summary(conn, conversation_id))

    def consider(
        self,
        conversation_id: int,
        character: str,
        chain: Sequence[HistoryMessage],
        covered: int,
        first_kept: int | None,
    ) -> None:
        """Start a job for this conversation if it is due: enough messages since the
        summary's last (``covered``), or the prompt dropped some it does not cover
        (``first_kept``: the oldest message id the prompt kept)."""
        if conversation_id in self._running or self.settings.summarize_every == 0:
            return
        until, _ = self._pause.get(conversation_id, (0.0, 0.0))
        if time.monotonic() < until:
            return
        new = sum(1 for row in chain if row.id > covered)
        dropped = first_kept is not None and any(covered < row.id < first_kept for row in chain)
        if new < self.settings.summarize_every and not dropped:
            return
        task = asyncio.create_task(self._job(conversation_id, character))
        self._running[conversation_id] = task
        task.add_done_callback(lambda _t: self._running.pop(conversation_id, None))

    async def settled(self) -> None:
        """Wait for the jobs running now (tests, the benchmark, a stop)."""
        while self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*list(self._running.values()), return_exceptions=True)

    async def _job(self, conversation_id: int, character: str) -> None:
        try:
            await self.extend(conversation_id, character)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _, last = self._pause.get(conversation_id, (0.0, 0.0))
            pause = min(LONGEST_PAUSE_S, last * 2 if last else FIRST_PAUSE_S)
            self._pause[conversation_id] = (time.monotonic() + pause, pause)
            if isinstance(exc, SummaryFailed):
                self._batch[conversation_id] = max(4, self._batch_size(conversation_id) // 2)
            log.warning(
                "memory: summary of conversation %d failed (%s); the previous one stays, "
                "retrying in %.0f s",
                conversation_id,
                exc,
                pause,
            )
        else:
            self._pause.pop(conversation_id, None)
            self._batch.pop(conversation_id, None)

    def _batch_size(self, conversation_id: int) -> int:
        """Messages one job summarises: twice the interval (at least 40), halved after each
        summary the model cut off."""
        return self._batch.get(conversation_id, 2 * max(self.settings.summarize_every, 20))

    async def extend(self, conversation_id: int, character: str) -> StoredSummary | None:
        """Extend the conversation's summary with the messages since (at most one batch);
        the stored summary, or None when there was nothing new. Raises SummaryFailed or
        the model's error, storing nothing."""
        latest = await self.current(conversation_id)
        after = latest.last_message_id if latest is not None else 0
        batch = self._batch_size(conversation_id)
        messages = await self.store.read(
            lambda conn: sql.conversation_messages(conn, conversation_id, after, batch)
        )
        if not messages:
            return None
        previous = latest.text if latest is not None else ""
        words = max(20, self.settings.summary_tokens * 2 // 3)
        prompt = summary_prompt(character, previous, messages, words)
        # Fit the model's context: fewer messages, oldest kept (they are the next ones due).
        while len(messages) > 1 and (
            self.model.count_tokens(prompt) + self.settings.summary_tokens > self.context_tokens
        ):
            messages = messages[: len(messages) * 3 // 4]
            prompt = summary_prompt(character, previous, messages, words)
        written = await write(self.model, prompt, self.settings.summary_tokens)
        if not written.text or not written.complete:
            raise SummaryFailed("cut off at the token limit" if written.text else "empty")
        now = time.time()
        first, last = messages[0].id, messages[-1].id
        stored_id = await self.store.write(
            lambda conn: sql.add_summary(
                conn, conversation_id, first, last, written.text, written.model, now
            )
        )
        if stored_id is None:  # another process summarised this range first
            return await self.current(conversation_id)
        return StoredSummary(
            stored_id, conversation_id, first, last, written.text, written.model, now
        )
