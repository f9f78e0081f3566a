"""A cache of recent reply chains, so a busy chat does not re-read its history per message."""

from __future__ import annotations

from collections import OrderedDict

from storage.records import HistoryMessage

Chain = tuple[HistoryMessage, ...]
HISTORY_LIMIT = 200  # messages walked up the reply tree before the token budget trims


class ChainCache:
    """Reply chains by the id of their last message, least recently used dropped first.

    A stored message never changes and its ancestors are fixed once it is linked, so a cached
    chain stays true even with several processes on one database: the cache can only miss,
    never be stale.
    """

    def __init__(self, capacity: int = 4096, max_length: int = 200) -> None:
        self.capacity = capacity
        self.max_length = max_length
        self._chains: OrderedDict[int, Chain] = OrderedDict()

    def get(self, message_id: int) -> Chain | None:
        chain = self._chains.get(message_id)
        if chain is not None:
            self._chains.move_to_end(message_id)
        return chain

    def put(self, chain: Chain) -> Chain:
        """Remember ``chain`` (trimmed to ``max_length``) under its last message's id."""
        chain = chain[-self.max_length :]
        self._chains[chain[-1].id] = chain
        self._chains.move_to_end(chain[-1].id)
        while len(self._chains) > self.capacity:
            self._chains.popitem(last=False)
        return chain

    def extend(self, parent_id: int | None, turn: HistoryMessage) -> Chain | None:
        """The chain ending in ``turn`` if its parent's chain is known, else None."""
        if parent_id is None:
            return self.put((turn,))
        parent = self.get(parent_id)
        return None if parent is None else self.put((*parent, turn))
