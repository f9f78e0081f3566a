"""Feedback on a shown reply: a vote, a correction, or a regenerated sibling.

Every action names the reply by a platform message that shows it (any part of it); a
platform message that shows no stored reply is answered with False or None.
"""

from __future__ import annotations

from bot.answering import Answerer, ReplyResult
from bot.cast import Cast
from bot.history import HISTORY_LIMIT, ChainCache
from bot.reply import ReplyTarget
from bot.scenes import Scenes
from bot.sequencer import ChatLines
from storage.records import StoredMessage
from storage.store import Store


class Feedback:
    """What people do with a character's reply after it is shown."""

    def __init__(
        self,
        *,
        store: Store,
        cast: Cast,
        answerer: Answerer,
        chains: ChainCache,
        lines: ChatLines,
        scenes: Scenes | None = None,
    ) -> None:
        self.scenes = scenes
        self.store = store
        self.cast = cast
        self.answerer = answerer
        self.chains = chains
        self.lines = lines

    async def reply(self, platform: str, chat_id: str, message_id: str) -> StoredMessage | None:
        """The stored reply that platform message ``message_id`` shows, or None."""
        row = await self.store.find_message(platform, chat_id, message_id)
        if row is None or row.role != "assistant":
            return None
        return row

    async def vote(
        self, platform: str, chat_id: str, message_id: str, user_id: str, value: int
    ) -> bool:
        """See :meth:`bot.core.Core.vote`."""
        row = await self.reply(platform, chat_id, message_id)
        if row is None:
            return False
        await self.store.set_vote(row.id, user_id, value)
        return True

    async def correct(
        self, platform: str, chat_id: str, message_id: str, user_id: str, text: str
    ) -> bool:
        """See :meth:`bot.core.Core.correct`."""
        row = await self.reply(platform, chat_id, message_id)
        if row is None or not text.strip():
            return False
        await self.store.add_correction(row.id, user_id, text.strip())
        return True

    async def regenerate(
        self, platform: str, chat_id: str, message_id: str, target: ReplyTarget
    ) -> ReplyResult | None:
        """A new sibling of the reply shown by ``message_id``, from the same history, written
        in the chat's line."""
        row = await self.reply(platform, chat_id, message_id)
        if row is None or row.parent_id is None:
            return None
        parent = await self.store.get_message(row.parent_id)
        thread = await self.store.conversation_thread(row.conversation_id)
        key = (platform, chat_id, thread)
        place = self.lines.enter(key)
        try:
            await place.wait()
            character = self.cast.first_known(row.character)
            # A character that joined the scene late sees only its part of the chat here too.
            since = (
                await self.scenes.joined_after(platform, chat_id, character.name)
                if self.scenes is not None
                else 0
            )
            return await self.answerer.answer(
                key=key,
                conversation=row.conversation_id,
                chain=self.chains.get(row.parent_id)
                or tuple(await self.store.history(row.parent_id, HISTORY_LIMIT)),
                character=character,
                user_name=parent.author_name if parent is not None else "user",
                target=target,
                regenerated_from=row.regenerated_from_id or row.id,
                since=since,
            )
        finally:
            place.done()
