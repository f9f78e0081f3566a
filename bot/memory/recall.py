"""Recall: old messages of a chat found by meaning, from outside the history the prompt
holds.

Every stored message is embedded once (all-MiniLM-L6-v2, like the knowledge files) by the
:class:`Indexer`, in batches in a thread, and its vector stored in the database beside it
(``memory_vectors``): the index grows with the chat, survives restarts and is shared by
every process on the database. For a reply, :class:`Recall` keeps each chat's vectors as
one float32 matrix in memory (read once, then only the rows added since; bounded by
``[memory] cache_mb``, least recently used chat dropped first) and scores the newest turns
against it: one matrix-vector product, a millisecond at 10,000 messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from bot.knowledge import Embedder
from storage import memory as sql
from storage.records import MemoryMessage
from storage.store import Store

log = logging.getLogger(__name__)

BATCH = 128  # messages embedded at once
BAR_AT = 500  # a backlog this long is embedded under a progress bar
ChatKey = tuple[str, str, str]  # platform, chat id, thread id ("" for none)


def to_bytes(vector: np.ndarray) -> bytes:
    """A unit vector as stored: float16, half the bytes, far below the similarity noise."""
    return np.asarray(vector, dtype=np.float16).tobytes()


class ChatVectors:
    """One chat's vectors in memory: message ids ascending, rows in the same order. Rows
    are appended into spare capacity (doubled when full), so a new message costs its own
    row, not a copy of the chat's."""

    def __init__(self) -> None:
        self._ids = np.zeros(0, np.int64)
        self._rows = np.zeros((0, 0), np.float32)
        self.size = 0

    @property
    def ids(self) -> np.ndarray:
        return self._ids[: self.size]

    @property
    def matrix(self) -> np.ndarray:
        return self._rows[: self.size]

    @property
    def newest(self) -> int:
        return int(self._ids[self.size - 1]) if self.size else 0

    @property
    def nbytes(self) -> int:
        return self._ids.nbytes + self._rows.nbytes

    def append(self, rows: Sequence[tuple[int, bytes]], dim: int) -> list[int]:
        """Add rows (ascending ids, newer than :attr:`newest`); the ids of rows whose vector
        is not ``dim`` float16 values (a corrupt or foreign row), which are left out."""
        good = [(i, v) for i, v in rows if len(v) == 2 * dim]
        bad = [i for i, v in rows if len(v) != 2 * dim]
        if not good:
            return bad
        if self._rows.shape[1:] != (dim,):
            self._ids, self._rows, self.size = np.zeros(0, np.int64), np.zeros((0, dim)), 0
        needed = self.size + len(good)
        if needed > len(self._ids):
            capacity = max(needed, 2 * len(self._ids), 64)
            ids = np.zeros(capacity, np.int64)
            grown = np.zeros((capacity, dim), np.float32)
            ids[: self.size], grown[: self.size] = self.ids, self.matrix
            self._ids, self._rows = ids, grown
        block = np.frombuffer(b"".join(v for _, v in good), np.float16).reshape(-1, dim)
        self._rows[self.size : needed] = block
        self._ids[self.size : needed] = [i for i, _ in good]
        self.size = needed
        return bad

    def search(
        self, queries: np.ndarray, before: int, k: int, min_score: float, after: int = 0
    ) -> list[tuple[float, int]]:
        """The ``k`` best (score, message id) of messages older than ``before`` and newer
        than ``after``: each message's score is its best cosine over the ``queries`` rows."""
        end = int(np.searchsorted(self.ids, before))
        start = int(np.searchsorted(self.ids, after, side="right")) if after else 0
        if end <= start or k == 0:
            return []
        scores = (self.matrix[start:end] @ queries.T).max(axis=1)
        k = min(k, end - start)
        top = np.argpartition(-scores, k - 1)[:k]
        found = [
            (float(scores[i]), int(self.ids[start + i])) for i in top if scores[i] >= min_score
        ]
        return sorted(found, reverse=True)


class Recall:
    """Finds a chat's old messages closest to the newest turns."""

    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        *,
        top_k: int,
        min_score: float,
        cache_bytes: int,
        indexer: Indexer | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.top_k = top_k
        self.min_score = min_score
        self.cache_bytes = cache_bytes
        self.indexer = indexer
        self._chats: OrderedDict[ChatKey, ChatVectors] = OrderedDict()
        self.dim = 0

    async def search(
        self, key: ChatKey, queries: Sequence[str], before: int, after: int = 0
    ) -> list[MemoryMessage]:
        """The messages of chat ``key`` older than message ``before`` (and newer than
        ``after``: a character that joined the scene late) that best match ``queries`` (the
        newest turns), best first."""
        if not queries or self.top_k == 0:
            return []
        vectors = await asyncio.to_thread(self.embedder.encode, list(queries))
        self.dim = vectors.shape[1]
        chat = await self._vectors(key)
        hits = chat.search(vectors, before, self.top_k, self.min_score, after)
        if not hits:
            return []
        found = await self.store.read(lambda conn: sql.messages_by_id(conn, [i for _, i in hits]))
        by_id = {m.id: m for m in found}
        return [by_id[i] for _, i in hits if i in by_id]  # a forgotten person's are gone

    async def _vectors(self, key: ChatKey) -> ChatVectors:
        """The chat's vectors, brought up to date with the database: only rows added since
        are read, unless rows were removed (forgetting someone) or came out of order (two
        processes embedding), then the chat is read again whole."""
        chat = self._chats.pop(key, None) or ChatVectors()
        name = self.embedder.name

        def read(conn):  # type: ignore[no-untyped-def]
            count, _newest = sql.chat_vector_count(conn, *key, name)
            return count, sql.chat_vectors(conn, *key, name, after=chat.newest)

        count, rows = await self.store.read(read)
        bad = chat.append(rows, self.dim)
        if chat.size + len(bad) != count:
            chat = ChatVectors()
            rows = await self.store.read(lambda conn: sql.chat_vectors(conn, *key, name))
            bad = chat.append(rows, self.dim)
        if bad:
            await self._repair(bad)
        self._chats[key] = chat
        self._trim()
        return chat

    async def _repair(self, ids: list[int]) -> None:
        """Vectors that are not this embedder's size: dropped, and embedded again."""
        log.warning("memory: %d stored vectors were unreadable; embedding them again", len(ids))
        await self.store.write(lambda conn: sql.drop_message_vectors(conn, ids))
        if self.indexer is not None:
            self.indexer.wake()

    def _trim(self) -> None:
        total = sum(chat.nbytes for chat in self._chats.values())
        while len(self._chats) > 1 and total > self.cache_bytes:
            _, dropped = self._chats.popitem(last=False)
            total -= dropped.nbytes

    @property
    def cached_bytes(self) -> int:
        """Memory the cached vectors take (the benchmark reports it)."""
        return sum(chat.nbytes for chat in self._chats.values())


class Indexer:
    """Embeds every stored message that has no vector yet, in the background: woken after
    each message, and at start for whatever an earlier run (or a run without memory) left.
    A long backlog is embedded under a progress bar, with one line saying why.

    ``bar_at``: the backlog from which the bar shows (``charbot memory rebuild`` passes 0,
    to show it always)."""

    def __init__(
        self, store: Store, embedder: Embedder, *, progress: bool = True, bar_at: int = BAR_AT
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.progress = progress
        self.bar_at = bar_at
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.embedded = 0  # messages embedded by this run

    def start(self) -> None:
        self._wake.set()
        self._task = asyncio.create_task(self._run())

    def wake(self) -> None:
        """New messages were stored: embed them soon."""
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.catch_up()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database or the model failed: try again at the next wake
                log.warning("memory: embedding messages failed; retrying later", exc_info=True)
                await asyncio.sleep(5.0)
                self._wake.set()

    async def catch_up(self) -> int:
        """Embed every message that has no vector; the number embedded."""
        name = self.embedder.name
        backlog = await self.store.read(lambda conn: sql.count_unembedded(conn, name))
        if not backlog:
            return 0
        show = self.progress and backlog >= self.bar_at
        if show and backlog >= BAR_AT:
            log.warning(
                "memory: embedding %d stored messages that have no vector yet (memory was "
                "off, or the index is new or was removed); replies go on meanwhile",
                backlog,
            )
        done = 0
        with tqdm(total=backlog, desc="memory index", unit="msg", disable=not show or None) as bar:
            while True:
                batch = await self.store.read(lambda conn: sql.unembedded(conn, name, BATCH))
                if not batch:
                    break
                vectors = await asyncio.to_thread(self.embedder.encode, [m.text for m in batch])
                rows = [(m, to_bytes(v)) for m, v in zip(batch, vectors, strict=True)]
                await self.store.write(lambda conn, rows=rows: sql.add_vectors(conn, name, rows))
                done += len(batch)
                self.embedded += len(batch)
                bar.update(len(batch))
        return done
