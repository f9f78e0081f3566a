"""The store: one async class over SQLAlchemy 2 for everything the bot remembers.

Every method is a coroutine and never blocks the event loop: each one is a unit of work
that runs whole on the store's own database thread, so a message costs one thread hop per
transaction. (aiosqlite also runs sqlite3 in a thread, but hops for every cursor call; one
hop per transaction measured about five times faster here, see the README.) The statements
on the per-message path are SQLAlchemy Core, built once: the ORM unit of work and
per-call statement building cost more than SQLite itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    and_,
    bindparam,
    delete,
    event,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

from storage import migrations
from storage.errors import StorageError
from storage.opening import explain, open_engine
from storage.schema import (
    ChatState,
    Conversation,
    Correction,
    Message,
    MessagePart,
    Rating,
    StreamingReply,
    clean_text,
)
from storage.settings import StorageSettings

T = TypeVar("T")
MessageRow = Row[Any]  # a row of `messages`; attributes are the column names
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


@dataclass(frozen=True, slots=True)
class StoredTurn:
    """One message as history needs it. Stored messages never change, so these can be cached."""

    id: int
    role: str
    text: str
    character: str | None
    author_name: str


@dataclass(frozen=True, slots=True)
class StoredInbound:
    """What storing an inbound message found out on the way."""

    conversation_id: int
    message_id: int
    parent_id: int | None  # the message it follows, when ``linked``
    linked: bool  # False: :meth:`Store.settle` must link it once its turn comes
    replied: MessageRow | None  # the stored message it explicitly replies to
    chat_character: str | None  # the chat's current character, read in the same transaction
    duplicate: bool = False  # already stored (a redelivered event): nothing was written


_SYNC_DRIVERS = {
    "sqlite+aiosqlite": "sqlite",
    "postgresql+asyncpg": "postgresql+psycopg",
    # SQLAlchemy's default for a bare postgresql:// is psycopg2; charbot[postgres] installs
    # psycopg 3.
    "postgresql": "postgresql+psycopg",
    "mysql+aiomysql": "mysql+pymysql",
}
_M = Message.__table__
_C = Conversation.__table__
_P = MessagePart.__table__
_R = Rating.__table__
_X = Correction.__table__
_S = ChatState.__table__
_SR = StreamingReply.__table__


# Statements on the per-message path are built once: building a SQLAlchemy statement costs
# more Python time than SQLite takes to run these.
_CURRENT_CONVERSATION = (
    select(_C.c.id)
    .where(_C.c.platform == bindparam("platform"), _C.c.chat_id == bindparam("chat_id"))
    .where(_C.c.thread_id == bindparam("thread_id"), _C.c.reset_at.is_(None))
    .order_by(_C.c.id.desc())
    .limit(1)
    .scalar_subquery()
)
_CHAT_CHARACTER = (
    select(_S.c.character)
    .where(_S.c.platform == bindparam("platform"), _S.c.chat_id == bindparam("chat_id"))
    .scalar_subquery()
)
_CHAT_LOOKUP = select(_CURRENT_CONVERSATION.label("conversation"), _CHAT_CHARACTER.label("who"))
_LATEST_SETTLED = (
    # The newest successful message of the conversation that came before message :me: an
    # older message, or a reply to an older message. Messages still waiting behind it in
    # the chat's line are newer and are not replies, so they are never picked.
    select(func.max(_M.c.id))
    .where(_M.c.conversation_id == bindparam("conv"), _M.c.status == "ok")
    .where(_M.c.id != bindparam("me"))
    .where(
        or_(
            _M.c.id < bindparam("me"),
            and_(_M.c.role == "assistant", _M.c.reply_to_id < bindparam("me")),
        )
    )
    .scalar_subquery()
)
_LATEST_OK = (
    select(func.max(_M.c.id))
    .where(_M.c.conversation_id == bindparam("conv"), _M.c.status == "ok")
    .scalar_subquery()
)
_INSERT_MESSAGE = insert(_M).returning(_M.c.id, _M.c.reply_to_id)
_SAME_INBOUND = (
    # A redelivered event: the user message with this platform id in this chat.
    select(_M.c.id, _M.c.conversation_id, _M.c.reply_to_id)
    .where(_M.c.platform == bindparam("platform"), _M.c.chat_id == bindparam("chat_id"))
    .where(_M.c.platform_message_id == bindparam("pid"), _M.c.role == "user")
)
_INSERT_LINKED = insert(_M).values(reply_to_id=_LATEST_OK).returning(_M.c.id, _M.c.reply_to_id)
_SETTLE = (
    update(_M)
    .where(_M.c.id == bindparam("me"))
    .values(reply_to_id=_LATEST_SETTLED)
    .returning(_M.c.reply_to_id)
)
_INSERT_PARTS = insert(_P)
_ANSWERED = (
    update(_M)
    .where(_M.c.id == bindparam("me"), _M.c.progress == "pending")
    .values(progress="answered")
)
_TURN_COLUMNS = (_M.c.id, _M.c.role, _M.c.text, _M.c.character, _M.c.author_name)


def _history_query(limit: int) -> Any:
    """Message :start and its ancestors in the reply tree, oldest first; one recursive query.
    Error rows are skipped: they were never part of the story the user saw."""
    chain = (
        select(_M.c.id, _M.c.reply_to_id, literal(0).label("depth"))
        .where(_M.c.id == bindparam("start"))
        .cte("chain", recursive=True)
    )
    parent = _M.alias("parent")
    chain = chain.union_all(
        select(parent.c.id, parent.c.reply_to_id, (chain.c.depth + 1).label("depth"))
        .join(chain, parent.c.id == chain.c.reply_to_id)
        .where(chain.c.depth < limit)
    )
    return (
        select(*_TURN_COLUMNS)
        .join(chain, _M.c.id == chain.c.id)
        .where(_M.c.status == "ok")
        .order_by(chain.c.depth.desc())
    )


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
    """Conversations, messages, reply parts, ratings, corrections and per-chat state.

    A database that is locked or busy (another process writing, a backup) is retried with
    backoff for up to ``max_wait_s`` before :class:`StorageUnavailable` is raised.
    """

    def __init__(
        self, engine: Engine, executor: ThreadPoolExecutor, max_wait_s: float = 60.0
    ) -> None:
        self.engine = engine
        self._executor = executor
        self.max_wait_s = max_wait_s
        self._history_queries: dict[int, Any] = {}

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

    # -- conversations -------------------------------------------------------------------

    async def reset_conversation(self, platform: str, chat_id: str, thread_id: str | None) -> None:
        """End the current conversation; the next message starts a new one."""

        def work(conn: Connection) -> Any:
            conn.execute(
                update(_C)
                .where(_C.c.platform == platform, _C.c.chat_id == chat_id)
                .where(_C.c.thread_id == (thread_id or ""), _C.c.reset_at.is_(None))
                .values(reset_at=time.time())
            )

        return await self.write(work)

    # -- messages ------------------------------------------------------------------------

    async def store_inbound(
        self,
        *,
        platform: str,
        chat_id: str,
        thread_id: str | None,
        platform_message_id: str | None,
        author_id: str,
        author_name: str,
        text: str,
        reply_to_platform_id: str | None,
        created_at: float,
        link_now: bool,
        wants_answer: bool = False,
        wanted_character: str | None = None,
        default_character: str | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> StoredInbound:
        """Store an inbound message at once, in one transaction.

        It goes into the chat's current conversation (started if needed). If it replies to a
        stored message, that is its parent. Otherwise, with ``link_now`` (nothing in its
        chat is waiting to be answered ahead of it) it follows the conversation's latest
        message; without, :meth:`settle` links it when its turn comes.

        Idempotent: a message already stored under the same (platform, chat, platform
        message id) is not stored again; the result says ``duplicate``. With
        ``wants_answer`` it is stored ``pending`` until a reply marks it answered.
        """
        keys = {"platform": platform, "chat_id": chat_id, "thread_id": thread_id or ""}
        text, author_name = clean_text(text), clean_text(author_name)

        def work(conn: Connection) -> Any:
            if platform_message_id is not None:
                same = {"platform": platform, "chat_id": chat_id, "pid": platform_message_id}
                found = conn.execute(_SAME_INBOUND, same).first()
                if found is not None:
                    return StoredInbound(
                        conversation_id=found.conversation_id,
                        message_id=found.id,
                        parent_id=found.reply_to_id,
                        linked=True,
                        replied=None,
                        chat_character=None,
                        duplicate=True,
                    )
            conversation, who = (conn.execute(_CHAT_LOOKUP, keys)).one()
            if conversation is None:
                started = conn.execute(
                    insert(_C).values(**keys, started_at=created_at).returning(_C.c.id)
                )
                conversation = started.scalar_one()
            replied = None
            if reply_to_platform_id is not None:
                replied = self._find(conn, platform, chat_id, reply_to_platform_id)
            values: dict[str, Any] = {
                "conversation_id": conversation,
                "platform": platform,
                "chat_id": chat_id,
                "platform_message_id": platform_message_id,
                "role": "user",
                "author_id": author_id,
                "author_name": author_name,
                "text": text,
                "status": "ok",
                "created_at": created_at,
                "progress": "pending" if wants_answer else None,
                "wanted_character": wanted_character,
                "default_character": default_character,
            }
            if replied is None and link_now:
                statement = _INSERT_LINKED
                values["conv"] = conversation
            else:
                statement = _INSERT_MESSAGE
                values["reply_to_id"] = replied.id if replied is not None else None
            message_id, parent_id = conn.execute(statement, values).one()
            return StoredInbound(
                conversation_id=conversation,
                message_id=message_id,
                parent_id=parent_id,
                linked=replied is not None or link_now,
                replied=replied,
                chat_character=who,
            )

        try:
            return await self.write(work, on_wait)
        except IntegrityError:
            # Another process stored the same event between our check and insert: the
            # retry finds its row.
            return await self.write(work, on_wait)

    async def settle(self, message_id: int, conversation_id: int) -> int | None:
        """Link a user message stored while others waited ahead of it to the message before
        it; return that parent's id (None when it is the conversation's first)."""

        def work(conn: Connection) -> Any:
            result = conn.execute(_SETTLE, {"me": message_id, "conv": conversation_id})
            return result.scalar_one()

        return await self.write(work)

    async def add_reply(
        self,
        *,
        conversation_id: int,
        platform: str,
        chat_id: str,
        reply_to_id: int,
        character: str,
        text: str,
        platform_message_ids: Sequence[str],
        prompt: list[dict[str, str]] | None,
        sampling: dict[str, Any] | None,
        model: str | None,
        lora_version: str | None = None,
        latency_ms: float | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        status: str = "ok",
        error: str | None = None,
        regenerated_from_id: int | None = None,
        author_id: str = "bot",
        streaming_id: int | None = None,
        answers: int | None = None,
    ) -> int:
        """Store a character's reply (or an error row) and the platform messages showing it.

        ``streaming_id``: the :meth:`begin_reply` row of this reply, removed in the same
        transaction. ``answers``: the user message this reply answers, marked answered.
        """
        values = {
            "conversation_id": conversation_id,
            "platform": platform,
            "chat_id": chat_id,
            "platform_message_id": platform_message_ids[0] if platform_message_ids else None,
            "role": "assistant",
            "author_id": author_id,
            "author_name": character,
            "text": text,
            "reply_to_id": reply_to_id,
            "regenerated_from_id": regenerated_from_id,
            "character": character,
            "lora_version": lora_version,
            "model": model,
            "prompt_json": json.dumps(prompt, ensure_ascii=False) if prompt else None,
            "sampling_json": json.dumps(sampling) if sampling else None,
            "latency_ms": latency_ms,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "status": status,
            "error": error,
            "created_at": time.time(),
        }

        def work(conn: Connection) -> Any:
            message_id = (conn.execute(_INSERT_MESSAGE, values)).one()[0]
            if streaming_id is not None:
                conn.execute(delete(_SR).where(_SR.c.id == streaming_id))
            if answers is not None:
                conn.execute(_ANSWERED, {"me": answers})
            if platform_message_ids:
                conn.execute(
                    _INSERT_PARTS,
                    [
                        {
                            "message_id": message_id,
                            "platform": platform,
                            "chat_id": chat_id,
                            "platform_message_id": pid,
                            "part_index": index,
                        }
                        for index, pid in enumerate(platform_message_ids)
                    ],
                )
            return message_id

        return await self.write(work)

    async def begin_reply(
        self,
        *,
        conversation_id: int,
        platform: str,
        chat_id: str,
        reply_to_id: int,
        character: str,
        text: str,
        platform_message_id: str,
    ) -> int:
        """Record a reply whose first message is now on the platform: a crash before
        :meth:`add_reply` stores it leaves this row, which the next start finishes."""
        values = {
            "conversation_id": conversation_id,
            "platform": platform,
            "chat_id": chat_id,
            "reply_to_id": reply_to_id,
            "character": character,
            "text": text,
            "platform_message_ids": json.dumps([platform_message_id]),
            "started_at": time.time(),
        }

        def work(conn: Connection) -> Any:
            return conn.execute(insert(_SR).values(values).returning(_SR.c.id)).scalar_one()

        return await self.write(work)

    async def save_progress(
        self, streaming_id: int, text: str, platform_message_ids: Sequence[str]
    ) -> None:
        """The text shown so far of a streaming reply, and every message showing it."""
        values = {"text": text, "platform_message_ids": json.dumps(list(platform_message_ids))}

        def work(conn: Connection) -> None:
            conn.execute(update(_SR).where(_SR.c.id == streaming_id).values(values))

        await self.write(work)

    async def set_progress(self, message_ids: Sequence[int], progress: str | None) -> None:
        """Mark messages ``answered``, ``skipped``, ... (see ``Message.progress``)."""
        if not message_ids:
            return

        def work(conn: Connection) -> None:
            conn.execute(update(_M).where(_M.c.id.in_(list(message_ids))).values(progress=progress))

        await self.write(work)

    async def get_message(self, message_id: int) -> MessageRow | None:
        def work(conn: Connection) -> Any:
            return (conn.execute(select(_M).where(_M.c.id == message_id))).first()

        return await self.read(work)

    async def find_message(
        self, platform: str, chat_id: str, platform_message_id: str
    ) -> MessageRow | None:
        """The stored message shown by a platform message: any part of a reply, or a user's."""

        def work(conn: Connection) -> Any:
            return self._find(conn, platform, chat_id, platform_message_id)

        return await self.read(work)

    @staticmethod
    def _find(
        conn: Connection, platform: str, chat_id: str, platform_message_id: str
    ) -> MessageRow | None:
        by_part = (
            select(_P.c.message_id)
            .where(_P.c.platform == platform, _P.c.chat_id == chat_id)
            .where(_P.c.platform_message_id == platform_message_id)
        )
        row = conn.execute(select(_M).where(_M.c.id.in_(by_part))).first()
        if row is None:
            row = (
                conn.execute(
                    select(_M)
                    .where(_M.c.platform == platform, _M.c.chat_id == chat_id)
                    .where(_M.c.platform_message_id == platform_message_id)
                    .order_by(_M.c.id)
                    .limit(1)
                )
            ).first()
        return row

    async def history(self, message_id: int, limit: int = 200) -> list[StoredTurn]:
        """``message_id`` and up to ``limit`` ancestors in the conversation tree, oldest first."""
        query = self._history_queries.get(limit)
        if query is None:
            query = self._history_queries[limit] = _history_query(limit)

        def work(conn: Connection) -> Any:
            rows = conn.execute(query, {"start": message_id})
            return [StoredTurn(*row) for row in rows]

        return await self.read(work)

    async def conversation_thread(self, conversation_id: int) -> str:
        def work(conn: Connection) -> Any:
            found = conn.execute(select(_C.c.thread_id).where(_C.c.id == conversation_id))
            return found.scalar() or ""

        return await self.read(work)

    async def platform_ids(self, message_id: int) -> list[str]:
        """Every platform message id that shows a reply, in order."""

        def work(conn: Connection) -> Any:
            rows = conn.execute(
                select(_P.c.platform_message_id)
                .where(_P.c.message_id == message_id)
                .order_by(_P.c.part_index)
            )
            return [r[0] for r in rows]

        return await self.read(work)

    async def list_messages(
        self, platform: str | None = None, chat_id: str | None = None
    ) -> list[MessageRow]:
        query = select(_M).order_by(_M.c.id)
        if platform is not None:
            query = query.where(_M.c.platform == platform)
        if chat_id is not None:
            query = query.where(_M.c.chat_id == chat_id)

        def work(conn: Connection) -> Any:
            return list((conn.execute(query)).all())

        return await self.read(work)

    # -- feedback ------------------------------------------------------------------------

    async def set_rating(self, message_id: int, user_id: str, value: int) -> None:
        """+1 / -1 sets this user's vote on the reply (replacing an earlier one); 0 removes it."""
        if value not in (-1, 0, 1):
            raise ValueError(f"a rating is +1, -1 or 0 (remove), not {value}")
        now = time.time()
        mine = and_(_R.c.message_id == message_id, _R.c.user_id == user_id)

        def work(conn: Connection) -> Any:
            if value == 0:
                conn.execute(delete(_R).where(mine))
                return
            changed = conn.execute(update(_R).where(mine).values(value=value, updated_at=now))
            if changed.rowcount:
                return
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(_R).values(
                            message_id=message_id,
                            user_id=user_id,
                            value=value,
                            created_at=now,
                            updated_at=now,
                        )
                    )
            except IntegrityError:  # another process voted for this user in between
                conn.execute(update(_R).where(mine).values(value=value, updated_at=now))

        return await self.write(work)

    async def add_correction(self, message_id: int, user_id: str, text: str) -> int:
        def work(conn: Connection) -> Any:
            result = conn.execute(
                insert(_X).values(
                    message_id=message_id, user_id=user_id, text=text, created_at=time.time()
                )
            )
            return int(result.inserted_primary_key[0])

        return await self.write(work)

    async def list_ratings(self, message_ids: Iterable[int] | None = None) -> list[Row[Any]]:
        query = select(_R).order_by(_R.c.id)
        if message_ids is not None:
            query = query.where(_R.c.message_id.in_(list(message_ids)))

        def work(conn: Connection) -> Any:
            return list((conn.execute(query)).all())

        return await self.read(work)

    async def list_corrections(self, message_ids: Iterable[int] | None = None) -> list[Row[Any]]:
        query = select(_X).order_by(_X.c.id)
        if message_ids is not None:
            query = query.where(_X.c.message_id.in_(list(message_ids)))

        def work(conn: Connection) -> Any:
            return list((conn.execute(query)).all())

        return await self.read(work)

    # -- chat state ----------------------------------------------------------------------

    async def chat_character(self, platform: str, chat_id: str) -> str | None:
        def work(conn: Connection) -> Any:
            return (
                conn.execute(
                    select(_S.c.character).where(_S.c.platform == platform, _S.c.chat_id == chat_id)
                )
            ).scalar()

        return await self.read(work)

    async def set_chat_character(self, platform: str, chat_id: str, character: str) -> None:
        now = time.time()
        key = and_(_S.c.platform == platform, _S.c.chat_id == chat_id)

        def work(conn: Connection) -> Any:
            changed = conn.execute(
                update(_S).where(key).values(character=character, updated_at=now)
            )
            if not changed.rowcount:
                conn.execute(
                    insert(_S).values(
                        platform=platform, chat_id=chat_id, character=character, updated_at=now
                    )
                )

        return await self.write(work)


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
