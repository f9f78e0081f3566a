"""Model backends behind one small abstract class, :class:`bot.models.base.ChatModel`."""

from __future__ import annotations

from collections.abc import Sequence

from bot.characters import Character
from bot.config import BACKENDS, ModelSettings
from bot.errors import ConfigError
from bot.models.base import ChatModel

__all__ = ["BACKENDS", "create_model"]


def create_model(settings: ModelSettings, characters: Sequence[Character] = ()) -> ChatModel:
    """Build (not yet start) the configured backend. Heavy imports happen only here.

    ``characters`` lets a remote backend route each character to its own served LoRA.
    """
    if settings.backend == "echo":
        from bot.models.echo import EchoModel

        return EchoModel()
    if settings.backend == "transformers":
        from bot.models.transformers_backend import TransformersModel

        return TransformersModel(settings)
    if settings.backend == "openai":
        from bot.models.openai_backend import OpenAIModel

        return OpenAIModel(settings, characters)
    raise ConfigError(
        f"[model] backend = {settings.backend!r} is not a backend; use one of {', '.join(BACKENDS)}"
    )
