"""A web chat reply as server-sent events: the core streams into a queue, the HTTP response
reads it out as ``event:``/``data:`` frames."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any, ClassVar

from bot.characters import Character
from bot.core import ReplyResult
from bot.reply import ReplyTarget

log = logging.getLogger(__name__)

_END = "_end"


def frame(event: str, data: Any) -> str:
    """One server-sent event; the data is JSON, so text with newlines stays one frame."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def new_message_id(prefix: str) -> str:
    # Unique across runs: reply parts are keyed by (platform, chat, id) in the database.
    return prefix + uuid.uuid4().hex[:15]


class WebTarget(ReplyTarget):
    """Queues what the core shows; :func:`stream_events` turns the queue into SSE frames."""

    max_chars: ClassVar[int] = 1_000_000  # one bubble holds the whole reply
    edit_interval: ClassVar[float] = 0.05  # at most ~20 updates a second reach the browser
    typing_interval: ClassVar[float] = 5.0

    def __init__(self) -> None:
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def typing(self) -> None:
        self.events.put_nowait(("typing", {}))

    async def send(self, text: str, *, character: Character) -> str:
        message_id = new_message_id("w")
        self.events.put_nowait(
            ("text", {"id": message_id, "text": text, "character": character.name})
        )
        return message_id

    async def edit(self, message_id: str, text: str, *, character: Character) -> None:
        self.events.put_nowait(
            ("text", {"id": message_id, "text": text, "character": character.name})
        )

    async def notice(self, text: str) -> str | None:
        self.events.put_nowait(("notice", {"text": text}))
        return None


def result_data(result: ReplyResult | None) -> dict[str, Any]:
    if result is None:
        return {"status": "none"}
    return {
        "status": result.status,
        "reply_id": result.reply_id,
        "character": result.character,
        "text": result.text,
        "id": result.message_ids[0] if result.message_ids else None,
    }


async def stream_events(
    target: WebTarget, work: Awaitable[ReplyResult | None]
) -> AsyncIterator[str]:
    """Frames of everything ``work`` shows through ``target``, then one ``done`` frame.

    A browser that goes away does not stop the reply: the core finishes and stores it.
    """
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda _: target.events.put_nowait((_END, None)))
    while True:
        event, data = await target.events.get()
        if event == _END:
            break
        yield frame(event, data)
    try:
        result = task.result()
    except Exception as exc:  # shown as one line; the core has stored what it could
        log.warning("web reply failed: %s", exc)
        yield frame("error", {"text": str(exc) or type(exc).__name__})
        return
    yield frame("done", result_data(result))
