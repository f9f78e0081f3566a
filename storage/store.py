"""The store: one async class over SQLAlchemy for everything the bot remembers.

Hot paths use SQLAlchemy Core statements on the declarative tables (no ORM unit of work):
they are several times faster, and the core logs every message on its request path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Row, and_, delete, event, func, insert, literal, or_, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from storage import migrations
from storage.schema import ChatState, Conversation, Correction, Message, MessagePart, Rating

MessageRow = Row[Any]  # a row of `messages`; attributes are the column names

_M = Message.__table__
_C = Conversation.__table__
_P = MessagePart.__table__
_R = Rating.__table__
_X = Correction.__table__
_S = ChatState.__table__


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets readers run beside the writer; the busy timeout makes a second process wait
    # for the lock instead of failing; NORMAL sync is safe in WAL (no corruption) and fast.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Store:
    """Conversations, messages, reply parts, ratings, corrections and per-chat state."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    async def open(cls, url: str) -> Store:
        """Connect, apply pending migrations, and return a ready store."""
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url)
        if parsed.get_backend_name() == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        async with engine.begin() as conn:
            await conn.run_sync(migrations.migrate)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    # -- conversations -------------------------------------------------------------------

    async def conversation_id(self, platform: str, chat_id: str, thread_id: str | None) -> int:
        """The chat's current conversation, started if there is none."""
        thread = thread_id or ""
        query = (
            select(_C.c.id)
            .where(_C.c.platform == platform, _C.c.chat_id == chat_id, _C.c.thread_id == thread)
            .where(_C.c.reset_at.is_(None))
            .order_by(_C.c.id.desc())
            .limit(1)
        )
        async with self.engine.begin() as conn:
            found = (await conn.execute(query)).scalar()
            if found is not None:
                return int(found)
            result = await conn.execute(
                insert(_C).values(
                    platform=platform, chat_id=chat_id, thread_id=thread, started_at=time.time()
                )
            )
            return int(result.inserted_primary_key[0])

    async def reset_conversation(self, platform: str, chat_id: str, thread_id: str | None) -> None:
        """End the current conversation; the next message starts a new one."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(_C)
                .where(_C.c.platform == platform, _C.c.chat_id == chat_id)
                .where(_C.c.thread_id == (thread_id or ""), _C.c.reset_at.is_(None))
                .values(reset_at=time.time())
            )

    # -- messages ------------------------------------------------------------------------

    async def add_user_message(
        self,
        *,
        conversation_id: int,
        platform: str,
        chat_id: str,
        platform_message_id: str | None,
        author_id: str,
        author_name: str,
        text: str,
        reply_to_id: int | None,
        created_at: float,
    ) -> int:
        """Store an inbound message at once. ``reply_to_id`` is the message it explicitly
        replies to; otherwise :meth:`settle` links it to the conversation's latest message
        once the messages ahead of it in its chat have been answered."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                insert(_M).values(
                    conversation_id=conversation_id,
                    platform=platform,
                    chat_id=chat_id,
                    platform_message_id=platform_message_id,
                    role="user",
                    author_id=author_id,
                    author_name=author_name,
                    text=text,
                    reply_to_id=reply_to_id,
                    status="ok",
                    created_at=created_at,
                )
            )
            return int(result.inserted_primary_key[0])

    async def settle(
        self, message_id: int, conversation_id: int, *, link: bool, limit: int = 200
    ) -> list[MessageRow]:
        """Link a user message to the message before it (when ``link``) and return its history.

        "Before it" is the newest successful message of the conversation that came earlier:
        an older message, or a reply to an older message. Messages still waiting behind it
        in the chat's line are not candidates, so a burst of messages chains in order.
        """
        if link:
            earlier = or_(
                _M.c.id < message_id,
                and_(_M.c.role == "assistant", _M.c.reply_to_id < message_id),
            )
            latest = (
                select(func.max(_M.c.id))
                .where(_M.c.conversation_id == conversation_id, _M.c.status == "ok")
                .where(_M.c.id != message_id, earlier)
                .scalar_subquery()
            )
        async with self.engine.begin() as conn:
            if link:
                await conn.execute(
                    update(_M).where(_M.c.id == message_id).values(reply_to_id=latest)
                )
            return list((await conn.execute(self._history_query(message_id, limit))).all())

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
        adapter_version: str | None = None,
        latency_ms: float | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        status: str = "ok",
        error: str | None = None,
        regenerated_from_id: int | None = None,
        author_id: str = "bot",
    ) -> int:
        """Store a character's reply (or an error row) and the platform messages showing it."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                insert(_M).values(
                    conversation_id=conversation_id,
                    platform=platform,
                    chat_id=chat_id,
                    platform_message_id=platform_message_ids[0] if platform_message_ids else None,
                    role="assistant",
                    author_id=author_id,
                    author_name=character,
                    text=text,
                    reply_to_id=reply_to_id,
                    regenerated_from_id=regenerated_from_id,
                    character=character,
                    adapter_version=adapter_version,
                    model=model,
                    prompt_json=json.dumps(prompt, ensure_ascii=False) if prompt else None,
                    sampling_json=json.dumps(sampling) if sampling else None,
                    latency_ms=latency_ms,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    status=status,
                    error=error,
                    created_at=time.time(),
                )
            )
            message_id = int(result.inserted_primary_key[0])
            if platform_message_ids:
                await conn.execute(
                    insert(_P),
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

    async def get_message(self, message_id: int) -> MessageRow | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(_M).where(_M.c.id == message_id))).first()

    async def find_message(
        self, platform: str, chat_id: str, platform_message_id: str
    ) -> MessageRow | None:
        """The stored message shown by a platform message: any part of a reply, or a user's."""
        by_part = (
            select(_P.c.message_id)
            .where(_P.c.platform == platform, _P.c.chat_id == chat_id)
            .where(_P.c.platform_message_id == platform_message_id)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(_M).where(_M.c.id.in_(by_part)))).first()
            if row is None:
                row = (
                    await conn.execute(
                        select(_M)
                        .where(_M.c.platform == platform, _M.c.chat_id == chat_id)
                        .where(_M.c.platform_message_id == platform_message_id)
                        .order_by(_M.c.id)
                        .limit(1)
                    )
                ).first()
            return row

    async def history(self, message_id: int, limit: int = 200) -> list[MessageRow]:
        """``message_id`` and its ancestors in the conversation tree, oldest first."""
        async with self.engine.connect() as conn:
            return list((await conn.execute(self._history_query(message_id, limit))).all())

    @staticmethod
    def _history_query(message_id: int, limit: int) -> Any:
        # One recursive query walks up the reply tree, whatever its depth. Error rows are
        # skipped: they were never part of the story the user saw.
        chain = (
            select(_M.c.id, _M.c.reply_to_id, literal(0).label("depth"))
            .where(_M.c.id == message_id)
            .cte("chain", recursive=True)
        )
        parent = _M.alias("parent")
        chain = chain.union_all(
            select(parent.c.id, parent.c.reply_to_id, (chain.c.depth + 1).label("depth"))
            .join(chain, parent.c.id == chain.c.reply_to_id)
            .where(chain.c.depth < limit)
        )
        return (
            select(_M)
            .join(chain, _M.c.id == chain.c.id)
            .where(_M.c.status == "ok")
            .order_by(chain.c.depth.desc())
        )

    async def conversation_thread(self, conversation_id: int) -> str:
        async with self.engine.connect() as conn:
            found = await conn.execute(select(_C.c.thread_id).where(_C.c.id == conversation_id))
            return found.scalar() or ""

    async def platform_ids(self, message_id: int) -> list[str]:
        """Every platform message id that shows a reply, in order."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(_P.c.platform_message_id)
                .where(_P.c.message_id == message_id)
                .order_by(_P.c.part_index)
            )
            return [r[0] for r in rows]

    async def list_messages(
        self, platform: str | None = None, chat_id: str | None = None
    ) -> list[MessageRow]:
        query = select(_M).order_by(_M.c.id)
        if platform is not None:
            query = query.where(_M.c.platform == platform)
        if chat_id is not None:
            query = query.where(_M.c.chat_id == chat_id)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).all())

    # -- feedback ------------------------------------------------------------------------

    async def set_rating(self, message_id: int, user_id: str, value: int) -> None:
        """+1 / -1 sets this user's vote on the reply (replacing an earlier one); 0 removes it."""
        if value not in (-1, 0, 1):
            raise ValueError(f"a rating is +1, -1 or 0 (remove), not {value}")
        now = time.time()
        mine = and_(_R.c.message_id == message_id, _R.c.user_id == user_id)
        async with self.engine.begin() as conn:
            if value == 0:
                await conn.execute(delete(_R).where(mine))
                return
            changed = await conn.execute(update(_R).where(mine).values(value=value, updated_at=now))
            if changed.rowcount:
                return
            try:
                async with conn.begin_nested():
                    await conn.execute(
                        insert(_R).values(
                            message_id=message_id,
                            user_id=user_id,
                            value=value,
                            created_at=now,
                            updated_at=now,
                        )
                    )
            except IntegrityError:  # another process voted for this user in between
                await conn.execute(update(_R).where(mine).values(value=value, updated_at=now))

    async def add_correction(self, message_id: int, user_id: str, text: str) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                insert(_X).values(
                    message_id=message_id, user_id=user_id, text=text, created_at=time.time()
                )
            )
            return int(result.inserted_primary_key[0])

    async def list_ratings(self, message_ids: Iterable[int] | None = None) -> list[Row[Any]]:
        query = select(_R).order_by(_R.c.id)
        if message_ids is not None:
            query = query.where(_R.c.message_id.in_(list(message_ids)))
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).all())

    async def list_corrections(self, message_ids: Iterable[int] | None = None) -> list[Row[Any]]:
        query = select(_X).order_by(_X.c.id)
        if message_ids is not None:
            query = query.where(_X.c.message_id.in_(list(message_ids)))
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).all())

    # -- chat state ----------------------------------------------------------------------

    async def chat_character(self, platform: str, chat_id: str) -> str | None:
        async with self.engine.connect() as conn:
            return (
                await conn.execute(
                    select(_S.c.character).where(_S.c.platform == platform, _S.c.chat_id == chat_id)
                )
            ).scalar()

    async def set_chat_character(self, platform: str, chat_id: str, character: str) -> None:
        now = time.time()
        key = and_(_S.c.platform == platform, _S.c.chat_id == chat_id)
        async with self.engine.begin() as conn:
            changed = await conn.execute(
                update(_S).where(key).values(character=character, updated_at=now)
            )
            if not changed.rowcount:
                await conn.execute(
                    insert(_S).values(
                        platform=platform, chat_id=chat_id, character=character, updated_at=now
                    )
                )
