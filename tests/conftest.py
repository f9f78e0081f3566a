"""Shared fixtures: a real SQLite store in a temporary directory and a Core over it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from bot.characters import Character
from bot.config import MemorySettings, ModelSettings
from bot.core import Core
from engine import ChatModel
from storage.store import Store
from tests.fakes import FakeModel
from tests.postgres import pg_server, pg_url  # noqa: F401 - fixtures for every test module

# The fake platform servers listen on 127.0.0.1; a proxy in the environment must not
# intercept those requests.
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
os.environ.setdefault("no_proxy", "127.0.0.1,localhost")

DEFAULT_CHARACTERS = (
    Character(name="Aria", description="A cheerful starship navigator.", greeting="Hi!"),
    Character(name="Bram", description="A grumpy lighthouse keeper."),
)

MakeCore = Callable[..., Awaitable[Core]]


@pytest.fixture(scope="module")
def tiny_all_linear(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random Llama ("base") and a LoRA on every linear layer ("lora"), as `charbot
    train` targets by default: o_proj and down_proj are the projections the lean path calls
    on their own (not through a fused weight)."""
    from tests.tiny_model import ALL_LINEAR, build_tiny_adapter, build_tiny_model

    root = tmp_path_factory.mktemp("tiny-all-linear")
    base = build_tiny_model(root / "base")
    lora = build_tiny_adapter(base, root / "bram" / "v1", targets=ALL_LINEAR)
    return {"base": base, "lora": lora}


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'charbot.db'}"


@pytest.fixture
async def make_core(db_url: str) -> AsyncIterator[MakeCore]:
    """``core = await make_core(model=FakeModel([...]), characters=[...], **settings)``;
    ``memory=MemorySettings()`` turns memory on.

    Each call opens the same database file, so a second core is "the bot after a restart".
    """
    opened: list[tuple[Core, Store]] = []

    async def factory(
        model: ChatModel | None = None,
        characters: Sequence[Character] = DEFAULT_CHARACTERS,
        default_character: str | None = None,
        memory: MemorySettings | None = None,
        memory_model: ChatModel | None = None,
        limits: Any = None,
        clock: Any = None,
        scenes: Any = None,
        **settings: Any,
    ) -> Core:
        store = await Store.open(db_url)
        core = Core(
            store=store,
            model=model or FakeModel(),
            characters=list(characters),
            settings=ModelSettings(backend="fake", **settings),
            default_character=default_character,
            memory=memory,
            memory_model=memory_model,
            limits=limits,
            scenes=scenes,
            **({"clock": clock} if clock is not None else {}),
        )
        await core.start()
        opened.append((core, store))
        return core

    yield factory
    for core, store in opened:
        await core.close()
        await store.close()
