"""The store: one async class over SQLAlchemy 2 for everything the bot remembers.

Every method is a coroutine and never blocks the event loop: each one is a unit of work
that runs whole on the store's own database thread, so a message costs one thread hop per
transaction. (aiosqlite also runs sqlite3 in a thread, but hops for every cursor call; one
hop per transaction measured about five times faster here, see docs/architecture.md.) The statements
on the per-message path are SQLAlchemy Core, built once: the ORM unit of work and
per-call statement building cost more than SQLite itself.

This module is the database thread, its transactions and their retries; the SQL of each
job is a function on a connection beside it — ``inbound`` (storing a person's message),
``replies``, ``messages`` (reading them back), ``votes``, ``corrections``, ``chats`` — and
what goes in and comes out is a record of ``storage.records``, never a SQLAlchemy row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

from storage import chats, corrections, inbound, messages, migrations, replies, votes
from storage.errors import StorageError
from storage.opening import explain, open_engine
from storage.records import (
    HistoryMessage,
    NewInbound,
    NewReply,
    ReplyAddress,
    StoredCorrection,
    StoredInbound,
    StoredMessage,
    StoredVote,
)
from storage.settings import StorageSettings

T = TypeVar("T")
log = logging.getLogger(__name__)


class StorageUnavailable(StorageError):
    """The database stayed locked or busy for longer than ``[storage] max_wait_s``."""


# PostgreSQL's errors that mean "another transaction is in the way; try again": a
# serialization failure, a deadlock (the server aborted this side), a lock wait past
# lock_timeout (set from [storage] busy_timeout_s, as SQLite's busy timeout is).
PG_RETRY_STATES = frozenset({"40001", "40P01", "55P03"})


def _is_busy(exc: OperationalError) -> bool:
    """Another writer holds what this transaction needs: SQLite's "database is locked" /
    "database is busy", or one of :data:`PG_RETRY_STATES`."""
    if getattr(exc.orig, "sqlstate", None) in PG_RETRY_STATES:
        return True
    message = str(exc.orig).lower()
    return "locked" in message or "busy" in message


_SYNC_DRIVERS = {
    "sqlite+aiosqlite": "sqlite",
    "postgresql+asyncpg": "postgresql+psycopg",
    # SQLAlchemy's default for a bare postgresql:// is psycopg2; charbot[postgres] installs
    # psycopg 3.
    "postgresql": "postgresql+psycopg",
    "mysql+aiomysql": "mysql+pymysql",
}


def _sqlite_pragmas(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        # WAL lets readers run beside the writer; the busy timeout makes a second process
        # wait for the lock instead of failing at once (the store then retries, up to
        # max_wait_s); NORMAL sync is safe in WAL (no corruption) and fast.
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms:d}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return on_connect


class Store:
    """Conversations, messages, reply parts, votes, corrections and per-chat state.

    A database that is locked or busy (another process writing, a backup) is retried with
    backoff for up to ``max_wait_s`` before :class:`StorageUnavailable` is raised.
    """

    def __init__(
        self, engine: Engine, executor: ThreadPoolExecutor, max_wait_s: float = 60.0
    ) -> None:
        self.engine = engine
        self._executor = executor
        self.max_wait_s = max_wait_s

    @classmethod
    async def open(
        cls, url: str, *, max_wait_s: float = 60.0, busy_timeout_s: float = 5.0
    ) -> Store:
        """Connect, apply pending migrations, and return a ready store. Whatever stops that
        (a bad URL, a missing driver, an unusable file or server) is one StorageError line."""
        try:
            parsed = make_url(url) if "://" in url else None
        except (ArgumentError, ValueError):  # e.g. a port that is not a number
            parsed = None
        if parsed is not None:
            # An async driver in the URL (sqlite+aiosqlite, postgresql+asyncpg) names the same
            # database; the store runs the matching blocking driver in its own thread (below).
            driver = _SYNC_DRIVERS.get(parsed.drivername, parsed.drivername)
            parsed = parsed.set(drivername=driver)
        engine, sqlite = open_engine(url, parsed, lock_timeout_s=busy_timeout_s)
        if sqlite:
            event.listen(engine, "connect", _sqlite_pragmas(int(busy_timeout_s * 1000)))
        # One thread owns the database connection. For SQLite it is also the one writer,
        # so writes never wait on the file lock held by this process.
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="charbot-db")
        store = cls(engine, executor, max_wait_s)
        try:
            await store._run(lambda: store._retrying(lambda: migrations.migrate_locked(engine)))
        except StorageError:
            await store.close()
            raise
        except Exception as exc:
            await store.close()
            raise explain(url, exc) from None
        return store

    async def close(self) -> None:
        await self._run(self.engine.dispose)
        self._executor.shutdown(wait=True)

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def _retrying(self, work: Callable[[], T], on_wait: Callable[[], None] | None = None) -> T:
        """Run ``work`` (on the database thread); while the database is locked or busy, retry
        with growing pauses until ``max_wait_s`` has passed. ``on_wait`` is called once, at
        the first failure (from this thread)."""
        deadline = time.monotonic() + self.max_wait_s
        pause = 0.05
        while True:
            try:
                return work()
            except OperationalError as exc:
                if not _is_busy(exc):
                    raise
                if time.monotonic() + pause > deadline:
                    raise StorageUnavailable(
                        f"the database stayed locked for over {self.max_wait_s:g} s "
                        "([storage] max_wait_s); is another process holding it?"
                    ) from None
                log.warning("database busy; retrying in %.2f s", pause)
                if on_wait is not None:
                    on_wait()
                    on_wait = None
                # Not asyncio: this is the database thread, and nothing else can use the
                # database until the lock is released anyway.
                threading.Event().wait(pause)
                pause = min(pause * 2, 2.0)

    async def write(
        self, work: Callable[[Connection], T], on_wait: Callable[[], None] | None = None
    ) -> T:
        """Run ``work`` in one transaction on the database thread (one thread hop in all),
        retried whole while the database is busy (or, in WAL, was written by another process
        since this transaction read). ``on_wait`` runs on the event loop if the first attempt
        found the database busy."""
        if on_wait is not None:
            loop = asyncio.get_running_loop()
            callback = on_wait
            on_wait = lambda: loop.call_soon_threadsafe(callback)  # noqa: E731

        def transaction() -> T:
            with self.engine.begin() as conn:
                return work(conn)

        return await self._run(lambda: self._retrying(transaction, on_wait))

    async def read(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` on a connection on the database thread, outside a write transaction."""

        def read() -> T:
            with self.engine.connect() as conn:
                return work(conn)

        return await self._run(lambda: self._retrying(read))

    # -- people's messages ---------------------------------------------------------------

    async def store_inbound(
        self,
        message: NewInbound,
        *,
        link_now: bool,
        on_wait: Callable[[], None] | None = None,
    ) -> StoredInbound:
        """Store a person's message at once, in one transaction.

        It goes into the chat's current conversation (started if needed). If it replies to a
        stored message, that is its parent. Otherwise, with ``link_now`` (nothing in its
        chat is waiting to be answered ahead of it) it follows the conversation's latest
        message; without, :meth:`settle` links it when its place in line comes.

        Idempotent: a message already stored under the same (platform, chat, platform
        message id) is not stored again; the result says ``duplicate``. ``on_wait`` runs
        once if the database is busy at first (see :meth:`write`).
        """

        def work(conn: Connection) -> StoredInbound:
            return inbound.store_inbound(conn, message, link_now)

        try:
            return await self.write(work, on_wait)
        except IntegrityError:
            # Another process stored the same event between our check and insert: the
            # retry finds its row.
            return await self.write(work, on_wait)

    async def settle(
        self, message_id: int, conversation_id: int, waiting: Sequence[int] | None = None
    ) -> int | None:
        """Link a user message stored while others waited ahead of it to the message before
        it; return that parent's id (None when it is the conversation's first). ``waiting``:
        the chat's messages still waiting for their turn, when turns are not arrival order
        (then none of the chat's messages may be being stored meanwhile)."""
        return await self.write(
            lambda conn: inbound.settle(conn, message_id, conversation_id, waiting)
        )

    async def set_progress(self, message_ids: Sequence[int], progress: str | None) -> None:
        """Mark messages ``answered``, ``skipped``, ... (see ``Message.progress``)."""
        if message_ids:
            await self.write(lambda conn: inbound.set_progress(conn, message_ids, progress))

    # -- replies -------------------------------------------------------------------------

    async def add_reply(
        self, reply: NewReply, *, streaming_id: int | None = None, answers: int | None = None
    ) -> int:
        """Store a character's reply (or an error row) and the platform messages showing it;
        return its row id.

        ``streaming_id``: the :meth:`begin_reply` row of this reply, removed in the same
        transaction. ``answers``: the user message this reply answers, marked answered.
        """
        now = time.time()

        def work(conn: Connection) -> int:
            return replies.store_reply(
                conn, reply, created_at=now, streaming_id=streaming_id, answers=answers
            )

        return await self.write(work)

    async def begin_reply(self, address: ReplyAddress, text: str, platform_message_id: str) -> int:
        """Record a reply whose first message is now on the platform: a crash before
        :meth:`add_reply` stores it leaves this row, which the next start finishes."""
        now = time.time()
        return await self.write(
            lambda conn: replies.begin_reply(conn, address, text, platform_message_id, now)
        )

    async def save_progress(
        self, streaming_id: int, text: str, platform_message_ids: Sequence[str]
    ) -> None:
        """The text shown so far of a streaming reply, and every message showing it."""
        await self.write(
            lambda conn: replies.save_progress(conn, streaming_id, text, platform_message_ids)
        )

    # -- reading messages ----------------------------------------------------------------

    async def get_message(self, message_id: int) -> StoredMessage | None:
        return await self.read(lambda conn: messages.get_message(conn, message_id))

    async def find_message(
        self, platform: str, chat_id: str, platform_message_id: str
    ) -> StoredMessage | None:
        """The stored message shown by a platform message: any part of a reply, or a user's."""
        return await self.read(
            lambda conn: messages.find_shown(conn, platform, chat_id, platform_message_id)
        )

    async def history(self, message_id: int, limit: int = 200) -> list[HistoryMessage]:
        """``message_id`` and up to ``limit`` ancestors in the conversation tree, oldest first."""
        return await self.read(lambda conn: messages.history(conn, message_id, limit))

    async def conversation_thread(self, conversation_id: int) -> str:
        return await self.read(lambda conn: messages.conversation_thread(conn, conversation_id))

    async def platform_ids(self, message_id: int) -> list[str]:
        """Every platform message id that shows a reply, in order."""
        return await self.read(lambda conn: messages.platform_ids(conn, message_id))

    async def list_messages(
        self, platform: str | None = None, chat_id: str | None = None
    ) -> list[StoredMessage]:
        return await self.read(lambda conn: messages.list_messages(conn, platform, chat_id))

    # -- feedback ------------------------------------------------------------------------

    async def set_vote(self, message_id: int, user_id: str, value: int) -> None:
        """+1 / -1 sets this user's vote on the reply (replacing an earlier one); 0 removes it."""
        if value not in (-1, 0, 1):
            raise ValueError(f"a rating is +1, -1 or 0 (remove), not {value}")
        now = time.time()
        await self.write(lambda conn: votes.set_vote(conn, message_id, user_id, value, now))

    async def add_correction(self, message_id: int, user_id: str, text: str) -> int:
        return await self.write(
            lambda conn: corrections.insert_correction(conn, message_id, user_id, text)
        )

    async def list_votes(self, message_ids: Iterable[int] | None = None) -> list[StoredVote]:
        return await self.read(lambda conn: votes.list_votes(conn, message_ids))

    async def list_corrections(
        self, message_ids: Iterable[int] | None = None
    ) -> list[StoredCorrection]:
        return await self.read(lambda conn: corrections.list_corrections(conn, message_ids))

    # -- chat state ----------------------------------------------------------------------

    async def reset_conversation(self, platform: str, chat_id: str, thread_id: str | None) -> None:
        """End the current conversation; the next message starts a new one."""
        now = time.time()
        await self.write(
            lambda conn: chats.reset_conversation(conn, platform, chat_id, thread_id, now)
        )

    async def chat_character(self, platform: str, chat_id: str) -> str | None:
        return await self.read(lambda conn: chats.chat_character(conn, platform, chat_id))

    async def chosen_characters(self) -> dict[str, int]:
        """How many chats keep each character as their saved choice."""
        return await self.read(chats.chosen_characters)

    async def set_chat_character(self, platform: str, chat_id: str, character: str) -> None:
        now = time.time()
        await self.write(
            lambda conn: chats.set_chat_character(conn, platform, chat_id, character, now)
        )


@contextlib.asynccontextmanager
async def open_store(settings: StorageSettings) -> AsyncIterator[Store]:
    """The store of ``[storage]``, migrated and ready; closed on exit."""
    store = await Store.open(
        settings.url, max_wait_s=settings.max_wait_s, busy_timeout_s=settings.busy_timeout_s
    )
    try:
        yield store
    finally:
        await store.close()
