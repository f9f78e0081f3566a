"""The store's own exception types (storage never imports the bot's)."""

from __future__ import annotations


class StorageError(Exception):
    """A database problem; the message is one line, safe to print at the CLI."""
