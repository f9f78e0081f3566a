"""Wiring: one place that opens the store, the model and the core, and closes them."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Sequence

from bot.characters import Character
from bot.config import Config
from bot.core import Core
from bot.loras import LoraSwitcher
from engine import ChatModel, EngineSettings, ServedLora, base_identity, create_model
from storage.store import open_store


def served_loras(characters: Sequence[Character]) -> list[ServedLora]:
    """How a model server serves each character: its ``model`` name, its llama-server
    ``lora_id``, or its LoRA directory for the server to load."""
    return [ServedLora(c.name, model=c.model, server_id=c.lora_id, path=c.lora) for c in characters]


def persona_samples(characters: Sequence[Character]) -> list[str]:
    """Personas are the text a prompt carries most: a server's token estimate is
    calibrated on them."""
    return [c.description + "\n" + c.personality for c in characters]


def build_model(config: Config) -> ChatModel:
    """The configured backend, not yet started."""
    return create_model(
        config.model,
        served=served_loras(config.characters),
        samples=persona_samples(config.characters),
    )


def build_memory_model(config: Config) -> ChatModel | None:
    """[memory]'s own model on an OpenAI-compatible server, or None (the bot's model)."""
    memory = config.memory
    if not memory.enabled or not memory.base_url:
        return None
    settings = EngineSettings(
        backend="openai",
        base_url=memory.base_url,
        model=memory.model,
        api_key_env=memory.api_key_env,
        context_tokens=config.model.context_tokens,
    )
    return create_model(settings)


@contextlib.asynccontextmanager
async def open_core(config: Config) -> AsyncIterator[Core]:
    """A started core over the configured store and model; everything closed on exit."""
    async with open_store(config.storage) as store:
        core = Core(
            store=store,
            model=build_model(config),
            characters=config.characters,
            settings=config.model,
            default_character=config.default_character,
            answer_backlog_minutes=config.bot.answer_backlog_minutes,
            max_replies=config.bot.max_replies,
            memory=config.memory,
            memory_model=build_memory_model(config),
            limits=config.limits,
            scenes=config.scenes,
        )
        await core.start()
        core.loras = LoraSwitcher(
            core,
            store,
            config.training.loras_dir,
            base_identity(config.model, getattr(core.model, "source_path", None)),
            poll_seconds=config.training.poll_seconds,
        )
        await core.loras.start()  # the persisted LoRA choices, then polling for new ones
        # Everything allocated so far (the model, its tokenizer, imported modules) lives for
        # the whole run: move it out of the garbage collector's sight, so the full
        # collections that now and then pause the event loop do not rescan it.
        gc.freeze()
        try:
            yield core
        finally:
            await core.loras.close()
            await core.close()
