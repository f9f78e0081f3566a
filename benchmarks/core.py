"""Core throughput and per-message overhead with the echo backend, SQLite logging included.

Per message the core stores the inbound message, picks the character, builds the prompt
from the stored history, streams the echo reply through a reply target, and stores the
reply with its prompt and parts. Three runs, each on a fresh SQLite file:

- one chat, one message at a time: the bare per-message cost;
- saturated: ``--chats`` chats each send their next message as soon as the last is
  answered: the most messages/s the core sustains (latency here is mostly queueing);
- paced: messages arrive at ``--rate`` per second spread over ``--chats`` chats, as
  traffic does: the per-message overhead a user sees at that load.

    .venv/bin/python benchmarks/core.py [--chats 50] [--messages 40] [--rate 500]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import ClassVar

from bot.characters import Character
from bot.config import ModelSettings
from bot.core import Core
from bot.messages import Inbound
from bot.reply import ReplyTarget
from engine import EngineSettings, create_model
from storage.store import Store


class NullTarget(ReplyTarget):
    """A platform that accepts every send and edit instantly."""

    edit_interval: ClassVar[float] = 1.0
    counter = 0

    async def send(self, text: str, *, character: Character) -> str:
        NullTarget.counter += 1
        return f"r{NullTarget.counter}"

    async def edit(self, message_id: str, text: str, *, character: Character) -> None:
        return None


def message(chat: int, n: int) -> Inbound:
    return Inbound(
        platform="bench",
        chat_id=f"chat{chat}",
        message_id=f"c{chat}m{n}",
        author_id=f"user{chat}",
        author_name="Bench",
        text=f"Message {n} from chat {chat}: how is the weather on the ship today?",
    )


async def chat_session(core: Core, chat: int, messages: int, latencies: list[float]) -> None:
    for n in range(messages):
        started = time.perf_counter()
        await core.handle(message(chat, n), NullTarget())
        latencies.append(time.perf_counter() - started)


async def paced(core: Core, chats: int, total: int, rate: float, latencies: list[float]) -> None:
    """Open loop: message i arrives at i / rate seconds, in chat i % chats."""
    start = time.perf_counter()

    async def one(i: int) -> None:
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        await core.handle(message(i % chats, i), NullTarget())
        latencies.append(time.perf_counter() - max(due, start))

    await asyncio.gather(*(one(i) for i in range(total)))


async def measure(mode: str, chats: int, messages: int, rate: float, db: Path) -> dict:
    store = await Store.open(f"sqlite:///{db}")
    core = Core(
        store=store,
        model=create_model(EngineSettings(backend="echo")),
        characters=[Character(name="Mara", description="A navigator.")],
        settings=ModelSettings(backend="echo", context_tokens=1024),
    )
    await core.start()
    gc.freeze()  # as charbot.wiring does once the bot has started
    latencies: list[float] = []
    started = time.perf_counter()
    if mode == "paced":
        await paced(core, chats, chats * messages, rate, latencies)
    else:
        await asyncio.gather(*(chat_session(core, c, messages, latencies) for c in range(chats)))
    elapsed = time.perf_counter() - started
    await core.close()
    await store.close()
    latencies.sort()
    return {
        "mode": mode,
        "chats": chats,
        "messages": len(latencies),
        "messages_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=50)
    parser.add_argument("--messages", type=int, default=40, help="messages per chat")
    parser.add_argument("--rate", type=float, default=500.0, help="paced arrivals per second")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            asyncio.run(measure("one chat", 1, 1000, 0, Path(tmp) / "one.db")),
            asyncio.run(measure("saturated", args.chats, args.messages, 0, Path(tmp) / "s.db")),
            asyncio.run(measure("paced", args.chats, args.messages, args.rate, Path(tmp) / "p.db")),
        ]
    print(f"{'run':<10} {'chats':>6} {'messages':>9} {'msg/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for row in rows:
        print(
            f"{row['mode']:<10} {row['chats']:>6} {row['messages']:>9} "
            f"{row['messages_per_s']:>9.0f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}"
        )
    print(
        f"target: >= 1000 msg/s (saturated) with p99 < 10 ms per message (paced at {args.rate:.0f}"
        " msg/s)"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
