"""Model backends behind one small abstract class, :class:`bot.models.base.ChatModel`."""

from __future__ import annotations

from bot.config import ModelSettings
from bot.errors import ConfigError
from bot.models.base import ChatModel

BACKENDS = ("transformers", "echo")


def create_model(settings: ModelSettings) -> ChatModel:
    """Build (not yet start) the configured backend. Heavy imports happen only here."""
    if settings.backend == "echo":
        from bot.models.echo import EchoModel

        return EchoModel()
    if settings.backend == "transformers":
        from bot.models.transformers_backend import TransformersModel

        return TransformersModel(settings)
    raise ConfigError(
        f"[model] backend = {settings.backend!r} is not a backend; use one of {', '.join(BACKENDS)}"
    )
