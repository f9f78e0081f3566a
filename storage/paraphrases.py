"""Paraphrases: other wordings of the question a reply answered, stored with the feedback.

When a reply is corrected, the next LoRA's evaluation asks its question again in other words
to see whether the correction generalised. A paraphrase rewords the last user message of
reply ``message_id``'s stored prompt. One reply holds each wording once: adding one already
stored changes nothing, so a review file read twice, or a form sent twice, adds nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from storage.conflicts import insert_new
from storage.review import check_reply
from storage.schema import Paraphrase, clean_text
from storage.store import Store

_P = Paraphrase.__table__

# Who wrote a paraphrase. Defined once: the importer, the studio and the export use these.
SOURCES = ("reviewer", "generated", "user")
# Longest wording stored. The unique key indexes the text, and PostgreSQL's btree refuses an
# entry over 2,704 bytes: 500 characters are at most 2,000 bytes of UTF-8.
MAX_CHARS = 500


@dataclass(frozen=True, slots=True)
class StoredParaphrase:
    """One row of ``paraphrases``."""

    id: int
    message_id: int  # the reply whose prompt's last user message this rewords
    text: str
    source: str  # one of SOURCES
    author: str
    created_at: float


class ParaphraseTooLong(ValueError):
    """A paraphrase longer than :data:`MAX_CHARS`; the message says which and the limit."""


def clean_paraphrases(texts: Iterable[str]) -> list[str]:
    """``texts`` as they will be stored: stripped, empty ones and repeats left out, in order.
    Raises :class:`ParaphraseTooLong` for one over :data:`MAX_CHARS`."""
    found: dict[str, None] = {}
    for text in texts:
        text = clean_text(text.strip())
        if len(text) > MAX_CHARS:
            raise ParaphraseTooLong(
                f"the paraphrase starting {text[:30]!r} is {len(text)} characters long; "
                f"shorten it to {MAX_CHARS}"
            )
        if text:
            found[text] = None
    return list(found)


def add_paraphrases_sync(
    conn: Connection,
    message_id: int,
    texts: Iterable[str],
    *,
    source: str = "reviewer",
    author: str,
) -> int:
    """Store other wordings of reply ``message_id``'s question in the caller's transaction;
    return how many were new. Texts are stripped, empty ones skipped, and one already stored
    for this reply is kept as it is (whoever wrote it)."""
    if source not in SOURCES:
        raise ValueError(f"paraphrase source {source!r}; use one of {', '.join(SOURCES)}")
    wanted = clean_paraphrases(texts)
    check_reply(conn, message_id)
    if not wanted:
        return 0
    now = time.time()
    rows = [
        {
            "message_id": message_id,
            "text": text,
            "source": source,
            "author": author[:64],
            "created_at": now,
        }
        for text in wanted
    ]
    return _insert_new(conn, message_id, rows)


def _insert_new(conn: Connection, message_id: int, rows: list[dict[str, Any]]) -> int:
    # A wording stored meanwhile by another process is skipped too, instead of failing the
    # whole transaction on the unique key.
    return len(insert_new(conn, _P, rows, key=("message_id", "text")))


async def add_paraphrases(
    store: Store,
    message_id: int,
    texts: Iterable[str],
    *,
    source: str = "reviewer",
    author: str,
) -> int:
    """Store other wordings of reply ``message_id``'s question; how many were new."""
    wanted = list(texts)
    return await store.write(
        lambda conn: add_paraphrases_sync(conn, message_id, wanted, source=source, author=author)
    )


def _query(message_ids: list[int]) -> Any:
    return (
        select(_P.c.id, _P.c.message_id, _P.c.text, _P.c.source, _P.c.author, _P.c.created_at)
        .where(_P.c.message_id.in_(message_ids))
        .order_by(_P.c.id)
    )


def paraphrases_of_sync(
    conn: Connection, message_ids: Iterable[int]
) -> dict[int, list[StoredParaphrase]]:
    """Each reply's paraphrases, oldest first; a reply with none has no key."""
    wanted = list(message_ids)
    found: dict[int, list[StoredParaphrase]] = {}
    if not wanted:
        return found
    for row in conn.execute(_query(wanted)):
        found.setdefault(row.message_id, []).append(StoredParaphrase(*row))
    return found


def list_paraphrases_sync(conn: Connection, message_id: int) -> list[StoredParaphrase]:
    """One reply's paraphrases, oldest first."""
    return paraphrases_of_sync(conn, [message_id]).get(message_id, [])


async def paraphrases_of(
    store: Store, message_ids: Iterable[int]
) -> dict[int, list[StoredParaphrase]]:
    """Each reply's paraphrases, oldest first; a reply with none has no key."""
    wanted = list(message_ids)
    return await store.read(lambda conn: paraphrases_of_sync(conn, wanted))


async def list_paraphrases(store: Store, message_id: int) -> list[StoredParaphrase]:
    """One reply's paraphrases, oldest first."""
    return await store.read(lambda conn: list_paraphrases_sync(conn, message_id))
