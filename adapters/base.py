"""The adapter contract: a platform edge that turns platform events into core calls."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar


class PlatformAdapter(ABC):
    """One platform connection, started inside the shared event loop by ``charbot run``.

    ``start`` returns once the adapter is connected and receiving (it must not block
    forever); ``stop`` disconnects cleanly. Dependencies (the core, settings, the token)
    come in through the constructor.
    """

    platform: ClassVar[str]

    @abstractmethod
    async def start(self) -> None:
        """Connect and begin handling events in the background."""

    async def stop_intake(self) -> None:  # noqa: B027 - optional hook
        """Stop taking new events and store every one already received; replies in
        progress keep going (the core finishes them, then ``stop`` is called)."""

    @abstractmethod
    async def stop(self) -> None:
        """Disconnect; in-flight replies are cancelled or finished."""
