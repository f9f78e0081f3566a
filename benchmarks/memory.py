"""Does memory bring back what a person said long ago, and keep private things private?

    nice -n 10 .venv/bin/python benchmarks/memory.py [--turns 60] [--answers 6] [--no-model]
    .venv/bin/python benchmarks/memory.py --quick     # < 2 minutes, no real model (tests)

Per shipped character (config.toml's Mara, Bram, Pip), in a throwaway SQLite database:
Kim tells the character three private things in a direct message; Sam states six facts
about himself in a group chat in his own words; ``--turns`` turns of other talk (Kim joins
in now and then) push them far outside the ``[model] context_tokens`` window; then Sam asks
about each fact in other words, and Kim asks about hers in the group and in her DM. The
same script runs three times: memory on (the defaults), recall alone (``extract = "off"``,
no summaries) and memory off (the baseline). Printed per character and overall:

- the share of Sam's questions whose stored prompt holds the fact (target >= 95%), and
  through which part: recalled lines, notes, the story so far;
- the share answered correctly by the default model (a keyword of the fact in the reply);
- the share of prompts in the group chat holding one of Kim's private facts (target 0%);
- recall's extra time to first token at 10,000 stored messages in one chat (target p50
  < 30 ms), the first call (reading the chat's vectors), summary job time, index size per
  10,000 messages; the same at 100,000 messages (vectors synthetic there).

The other talk is answered by a canned model (instant, varied short replies) so that a run
takes minutes; Sam's questions (``--answers`` of them per character) and the summaries go
to the real default model (SmolLM2-135M-Instruct, backend "local"), unless ``--no-model``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from sqlalchemy import insert  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bot.config import MemorySettings, load_config  # noqa: E402
from bot.core import Core  # noqa: E402
from bot.knowledge import MiniLM  # noqa: E402
from bot.memory import Memory  # noqa: E402
from bot.memory.recall import to_bytes  # noqa: E402
from bot.memory.summaries import SummaryFailed  # noqa: E402
from bot.messages import Inbound  # noqa: E402
from engine import ChatMessages, ChatModel, Chunk, GenerationRequest, Usage  # noqa: E402
from storage import memory as sql  # noqa: E402
from storage.records import HistoryMessage  # noqa: E402
from storage.schema import Conversation, Message, MessageVector  # noqa: E402
from storage.store import Store  # noqa: E402
from tests.fakes import RecordingTarget  # noqa: E402


@dataclass(frozen=True)
class Fact:
    """A thing a person says about themselves, a question about it in other words, and the
    words a prompt or an answer that holds it contains (any one, case-insensitive)."""

    said: str
    question: str
    keywords: tuple[str, ...]


CASES: dict[str, list[Fact]] = {
    "Mara": [
        Fact(
            "My sister Lena is a veterinarian in Oslo.",
            "Remind me, what job does my sister have?",
            ("vet",),
        ),
        Fact("I'm allergic to peanuts.", "Is there any food I should stay away from?", ("peanut",)),
        Fact(
            "Our dog is called Biscuit and he hates thunder.",
            "What's the name of my pet again?",
            ("biscuit",),
        ),
        Fact(
            "I grew up in Tromsø, right up in the north of Norway.",
            "Which town am I from originally?",
            ("tromsø", "tromso"),
        ),
        Fact(
            "I work as a dental hygienist at a clinic downtown.",
            "What do I do for a living?",
            ("dental", "hygienist", "dentist"),
        ),
        Fact(
            "Next spring I'm going to walk the Camino de Santiago with my father.",
            "What trip am I planning for next year?",
            ("camino", "santiago"),
        ),
    ],
    "Bram": [
        Fact(
            "My brother Tomas fixes fishing boats in Stavanger.",
            "What does my brother do for work?",
            ("boats", "stavanger"),
        ),
        Fact(
            "I can't eat shellfish, it makes me very ill.",
            "Is there anything I shouldn't eat?",
            ("shellfish",),
        ),
        Fact(
            "I have a grey parrot named Captain Flint.",
            "What was my bird called?",
            ("flint",),
        ),
        Fact(
            "I was born in Galway, on the west coast of Ireland.",
            "Where was I born?",
            ("galway",),
        ),
        Fact(
            "I teach chemistry at a secondary school.",
            "What subject do I teach?",
            ("chemistry",),
        ),
        Fact(
            "In August I'm running my first marathon, in Copenhagen.",
            "What race am I training for this summer?",
            ("marathon", "copenhagen"),
        ),
    ],
    "Pip": [
        Fact(
            "My grandmother Rosa still bakes bread every morning at ninety.",
            "Who in my family bakes every day?",
            ("rosa", "grandmother", "grandma"),
        ),
        Fact(
            "I'm a vegetarian, I haven't eaten meat in ten years.",
            "Do I eat meat?",
            ("vegetarian",),
        ),
        Fact(
            "My cat Pumpkin sleeps on my keyboard all day.",
            "What's my cat's name?",
            ("pumpkin",),
        ),
        Fact(
            "I live in a tiny flat in Lisbon, near the river.",
            "Which city do I live in?",
            ("lisbon",),
        ),
        Fact(
            "I'm a nurse on the night shift at the children's hospital.",
            "What is my job?",
            ("nurse",),
        ),
        Fact(
            "This winter I want to learn to play the cello.",
            "Which instrument did I want to take up?",
            ("cello",),
        ),
    ],
}

# Kim's private things, told in a direct message: never in the group, nor in Sam's prompts.
PRIVATE = [
    Fact(
        "I'm being treated for diabetes, please keep that between us.",
        "Do you remember what I'm being treated for?",
        ("diabetes",),
    ),
    Fact(
        "My husband Olek lost his job at the shipyard last week.",
        "What happened to my husband recently?",
        ("olek", "shipyard"),
    ),
    Fact(
        "I'm secretly applying for a job in Montreal.",
        "Which city am I applying to move to?",
        ("montreal",),
    ),
]

TOPICS = [
    "the weather",
    "old films",
    "the news",
    "breakfast",
    "board games",
    "the stars",
    "trains",
    "music",
    "gardening",
    "the sea",
    "rainy days",
    "good books",
    "the market",
    "long walks",
    "the radio",
]
TALK = [
    "What do you think about {t}?",
    "Tell me something surprising about {t}.",
    "I was reading about {t} yesterday, it was more interesting than I expected.",
    "Do you have a favourite story about {t}?",
    "Honestly I never cared much for {t}.",
    "My neighbour keeps going on about {t}, it's driving me mad.",
    "If you had a whole free day, would you spend it on {t}?",
    "What's the strangest thing you've heard about {t}?",
    "Let's talk about {t} for a bit.",
    "I think people underrate {t}.",
    "Was {t} different when you were younger?",
    "How would you explain {t} to a child?",
]
OPENERS = [
    "Ha, that's a fine question.",
    "I've thought about that more than I'd like to admit.",
    "Funny you ask.",
    "Give me a moment.",
    "Hm, not what I expected you to say.",
    "Now that is a story for a long evening.",
    "I couldn't agree more.",
    "Some say yes, some say no.",
]
CLOSERS = [
    "{t} has a way of surprising people.",
    "I'd say {t} depends on the day.",
    "Everyone has an opinion on {t}.",
    "I never get tired of {t}.",
    "{t} was on my mind this morning too.",
    "There's more to {t} than meets the eye.",
]
REPLIES = [f"{o} {c}" for o in OPENERS for c in CLOSERS]  # {t}: the topic of the turn


def filler(count: int, seed: int) -> list[str]:
    """``count`` lines of everyday talk, none about the facts."""
    lines = [template.format(t=topic) for template in TALK for topic in TOPICS]
    random.Random(seed).shuffle(lines)
    return list(itertools.islice(itertools.cycle(lines), count))


# -- the models ---------------------------------------------------------------------------


def is_summary(request: GenerationRequest) -> bool:
    return request.messages[0]["content"].startswith("You keep the story so far")


class Canned(ChatModel):
    """Short varied replies at once; with ``real``, counts tokens with the real model's
    tokenizer, and hands it summaries and (while ``live``) replies."""

    name: ClassVar[str] = "canned"

    def __init__(self, real: ChatModel | None) -> None:
        self.real = real
        self.live = False
        self._replies = itertools.cycle(random.Random(0).sample(REPLIES, len(REPLIES)))

    def count_tokens(self, messages: ChatMessages) -> int:
        return self.real.count_tokens(messages) if self.real else super().count_tokens(messages)

    def truncate(self, text: str, max_tokens: int) -> str:
        return (
            self.real.truncate(text, max_tokens)
            if self.real
            else super().truncate(text, max_tokens)
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        if self.real is not None and (self.live or is_summary(request)):
            async for chunk in self.real.stream(request):
                yield chunk
            return
        answer = (
            "They talked about everyday things." if is_summary(request) else next(self._replies)
        )
        yield Chunk(answer)
        yield Chunk("", Usage(self.count_tokens(request.messages), 12, "canned", None, "stop"))


# -- one scripted conversation --------------------------------------------------------------

MODES = {
    "memory on": MemorySettings(),
    "recall alone": MemorySettings(extract="off", summarize_every=0),
    "memory off": None,
}
TURN_S = 30.0  # what one scripted turn counts as, for the summary's retry pauses


@dataclass
class Asked:
    fact: Fact
    prompt: list[dict[str, str]]
    reply: str
    live: bool  # answered by the real model

    def holds(self, where: str = "any") -> bool:
        return has(part(self.prompt, where), self.fact.keywords)

    def correct(self) -> bool:
        return has(self.reply, self.fact.keywords)


@dataclass
class Run:
    character: str
    mode: str
    asked: list[Asked] = field(default_factory=list)  # Sam's questions in the group
    kim_dm: list[Asked] = field(default_factory=list)  # Kim's, in her DM (positive control)
    group_prompts: list[list[dict[str, str]]] = field(default_factory=list)
    summaries: list[tuple[float, str]] = field(default_factory=list)  # (seconds, outcome)
    notes: int = 0
    seconds: float = 0.0

    def leaks(self) -> int:
        keywords = tuple(k for fact in PRIVATE for k in fact.keywords)
        return sum(has(json.dumps(p, ensure_ascii=False), keywords) for p in self.group_prompts)


def has(textish: str, keywords: Sequence[str]) -> bool:
    low = textish.casefold()
    return any(k.casefold() in low for k in keywords)


def part(prompt: list[dict[str, str]], where: str) -> str:
    """A part of a stored prompt: "any", "history", or a memory section of the system
    prompt ("recall", "notes", "story")."""
    if where == "any":
        return "\n".join(m["content"] for m in prompt)
    if where == "history":
        return "\n".join(m["content"] for m in prompt[1:])
    prefix = {
        "recall": "Earlier in this chat (recalled",
        "notes": "Things ",
        "story": "The story so far:",
    }[where]
    paragraphs = prompt[0]["content"].split("\n\n")
    return "\n".join(
        p
        for p in paragraphs
        if p.startswith(prefix) and (where != "notes" or " told " in p.split("\n")[0])
    )


_ids = itertools.count(1)


def inbound(name: str, chat: str, user: str, who: str, words: str, private: bool) -> Inbound:
    return Inbound(
        platform="bench",
        chat_id=chat,
        message_id=f"m{next(_ids)}",
        author_id=user,
        author_name=who,
        text=words,
        character=name,
        private=private,
    )


async def converse(
    config: Any, name: str, mode: str, turns: int, answers: int, real: ChatModel | None, tmp: Path
) -> Run:
    run = Run(name, mode)
    started = time.perf_counter()
    model = Canned(real)
    store = await Store.open(f"sqlite:///{tmp / (name + '-' + mode.replace(' ', '-') + '.db')}")
    core = Core(
        store=store,
        model=model,
        characters=config.characters,
        settings=config.model,
        default_character=name,
        memory=MODES[mode],
    )
    await core.start()
    memory = core.memory
    if memory is not None:  # each summary job timed, with what came of it
        extend = memory.summaries.extend

        async def timed(conversation_id: int, character: str):  # type: ignore[no-untyped-def]
            began = time.perf_counter()
            try:
                stored = await extend(conversation_id, character)
            except SummaryFailed as exc:
                run.summaries.append((time.perf_counter() - began, str(exc)))
                raise
            except Exception as exc:
                run.summaries.append((time.perf_counter() - began, type(exc).__name__))
                raise
            run.summaries.append((time.perf_counter() - began, "stored" if stored else "nothing"))
            return stored

        memory.summaries.extend = timed  # type: ignore[method-assign]

    async def say(chat: str, user: str, who: str, words: str, private: bool) -> Any:
        result = await core.handle(
            inbound(name, chat, user, who, words, private), RecordingTarget()
        )
        if memory is not None:
            await memory.settled()
            pauses = memory.summaries._pause  # a turn takes a while: pauses run out
            for key, (until, length) in list(pauses.items()):
                pauses[key] = (until - TURN_S, length)
        return result

    async def prompt_of(result: Any) -> list[dict[str, str]]:
        rows = await store.list_messages()
        row = next(r for r in rows if r.id == result.reply_id)
        return json.loads(row.prompt_json)

    try:
        for fact in PRIVATE:
            await say("dm-kim", "kim", "Kim", fact.said, True)
        for fact in CASES[name]:
            await say("group", "sam", "Sam", fact.said, False)
        for index, line in enumerate(filler(turns, seed=len(name))):
            user, who = ("kim", "Kim") if index % 7 == 3 else ("sam", "Sam")
            result = await say("group", user, who, line, False)
            run.group_prompts.append(await prompt_of(result))
        for index, fact in enumerate(CASES[name]):
            model.live = real is not None and index < answers and mode != "recall alone"
            result = await say("group", "sam", "Sam", fact.question, False)
            prompt = await prompt_of(result)
            run.asked.append(Asked(fact, prompt, result.text, model.live))
            run.group_prompts.append(prompt)
        model.live = False
        for fact in PRIVATE:  # Kim asks in the group: her private things stay out
            run.group_prompts.append(
                await prompt_of(await say("group", "kim", "Kim", fact.question, False))
            )
        for fact in PRIVATE:  # ... and in her DM they are there
            result = await say("dm-kim", "kim", "Kim", fact.question, True)
            run.kim_dm.append(Asked(fact, await prompt_of(result), result.text, False))
        if memory is not None:
            run.notes = len(await store.read(lambda conn: sql.list_notes(conn)))
    finally:
        await core.close()
        await store.close()
    run.seconds = time.perf_counter() - started
    return run


# -- a long chat: latency, index size ------------------------------------------------------


def pool() -> list[str]:
    """The texts of the long chat: everyday talk and replies, Sam's facts now and then."""
    lines = [template.format(t=topic) for template in TALK for topic in TOPICS]
    replies = [r.format(t=TOPICS[i % len(TOPICS)]) for i, r in enumerate(REPLIES)]
    return lines + replies + [fact.said for fact in CASES["Mara"]]


async def fill(store: Store, count: int, start: int, conversation: int) -> list[int]:
    """Store ``count`` messages (Sam and Mara in turn) after message ``start``; the index
    into :func:`pool` of each one's text."""
    texts, chosen, rng = pool(), [], random.Random(start)
    now = time.time() - 86400 * 365
    rows = []
    for n in range(start + 1, start + count + 1):
        user = n % 2 == 1
        index = (
            rng.randrange(len(texts) - len(REPLIES) - 6)
            if user
            else len(texts) - 6 - len(REPLIES) + n % len(REPLIES)
        )
        if user and n % 997 == 0:  # a fact, now and then
            index = len(texts) - 6 + (n // 997) % 6
        chosen.append(index)
        rows.append(
            {
                "id": n,
                "conversation_id": conversation,
                "platform": "bench",
                "chat_id": "big",
                "platform_message_id": f"p{n}",
                "role": "user" if user else "assistant",
                "author_id": "sam" if user else "",
                "author_name": "Sam" if user else "Mara",
                "text": texts[index],
                "reply_to_id": n - 1 if n > 1 else None,
                "character": None if user else "Mara",
                "status": "ok",
                "created_at": now + n * 30,
                "progress": "answered" if user else None,
            }
        )

    def work(conn):  # type: ignore[no-untyped-def]
        for block in range(0, len(rows), 5000):
            conn.execute(insert(Message.__table__), rows[block : block + 5000])

    await store.write(work)
    return chosen


def index_bytes(store_path: Path) -> int:
    """Bytes the vectors take in the SQLite file: the table and its index (dbstat)."""
    import sqlite3

    with sqlite3.connect(store_path) as conn:
        rows = conn.execute(
            "SELECT SUM(pgsize) FROM dbstat WHERE name IN "
            "(SELECT name FROM sqlite_schema WHERE tbl_name = 'memory_vectors')"
        ).fetchone()
    return int(rows[0] or 0)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def long_chat(
    config: Any, messages: int, embed: int, calls: int, counter: ChatModel, tmp: Path
) -> dict[str, Any]:
    """One chat of ``messages`` stored messages: the first ``embed`` embedded by the
    Indexer, the rest given their text's vector plus a little noise (synthetic)."""
    path = tmp / f"long-{messages}.db"
    store = await Store.open(f"sqlite:///{path}")
    character = next(c for c in config.characters if c.name == "Mara")
    embedder = MiniLM()
    settings = MemorySettings()
    context = config.model.context_tokens
    memory = Memory(store, counter, settings, context_tokens=context, embedder=embedder)
    bare = Memory(
        store,
        counter,
        dataclasses.replace(settings, recall_tokens=0),
        context_tokens=context,
        embedder=embedder,
    )
    figures: dict[str, Any] = {"messages": messages, "embedded": embed}
    try:
        conversation = await store.write(
            lambda conn: conn.execute(
                insert(Conversation.__table__).values(
                    platform="bench", chat_id="big", thread_id="", character="Mara", started_at=0.0
                )
            ).inserted_primary_key[0]
        )
        chosen = await fill(store, embed, 0, conversation)
        began = time.perf_counter()
        await memory.indexer.catch_up()
        took = time.perf_counter() - began
        figures["embed_per_s"] = embed / took if embed else None
        if messages > embed:
            texts = pool()
            vectors = embedder.encode(texts)
            rng = np.random.default_rng(0)
            rest = await fill(store, messages - embed, embed, conversation)
            chosen += rest
            rows = []
            for n, index in tqdm(
                enumerate(rest, start=embed + 1),
                total=len(rest),
                desc=f"synthetic vectors ({messages:,} messages)",
                unit="msg",
                unit_scale=True,
            ):
                noisy = vectors[index] + rng.normal(0, 0.02, vectors.shape[1]).astype(np.float32)
                rows.append(
                    {
                        "message_id": n,
                        "platform": "bench",
                        "chat_id": "big",
                        "thread_id": "",
                        "embedder": embedder.name,
                        "vector": to_bytes(noisy / np.linalg.norm(noisy)),
                    }
                )

            def work(conn):  # type: ignore[no-untyped-def]
                for block in range(0, len(rows), 5000):
                    conn.execute(insert(MessageVector.__table__), rows[block : block + 5000])

            await store.write(work)
        figures["index_bytes_per_10k"] = index_bytes(path) * 10_000 / messages
        figures["db_bytes_per_10k"] = path.stat().st_size * 10_000 / messages
        texts = pool()
        tail = [
            HistoryMessage(
                n,
                "user" if n % 2 else "assistant",
                texts[chosen[n - 1]],
                None if n % 2 else "Mara",
                "Sam" if n % 2 else "Mara",
                "sam" if n % 2 else "",
            )
            for n in range(messages - 119, messages + 1)
        ]
        questions = [fact.question for fact in CASES["Mara"]]
        key = ("bench", "big", "")

        def chain(i: int) -> list[HistoryMessage]:  # the newest message: one of Sam's questions
            asked = HistoryMessage(messages + 1 + i, "user", questions[i % 6], None, "Sam", "sam")
            return [*tail[i % 7 : len(tail) - 7 + i % 7], asked]

        async def timed(which: Memory, i: int) -> tuple[float, Any]:
            began = time.perf_counter()
            fitted = await which.prompt(key, conversation, character, chain(i), context, "Sam", [])
            return time.perf_counter() - began, fitted

        memory.recall._chats.clear()
        figures["first_call_s"], fitted = await timed(memory, 0)
        figures["first_call_recalled"] = "Earlier in this chat" in fitted.messages[0]["content"]
        await timed(bare, 0)
        with_recall, without = [], []
        for i in tqdm(range(calls), desc=f"prompts at {messages:,} messages", unit="call"):
            with_recall.append((await timed(memory, i))[0])
            without.append((await timed(bare, i))[0])
        figures["prompt_p50_ms"] = statistics.median(with_recall) * 1000
        figures["bare_p50_ms"] = statistics.median(without) * 1000
        figures["extra_p50_ms"] = figures["prompt_p50_ms"] - figures["bare_p50_ms"]
        figures["extra_p95_ms"] = (percentile(with_recall, 0.95) - percentile(without, 0.95)) * 1000
        # recall alone: the query's embedding and the search, as the prompt runs it
        alone = []
        for i in range(calls):
            began = time.perf_counter()
            await memory.recall.search(
                key, [questions[i % 6], " ".join(t.text for t in tail[-3:])], tail[0].id
            )
            alone.append(time.perf_counter() - began)
        figures["search_p50_ms"] = statistics.median(alone) * 1000
        figures["search_p95_ms"] = percentile(alone, 0.95) * 1000
        figures["cached_bytes"] = memory.recall.cached_bytes
    finally:
        await store.close()
    return figures


# -- the report ----------------------------------------------------------------------------


def share(hits: int, total: int) -> str:
    return "–" if not total else f"{hits / total:.0%} ({hits}/{total})"


def figures_of(runs: Sequence[Run]) -> dict[str, Any]:
    """The shares of one character (or all) in one mode."""
    asked = [a for r in runs for a in r.asked]
    live = [a for a in asked if a.live]
    return {
        "questions": len(asked),
        "holds": sum(a.holds() for a in asked),
        "by_recall": sum(a.holds("recall") for a in asked),
        "by_notes": sum(a.holds("notes") for a in asked),
        "by_story": sum(a.holds("story") for a in asked),
        "by_history": sum(a.holds("history") for a in asked),
        "answered": len(live),
        "correct": sum(a.correct() for a in live),
        "group_prompts": sum(len(r.group_prompts) for r in runs),
        "leaks": sum(r.leaks() for r in runs),
        "kim_dm": sum(len(r.kim_dm) for r in runs),
        "kim_dm_holds": sum(a.holds() for r in runs for a in r.kim_dm),
    }


def table(runs: Sequence[Run], names: Sequence[str]) -> str:
    lines = [
        "| character | prompt holds the fact: memory on | (recalled / notes / story) | recall "
        "alone | memory off (baseline) | answered right: on | off | group prompts with Kim's "
        "private facts | Kim's DM prompts hold them |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in [*names, "overall"]:
        chosen = [r for r in runs if name in (r.character, "overall")]
        on, alone, off = (figures_of([r for r in chosen if r.mode == m]) for m in MODES)
        q = on["questions"]
        leaks, group = on["leaks"] + alone["leaks"], on["group_prompts"] + alone["group_prompts"]
        lines.append(
            f"| {name} | {share(on['holds'], q)} | {on['by_recall']} / {on['by_notes']} / "
            f"{on['by_story']} | {share(alone['holds'], alone['questions'])} | "
            f"{share(off['holds'], off['questions'])} | {share(on['correct'], on['answered'])} | "
            f"{share(off['correct'], off['answered'])} | "
            f"{share(leaks, group)} | "
            f"{share(on['kim_dm_holds'], on['kim_dm'])} |"
        )
    lines.append("| target | ≥ 95% | | | | report | | 0% | |")
    return "\n".join(lines)


def summary_line(runs: Sequence[Run]) -> str:
    jobs = [job for r in runs for job in r.summaries]
    if not jobs:
        return "summary jobs: none ran"
    outcomes: dict[str, int] = {}
    for _, outcome in jobs:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    times = [s for s, _ in jobs]
    said = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
    return (
        f"summary jobs: {len(jobs)} ({said}); time per job p50 {statistics.median(times):.1f} s, "
        f"max {max(times):.1f} s"
    )


def long_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| messages in the chat | recall's extra time to first token p50 / p95 | recall search "
        "alone p50 / p95 | first call (vectors read) | embedding | index on disk per 10k "
        "messages | vectors in memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        embedded = (
            f"{r['embed_per_s']:.0f} msg/s ({r['embedded']:,} embedded"
            + (", the rest synthetic)" if r["embedded"] < r["messages"] else ")")
            if r["embed_per_s"]
            else "synthetic vectors"
        )
        lines.append(
            f"| {r['messages']:,} | {r['extra_p50_ms']:.1f} / {r['extra_p95_ms']:.1f} ms | "
            f"{r['search_p50_ms']:.1f} / {r['search_p95_ms']:.1f} ms | "
            f"{r['first_call_s'] * 1000:.0f} ms | {embedded} | "
            f"{r['index_bytes_per_10k'] / 1e6:.1f} MB | {r['cached_bytes'] / 1e6:.1f} MB |"
        )
    lines.append("| target | p50 < 30 ms at 10,000 | | | | | |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(ROOT / "config.toml")
    if args.quick:  # a small window, so that a few turns push the facts out of it
        config = dataclasses.replace(
            config, model=dataclasses.replace(config.model, context_tokens=384)
        )
    real = None
    if not args.no_model:
        from charbot.wiring import build_model

        real = build_model(config)
        await real.start()
    runs: list[Run] = []
    long_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="charbot-memory-") as folder:
        tmp = Path(folder)
        plan = [(name, mode) for name in args.characters for mode in MODES]
        for name, mode in tqdm(plan, desc="conversations", unit="run"):
            runs.append(await converse(config, name, mode, args.turns, args.answers, real, tmp))
        for messages, embed in args.long:
            long_rows.append(
                await long_chat(config, messages, embed, args.calls, Canned(real), tmp)
            )
    if real is not None:
        await real.close()
    return {"runs": runs, "long": long_rows}


def parse_long(value: str) -> tuple[int, int]:
    messages, _, embed = value.partition(":")
    return int(messages), int(embed or messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--characters", nargs="+", default=list(CASES))
    parser.add_argument(
        "--turns", type=int, default=60, help="other talk between facts and questions"
    )
    parser.add_argument(
        "--answers", type=int, default=6, help="questions per character the real model answers"
    )
    parser.add_argument(
        "--no-model", action="store_true", help="no real model: canned replies, canned summaries"
    )
    parser.add_argument(
        "--long",
        nargs="*",
        type=parse_long,
        default=[(10_000, 10_000), (100_000, 0)],
        metavar="MESSAGES[:EMBEDDED]",
        help="long chats to time recall in (the rest of the vectors synthetic)",
    )
    parser.add_argument("--calls", type=int, default=40, help="timed prompts per long chat")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="8 turns, a 384-token window, no real model, one 2,000-message chat",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.turns, args.no_model, args.long, args.calls = 8, True, [(2_000, 300)], 10
    began = time.perf_counter()
    result = asyncio.run(main_async(args))
    runs, long_rows = result["runs"], result["long"]
    real = (
        "canned model"
        if args.no_model
        else f"the default model ({load_config(ROOT / 'config.toml').model.base})"
    )
    print()
    print(
        f"{args.turns} turns of other talk between the facts and the questions; other talk "
        f"answered by a canned model, Sam's questions (up to {args.answers} per character, "
        f"memory on and off) and summaries by {real}"
    )
    print()
    print(table(runs, args.characters))
    print()
    print(summary_line(runs))
    notes = {r.character: r.notes for r in runs if r.mode == "memory on"}
    print(f"notes taken with memory on (Sam's and Kim's): {notes}")
    if long_rows:
        print()
        print(long_table(long_rows))
    load = os.getloadavg()
    print(
        f"\n{os.cpu_count()} CPU cores; load average at the end (1, 5, 15 min): "
        f"{load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}; {time.perf_counter() - began:.0f} s in all"
    )
    if args.json:
        data = {
            "runs": {
                f"{name} / {mode}": figures_of(
                    [r for r in runs if (r.character, r.mode) == (name, mode)]
                )
                for name in args.characters
                for mode in MODES
            },
            "summaries": [job for r in runs for job in r.summaries],
            "long": long_rows,
        }
        args.json.write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
