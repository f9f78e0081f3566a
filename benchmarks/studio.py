"""The studio's costs: a web chat message end to end over HTTP, and a review-queue page on a
large store.

    .venv/bin/python benchmarks/studio.py [--messages 200] [--db PATH] [--json FILE]

Chat: the real app served by uvicorn on 127.0.0.1 (WebAdapter), the echo backend, a real
SQLite file, and httpx as the browser: each message is one POST whose reply streams back as
server-sent events; timed to the first text event and to the ``done`` event, one session
sending one message at a time, then 20 sessions at once.

Review queue: the query behind one /review page (count + 25 rows + their votes and
corrections) for each score filter, on the store benchmarks/export.py builds (1,000,000
messages, 100,000 ratings; pass --db, opened read-only). Skipped when that file is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SESSIONS = 20


def _null_target() -> Any:
    """A reply target that shows nothing (ids unique across its replies): the core's own
    cost, for comparison."""
    import itertools

    from bot.reply import ReplyTarget

    ids = itertools.count()

    class Null(ReplyTarget):
        max_chars = 1_000_000
        edit_interval = 0.0

        async def send(self, text: str, *, character: Any) -> str:
            return f"n{next(ids)}"

        async def edit(self, message_id: str, text: str, *, character: Any) -> None:
            return None

    return Null()


async def _session(base: str) -> Any:
    import httpx

    client = httpx.AsyncClient(base_url=base, trust_env=False, timeout=30)
    page = await client.get("/")
    token = page.text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    client.headers["x-csrf-token"] = token
    return client


async def _message(client: Any, text: str) -> tuple[float, float]:
    """(seconds to the first text event, seconds to done) for one message."""
    started = time.perf_counter()
    first = None
    async with client.stream("POST", "/api/chat/send", json={"text": text}) as response:
        async for line in response.aiter_lines():
            if first is None and line == "event: text":
                first = time.perf_counter() - started
            if line == "event: done":
                break
    return first or 0.0, time.perf_counter() - started


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def chat(messages: int) -> dict[str, Any]:
    from adapters.web.app import WebAdapter
    from bot.config import load_config
    from charbot.wiring import open_core

    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "config.toml"
        config_path.write_text(
            'default_character = "Mara"\n[model]\nbackend = "echo"\n'
            '[storage]\nurl = "sqlite:///charbot.db"\n[training]\npoll_seconds = 0\n'
            '[[characters]]\nname = "Mara"\ndescription = "A navigator."\n'
        )
        config = load_config(config_path)
        async with open_core(config) as core:
            from bot.messages import Inbound

            started = time.perf_counter()
            target = _null_target()
            for n in range(messages):  # the same messages without HTTP, as a baseline
                msg = Inbound("bench", "chat", f"m{n}", "u", "User", f"message number {n}")
                await core.handle(msg, target)
            core_s = time.perf_counter() - started
            web = WebAdapter(core, config, port=0)
            await web.start()
            try:
                one = await _session(web.url)
                for n in range(10):  # warm-up
                    await _message(one, f"warm-up {n}")
                started = time.perf_counter()
                timings = [await _message(one, f"message number {n}") for n in range(messages)]
                serial_s = time.perf_counter() - started
                clients = [await _session(web.url) for _ in range(SESSIONS)]
                per = max(1, messages // SESSIONS)

                async def talk(client: Any, who: int) -> list[tuple[float, float]]:
                    return [await _message(client, f"{who}: {n}") for n in range(per)]

                started = time.perf_counter()
                together = await asyncio.gather(*(talk(c, i) for i, c in enumerate(clients)))
                parallel_s = time.perf_counter() - started
                for client in [one, *clients]:
                    await client.aclose()
            finally:
                await web.stop()
    done = [t[1] * 1000 for t in timings]
    first = [t[0] * 1000 for t in timings]
    loaded = [t[1] * 1000 for batch in together for t in batch]
    return {
        "core_alone_messages_per_s": messages / core_s,
        "serial_messages_per_s": messages / serial_s,
        "serial_first_text_p50_ms": statistics.median(first),
        "serial_done_p50_ms": statistics.median(done),
        "serial_done_p99_ms": _pct(done, 0.99),
        "sessions": SESSIONS,
        "parallel_messages_per_s": SESSIONS * per / parallel_s,
        "parallel_done_p50_ms": statistics.median(loaded),
        "parallel_done_p99_ms": _pct(loaded, 0.99),
    }


class _ReadOnlyStore:
    """Store.read over a read-only connection: the benchmark never migrates or writes."""

    def __init__(self, path: Path) -> None:
        from sqlalchemy import create_engine

        self.engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")

    async def read(self, work: Any) -> Any:
        with self.engine.connect() as conn:
            return work(conn)


async def review(path: Path) -> dict[str, float]:
    from storage import studio
    from storage.feedback import Selection

    store: Any = _ReadOnlyStore(path)
    found = {}
    for score in studio.REVIEW_SCORES:
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            _, rows = await studio.review_queue(store, Selection(), score, limit=25)
            await studio.corrections_of(store, [row.id for row in rows])
            runs.append(time.perf_counter() - started)
        found[score] = statistics.median(runs) * 1000
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--db", type=Path, default=Path("/tmp/charbot-export-bench.db"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    figures: dict[str, Any] = {"chat": asyncio.run(chat(args.messages))}
    c = figures["chat"]
    print(
        f"the core alone (no HTTP), {args.messages} messages: "
        f"{c['core_alone_messages_per_s']:.0f} messages/s"
    )
    print(f"web chat, one session, {args.messages} messages one at a time:")
    print(
        f"  {c['serial_messages_per_s']:.0f} messages/s; first text p50 "
        f"{c['serial_first_text_p50_ms']:.1f} ms; done p50 {c['serial_done_p50_ms']:.1f} ms, "
        f"p99 {c['serial_done_p99_ms']:.1f} ms"
    )
    print(
        f"web chat, {c['sessions']} sessions at once: {c['parallel_messages_per_s']:.0f} "
        f"messages/s; done p50 {c['parallel_done_p50_ms']:.1f} ms, "
        f"p99 {c['parallel_done_p99_ms']:.1f} ms"
    )
    if args.db.is_file():
        figures["review_page_ms"] = asyncio.run(review(args.db))
        print(f"review queue page (25 rows) on {args.db.name}, median of 3:")
        for score, ms in figures["review_page_ms"].items():
            print(f"  score={score:<10} {ms:7.0f} ms")
    else:
        print(f"review queue: skipped, {args.db} is missing (benchmarks/export.py builds it)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
