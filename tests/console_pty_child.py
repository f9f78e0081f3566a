"""The terminal chat on a FakeModel that writes slowly: the program the pseudo-terminal test
drives (``python -m tests.console_pty_child DB``)."""

from __future__ import annotations

import asyncio
import sys

from adapters.console import ConsoleAdapter
from bot.characters import Character
from bot.config import ModelSettings
from bot.core import Core
from storage.store import Store
from tests.fakes import FakeModel

LONG_REPLY = " ".join(["word"] * 400)  # 8 s at 20 ms a word: time to press Ctrl-C


async def main(database: str) -> None:
    store = await Store.open(f"sqlite:///{database}")
    model = FakeModel([LONG_REPLY], delay=0.02, default="Got it.")
    core = Core(
        store=store,
        model=model,
        characters=[Character(name="Aria")],
        settings=ModelSettings(backend="fake"),
    )
    await core.start()
    try:
        await ConsoleAdapter(core, user_name="Sam").run()
    finally:
        await core.close()
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
