"""A reply target that keeps the store told what a streaming reply shows.

A reply being streamed lives on the platform before it is complete. If the process dies
then, the platform keeps a half-written message without its buttons. So the moment its first
message is sent, the reply is recorded in ``streaming_replies`` with that message's id, and the text
shown so far is saved now and then (at most every ``save_interval`` seconds, off the reply's
path); the next start finds such rows and finishes them (bot/recovery.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from bot.characters import Character
from bot.reply import ReplyTarget, split_message
from storage.records import ReplyAddress
from storage.store import Store

log = logging.getLogger(__name__)

INTERRUPTED = "[interrupted]"


class ShownReply(ReplyTarget):
    """Wraps the adapter's target for one reply; records it in the store as it is shown."""

    save_interval = 2.0  # seconds between saves of the text shown so far

    def __init__(self, target: ReplyTarget, store: Store, address: ReplyAddress) -> None:
        self.inner = target
        self.store = store
        # The renderer reads these per instance: they are the wrapped platform's.
        self.max_chars = target.max_chars  # type: ignore[misc]
        self.edit_interval = target.edit_interval  # type: ignore[misc]
        self.typing_interval = target.typing_interval  # type: ignore[misc]
        self.text_length = target.text_length  # type: ignore[method-assign]
        self.address = address
        self.streaming_id: int | None = None
        self._shown: dict[str, str] = {}  # platform message id -> its text, in order
        self._saved_at = 0.0
        self._saving: asyncio.Task[None] | None = None

    async def typing(self) -> None:
        await self.inner.typing()

    async def send(self, text: str, *, character: Character) -> str:
        message_id = await self.inner.send(text, character=character)
        self._shown[message_id] = text
        if self.streaming_id is None:
            self.streaming_id = await self.store.begin_reply(self.address, text, message_id)
            self._saved_at = time.monotonic()
        else:
            self._save_soon(force=True)  # a new message id must be known before a crash
        return message_id

    async def edit(self, message_id: str, text: str, *, character: Character) -> None:
        await self.inner.edit(message_id, text, character=character)
        self._shown[message_id] = text
        self._save_soon()

    async def finished(self, message_ids: list[str], text: str, *, character: Character) -> None:
        await self.inner.finished(message_ids, text, character=character)

    async def notice(self, text: str) -> str | None:
        return await self.inner.notice(text)

    def _save_soon(self, *, force: bool = False) -> None:
        """Save the shown text in the background, unless it was saved very recently."""
        if self.streaming_id is None or (self._saving is not None and not self._saving.done()):
            return
        if not force and time.monotonic() - self._saved_at < self.save_interval:
            return
        self._saved_at = time.monotonic()
        self._saving = asyncio.create_task(self._save(self.streaming_id))

    async def _save(self, streaming_id: int) -> None:
        try:
            await self.store.save_progress(
                streaming_id, "\n\n".join(self._shown.values()), list(self._shown)
            )
        except Exception:  # progress is best effort; the final row is written regardless
            log.warning("could not save the progress of a reply", exc_info=True)

    async def settled(self) -> None:
        """Wait for a progress save in flight, so the final write comes after it."""
        if self._saving is not None:
            with contextlib.suppress(Exception):
                await self._saving


async def finish_interrupted(
    target: ReplyTarget, message_ids: list[str], text: str, character: Character
) -> str:
    """Show ``text`` ending in the [interrupted] marker over the reply's messages and attach
    its buttons; return the text shown. Used for replies cut off by a crash."""
    final = f"{text.rstrip()} {INTERRUPTED}" if text.strip() else INTERRUPTED
    parts = split_message(final, target.max_chars, target.text_length)
    # The text was saved as the parts joined; parts beyond the known messages are folded
    # into the last one rather than sent as new messages nobody asked for.
    if len(parts) > len(message_ids):
        keep = len(message_ids) - 1
        parts = [*parts[:keep], "\n\n".join(parts[keep:])]
        parts[-1] = parts[-1][-target.max_chars :]
    for message_id, part in zip(message_ids, parts, strict=False):
        await target.edit(message_id, part, character=character)
    await target.finished(message_ids, final, character=character)
    return final
