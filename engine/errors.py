"""The engine's own exception types. Vendor exceptions (torch, httpx, transformers) are
translated into these where they are caught; every message is one line a person can read."""

from __future__ import annotations


class EngineError(Exception):
    """Base class: the message is one line, safe to show a user or print at the CLI."""


class SettingsError(EngineError):
    """The engine's settings cannot work (a missing server address, an empty key variable)."""


class ModelError(EngineError):
    """The model failed to load or to generate."""


class LoraLoadError(ModelError):
    """A LoRA directory is missing or does not fit the base model."""

    def __init__(self, name: str, path: str, reason: str) -> None:
        self.name = name
        self.path = path
        self.reason = reason
        super().__init__(f"LoRA for {name!r} at {path}: {reason}")


class Busy(ModelError):
    """The generation queue is full; the user should try again shortly."""
