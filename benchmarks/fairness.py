"""Fair turns and quotas: one person floods a group while others write one message each.

The real default model (config.toml's [model], backend "local") and characters, a real
SQLite file, a platform that takes every send at once. After one warm-up reply, one person
sends ``--flood`` messages at once; once the first of them is answered, ``--others`` people
each send one, 2.5 times that reply's time apart (the first a third of a reply in), all
addressed to the bot in one group. Two runs on fresh databases:

- limits on ([limits] defaults: 6 answered messages per person per minute in a group);
- limits off (the baseline): the flooder's whole backlog is answered.

Printed per run: messages stored (all of them), the flooder's answers (within the limit)
and notices (one), each other person's wait from their message to their finished reply in
reply times (the median time a reply held the chat's line in that run: prompt, generation,
stored row; target: within two), p50/p99 of those waits, how much of each wait came
before their own reply started, how many of the flooder's replies held the line meanwhile
(target: at most the one being written when they wrote), and the model's completion tokens
per person.

    .venv/bin/python benchmarks/fairness.py [--flood 50] [--others 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.characters import Character
from bot.config import LimitRules, load_config
from bot.core import Core
from bot.messages import Inbound
from bot.reply import ReplyTarget
from engine import create_model
from storage.store import Store

ROOT = Path(__file__).resolve().parent.parent
FLOODER = "flooder"
# The others write this many of the flooder's first reply apart: each then finds only the flooder's
# backlog in line (people who write at the same moment also take turns among themselves,
# one reply each).
SPACING = 2.5


class Target(ReplyTarget):
    """A platform that accepts every send and edit at once, and keeps the notices."""

    edit_interval: ClassVar[float] = 1.0
    counter = 0

    def __init__(self, notices: list[str]) -> None:
        self.notices = notices

    async def send(self, text: str, *, character: Character) -> str:
        Target.counter += 1
        return f"r{Target.counter}"

    async def edit(self, message_id: str, text: str, *, character: Character) -> None:
        return None

    async def notice(self, text: str) -> str | None:
        self.notices.append(text)
        return None


def message(author: str, n: int, text: str) -> Inbound:
    return Inbound(
        platform="bench",
        chat_id="group",
        message_id=f"{author}-{n}",
        author_id=author,
        author_name=author.capitalize(),
        text=text,
        private=False,
    )


async def run(limits: LimitRules | None, flood: int, others: int, max_tokens: int | None) -> dict:
    config = load_config(ROOT / "config.toml", backend="local")
    settings = config.model
    if max_tokens is not None:
        settings = dataclasses.replace(settings, max_new_tokens=max_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(f"sqlite:///{Path(tmp) / 'fair.db'}")
        core = Core(
            store=store,
            model=create_model(settings, progress=False),
            characters=config.characters,
            settings=settings,
            default_character=config.default_character,
            limits=limits,
        )
        await core.start()
        try:
            return await _measure(core, store, flood, others)
        finally:
            await core.close()
            await store.close()


def time_replies(core: Core) -> list[tuple[str, float, float]]:
    """(person, start, end) of each reply: how long it held its chat's line (prompt,
    generation, stored row), the reply time the waits are measured in."""
    durations: list[tuple[str, float, float]] = []
    answer = core._answerer.answer

    async def timed(**kw):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return await answer(**kw)
        finally:
            durations.append((kw["user_name"], started, time.perf_counter()))

    core._answerer.answer = timed  # type: ignore[method-assign]
    return durations


async def _measure(core: Core, store: Store, flood: int, others: int) -> dict:
    notices: list[str] = []
    durations = time_replies(core)
    await core.handle(message("warmup", 0, "Hello! How are you today?"), Target([]))
    tasks = [
        await core.receive(message(FLOODER, n, f"Question {n}: what do you see out there?"), t)
        for n, t in enumerate(Target(notices) for _ in range(flood))
    ]
    # The flooder's first reply sets the spacing (the warm-up's is shorter: no history).
    first = time.perf_counter()
    assert tasks[0] is not None
    await tasks[0]
    spacing = SPACING * (time.perf_counter() - first)
    waits: dict[str, float] = {}
    sent_at: dict[str, float] = {}

    async def other(i: int) -> None:
        await asyncio.sleep(i * spacing + 0.3 * spacing / SPACING)
        sent = sent_at[f"Other{i}"] = time.perf_counter()
        task = await core.receive(message(f"other{i}", 0, "Hi! Where are we headed?"), Target([]))
        assert task is not None
        await task
        waits[f"Other{i}"] = time.perf_counter() - sent

    await asyncio.gather(*(other(i) for i in range(others)))
    left = sum(not t.done() for t in tasks if t is not None)
    await asyncio.gather(*(t for t in tasks if t is not None))
    rows = await store.list_messages(platform="bench")
    users = {r.id: r for r in rows if r.role == "user"}
    tokens: dict[str, int] = {}
    for reply in (r for r in rows if r.role == "assistant"):
        author = users[reply.parent_id].author_id if reply.parent_id in users else "?"
        tokens[author] = tokens.get(author, 0) + (reply.completion_tokens or 0)
    flooded = [r for r in users.values() if r.author_id == FLOODER]
    # A reply time: the median over this run's replies (but the warm-up, without history).
    reply_s = statistics.median(end - start for _, start, end in durations[1:])
    own = {who: end - start for who, start, end in durations}
    starts = {who: start for who, start, _ in durations}
    # The flooder's replies that held the line while someone else waited (target: 1 at most,
    # the one being written when they wrote).
    flood_ahead = [
        sum(
            who == FLOODER.capitalize() and end > sent_at[other] and start < starts[other]
            for who, start, end in durations
        )
        for other in sent_at
    ]
    # Beyond their own reply: how long the line held them back (the flood's share: one reply)
    ahead = sorted((w - own[who]) / reply_s for who, w in waits.items())
    total = sorted(w / reply_s for w in waits.values())
    return {
        "reply_s": reply_s,
        "stored": sum(r.author_id != "warmup" for r in users.values()),
        "flood_answered": sum(r.progress == "answered" for r in flooded),
        "flood_limited": sum(r.progress == "limited" for r in flooded),
        "left": left,
        "notices": len(notices),
        "waits": total,
        "p50": statistics.median(total),
        "p99": total[min(len(total) - 1, int(len(total) * 0.99))],
        "ahead": ahead,
        "flood_ahead": max(flood_ahead),
        "tokens": tokens,
    }


def report(name: str, row: dict, flood: int, others: int) -> None:
    print(f"\n{name}: one reply takes {row['reply_s']:.2f} s")
    print(f"  stored: {row['stored']} of {flood + others} messages")
    line = f"  flooder: {row['flood_answered']} answered, {row['flood_limited']} limited"
    if row["left"]:
        line += f", {row['left']} still in line when the last other was answered"
    print(f"{line}; {row['notices']} notice(s)")
    waits = ", ".join(f"{w:.2f}" for w in row["waits"])
    print(f"  others' waits in reply times: {waits} (p50 {row['p50']:.2f}, p99 {row['p99']:.2f})")
    ahead = ", ".join(f"{w:.2f}" for w in row["ahead"])
    print(f"  of which before their own reply started: {ahead}")
    print(f"  the flooder's replies ahead of another's, at most: {row['flood_ahead']} (target: 1)")
    tokens = ", ".join(f"{who} {n}" for who, n in sorted(row["tokens"].items()))
    print(f"  completion tokens per person: {tokens}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=50, help="the flooder's messages")
    parser.add_argument("--others", type=int, default=3, help="people writing one message")
    parser.add_argument(
        "--quick", action="store_true", help="a short check: 10 messages, replies of 24 tokens"
    )
    args = parser.parse_args()
    flood, max_tokens = (10, 24) if args.quick else (args.flood, None)
    limited = load_config(ROOT / "config.toml").limits
    rows = {
        "limits on ([limits] defaults)": asyncio.run(run(limited, flood, args.others, max_tokens)),
        "limits off (baseline)": asyncio.run(run(None, flood, args.others, max_tokens)),
    }
    for name, row in rows.items():
        report(name, row, flood, args.others)
    worst = max(row["p99"] for row in rows.values())
    ahead = max(row["flood_ahead"] for row in rows.values())
    print(
        f"\nworst wait of another person: {worst:.2f} reply times (target: within 2); "
        f"the flooder's replies ahead of anyone else's: {ahead} at most (target: 1)"
    )


if __name__ == "__main__":
    main()
