"""Wiring: one place that opens the store, the model and the core, and closes them."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator

from bot.config import Config
from bot.core import Core
from bot.loras import LoraSwitcher, base_identity
from bot.models import create_model
from storage.store import Store


@contextlib.asynccontextmanager
async def open_store(config: Config) -> AsyncIterator[Store]:
    store = await Store.open(
        config.storage.url,
        max_wait_s=config.storage.max_wait_s,
        busy_timeout_s=config.storage.busy_timeout_s,
    )
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def open_core(config: Config) -> AsyncIterator[Core]:
    """A started core over the configured store and model; everything closed on exit."""
    async with open_store(config) as store:
        core = Core(
            store=store,
            model=create_model(config.model, config.characters),
            characters=config.characters,
            settings=config.model,
            default_character=config.default_character,
            answer_backlog_minutes=config.bot.answer_backlog_minutes,
            max_replies=config.bot.max_replies,
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
