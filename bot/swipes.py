"""Swipes: sibling replies to one message, paged through in place, and the one kept.

🔁 generates a new sibling into the same platform message (:meth:`Swipes.in_place`); ◀ ▶
page through the siblings (:meth:`Swipes.page`), and the message's part row follows what it
shows, so a vote lands on the sibling shown. When the conversation goes on, it continues
from the sibling shown then (:meth:`Swipes.continue_from`) and that choice is stored in
``swipe_choices``: the kept sibling against the others is a preference pair for training.
"""

from __future__ import annotations

from typing import Any

from bot.characters import Character
from bot.reply import ReplyTarget
from storage.store import Store
from storage.swipes import Shown, keep, page, release, siblings_of


class Swipes:
    """The swipe state of every chat. Which sibling a group shows is kept in memory for
    groups paged or regenerated since start (the common path costs one dict lookup)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._shown: dict[int, int] = {}  # sibling reply id -> the sibling its group shows

    async def position(self, platform: str, chat_id: str, message_id: str) -> Shown | None:
        """Which sibling platform message ``message_id`` shows, of how many."""
        return await siblings_of(self.store, platform, chat_id, message_id)

    async def page(self, platform: str, chat_id: str, message_id: str, step: int) -> Shown | None:
        """Show the sibling ``step`` places on (-1 ◀, +1 ▶) in platform message
        ``message_id``; the caller edits the message to the returned sibling."""
        shown = await page(self.store, platform, chat_id, message_id, step)
        if shown is not None:
            self._show(shown)
        return shown

    async def regenerated(self, platform: str, chat_id: str, message_id: str) -> Shown | None:
        """After a new sibling was generated into ``message_id``: it is the one shown."""
        shown = await siblings_of(self.store, platform, chat_id, message_id)
        if shown is not None and shown.count > 1:
            self._show(shown)
        return shown

    def _show(self, shown: Shown) -> None:
        for sibling in shown.siblings:
            self._shown[sibling] = shown.sibling.id

    async def continue_from(
        self, message_id: int, parent: int | None, user_id: str, *, explicit: bool
    ) -> int | None:
        """The parent a new message ``message_id`` should follow: the sibling its group shows
        (re-linked in the store) unless the person replied to a message ``explicit``-ly.
        Stores the choice once per continuation of a swiped group."""
        if parent is None or parent not in self._shown:
            return parent
        kept = parent if explicit else self._shown[parent]
        for sibling in [s for s, shown in self._shown.items() if shown == self._shown[parent]]:
            del self._shown[sibling]
        relink = message_id if kept != parent else None
        await keep(self.store, kept_id=kept, relink_id=relink, user_id=user_id)
        return kept

    def in_place(
        self, target: ReplyTarget, platform: str, chat_id: str, message_id: str
    ) -> ReplyTarget:
        """``target``, except that the reply's first message is ``message_id`` itself,
        edited: a new sibling replaces the one shown instead of posting a new message."""
        return _InPlace(target, self.store, (platform, chat_id, message_id))


class _InPlace(ReplyTarget):
    """Sends the first part by editing an existing message; everything else as ``inner``."""

    def __init__(self, inner: ReplyTarget, store: Store, where: tuple[str, str, str]) -> None:
        self.inner = inner
        self.store = store
        self.where = where
        self.used = False
        # The platform's measures, so the renderer splits as it would for ``inner``.
        self.max_chars = inner.max_chars  # type: ignore[misc]
        self.edit_interval = inner.edit_interval  # type: ignore[misc]
        self.typing_interval = inner.typing_interval  # type: ignore[misc]
        self.text_length = inner.text_length  # type: ignore[method-assign]

    async def typing(self) -> None:
        await self.inner.typing()

    async def send(self, text: str, *, character: Character) -> str:
        if self.used:
            return await self.inner.send(text, character=character)
        self.used = True
        platform, chat_id, message_id = self.where
        # The message will show the new sibling: the old one keeps its row, not the message.
        await release(self.store, platform, chat_id, message_id)
        await self.inner.edit(message_id, text, character=character)
        return message_id

    async def edit(self, message_id: str, text: str, *, character: Character) -> None:
        await self.inner.edit(message_id, text, character=character)

    async def finished(self, message_ids: list[str], text: str, *, character: Character) -> None:
        await self.inner.finished(message_ids, text, character=character)

    async def notice(self, text: str) -> Any:
        return await self.inner.notice(text)
