"""Knowledge: lorebook World Info semantics, retrieval with the real all-MiniLM-L6-v2, the
content-hash cache, bounded index builds, and one-line errors for bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bot.characters import Character
from bot.config import load_config
from bot.errors import ConfigError
from bot.knowledge import BATCH, Knowledge, KnowledgeFileError, build_index, check_file
from bot.lorebook import Lorebook, LoreEntry, parse_book
from tests.conftest import MakeCore
from tests.fakes import FakeModel, RecordingTarget
from tests.test_core import inbound


def words(text: str) -> int:
    return len(text.split())


def select(book: Lorebook, *recent: str, budget: int = 100) -> list[str]:
    return book.select(list(recent), words, budget)


def test_lorebook_keys_case_secondary_constant_order_and_budget() -> None:
    book = Lorebook(
        entries=(
            LoreEntry(keys=("Fathom", "cat"), content="Fathom is a grey cat.", insertion_order=2),
            LoreEntry(keys=("GULL",), content="Gull Rock.", case_sensitive=True),
            LoreEntry(
                keys=("storm",),
                secondary_keys=("boat", "ship"),
                selective=True,
                content="The storm of '89 sank three boats.",
            ),
            LoreEntry(keys=(), content="Bram is 70.", constant=True, insertion_order=5),
            LoreEntry(keys=("lamp",), content="Lamp facts.", enabled=False),
        )
    )
    assert select(book, "hello") == ["Bram is 70."]  # constant: always in
    # Case-insensitive by default, whole words only ("category" does not say "cat").
    assert select(book, "Is your CAT well?") == ["Fathom is a grey cat.", "Bram is 70."]
    assert select(book, "a category error") == ["Bram is 70."]
    assert select(book, "gull rock") == ["Bram is 70."]  # case-sensitive entry
    assert select(book, "GULL rock") == ["Gull Rock.", "Bram is 70."]
    # Selective: the primary key alone is not enough.
    assert "The storm of '89 sank three boats." not in select(book, "what a storm")
    assert select(book, "a storm", "my boat")[0] == "The storm of '89 sank three boats."
    assert select(book, "the lamp") == ["Bram is 70."]  # disabled


def test_lorebook_scan_depth_and_priority_under_budget() -> None:
    book = Lorebook(
        entries=(
            LoreEntry(keys=("tea",), content="one two three four", priority=1, insertion_order=1),
            LoreEntry(keys=("tea",), content="five six", priority=5, insertion_order=2),
            LoreEntry(keys=("tea",), content="seven eight nine", priority=3, insertion_order=3),
        ),
        scan_depth=2,
    )
    assert select(book, "tea?", "no", "nothing") == []  # "tea?" is three turns back
    # Over budget the lowest priority goes first; what stays keeps insertion order.
    assert select(book, "tea?", budget=5) == ["five six", "seven eight nine"]
    assert Lorebook(book.entries, token_budget=2).select(["tea"], words, 100) == ["five six"]


def test_card_lorebook_parsing_and_malformed_entries() -> None:
    book = parse_book(
        {
            "scan_depth": 3,
            "token_budget": 50,
            "entries": [
                {"keys": ["Fathom"], "content": "A cat.", "secondary_keys": [], "enabled": True},
                {"keys": ["x"], "content": "y", "constant": True, "insertion_order": 4},
            ],
        },
        "card.json",
    )
    assert (book.scan_depth, book.token_budget, len(book.entries)) == (3, 50, 2)
    with pytest.raises(ValueError, match=r"card.json: character_book.entries\[1\].keys must be"):
        parse_book(
            {"entries": [{"keys": [], "content": ""}, {"keys": "x", "content": "c"}]}, "card.json"
        )
    with pytest.raises(ValueError, match=r"entries\[0\].content must be a string"):
        parse_book({"entries": [{"keys": ["a"]}]}, "card.json")


QA = """question,answer
What is your cat called?,My cat is called Fathom.
How long have you kept the lighthouse?,Forty winters.
What do you drink in a storm?,Strong black tea with a spoon of honey.
Where is the lighthouse?,On Gull Rock off the north coast.
Do you like radios?,No. Anything with a battery lies to you.
"""


@pytest.fixture(scope="module")
def minilm():  # type: ignore[no-untyped-def]
    from bot.knowledge import MiniLM

    return MiniLM()


async def test_retrieval_answers_a_paraphrased_question(tmp_path: Path, minilm) -> None:  # type: ignore[no-untyped-def]
    facts = tmp_path / "bram.csv"
    facts.write_text(QA, encoding="utf-8")
    bram = Character(name="Bram", knowledge=(str(facts),))
    knowledge = Knowledge(tmp_path / "cache", 60, embedder=minilm, top_k=1, progress=False)
    knowledge.prepare([bram])
    notes = await knowledge.notes(bram, ["hello", "what's the name of your kitty?"], words)
    assert notes == ["What is your cat called? My cat is called Fathom."]
    notes = await knowledge.notes(
        bram, ["Which beverage do you have when the weather is bad?"], words
    )
    assert notes == ["What do you drink in a storm? Strong black tea with a spoon of honey."]
    # Built once, cached by content: a new Knowledge loads the same index, and a changed
    # file gets a new one.
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    Knowledge(tmp_path / "cache", 60, embedder=minilm, progress=False).prepare([bram])
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    facts.write_text(QA + "Favourite colour?,Lighthouse red.\n", encoding="utf-8")
    Knowledge(tmp_path / "cache", 60, embedder=minilm, progress=False).prepare([bram])
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


async def test_the_stored_prompt_shows_what_was_inserted(
    make_core: MakeCore, tmp_path: Path
) -> None:
    facts = tmp_path / "bram.jsonl"
    facts.write_text(
        "\n".join(
            json.dumps({"question": q, "answer": a})
            for q, a in [("What is your cat called?", "Fathom."), ("Your age?", "Seventy.")]
        ),
        encoding="utf-8",
    )
    book = Lorebook((LoreEntry(keys=("storm",), content="Storms come from the north."),))
    bram = Character(name="Bram", knowledge=(str(facts),), lorebook=book)
    model = FakeModel(["Fathom."])
    core = await make_core(model=model, characters=[bram], cache_dir=tmp_path / "models")
    await core.handle(inbound("In this storm, who is your feline friend?"), RecordingTarget())
    reply = (await core.store.list_messages())[-1]
    system = json.loads(reply.prompt_json)[0]["content"]
    assert "- Storms come from the north.\n- What is your cat called? Fathom." in system


def test_bad_knowledge_files_name_the_file_line_and_fix(tmp_path: Path) -> None:
    missing = tmp_path / "a.csv"
    missing.write_text("question,reply\nq,a\n", encoding="utf-8")
    with pytest.raises(KnowledgeFileError, match=r"a.csv: line 1: no 'answer' column; start"):
        check_file(missing)
    empty = tmp_path / "b.csv"
    empty.write_text('question,answer\nq,a\n"multi\nline",b\nq2,\n', encoding="utf-8")
    with pytest.raises(KnowledgeFileError, match=r"b.csv: line 5: missing question and answer"):
        check_file(empty)
    broken = tmp_path / "c.jsonl"
    broken.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(KnowledgeFileError, match=r"c.jsonl: line 2: not valid UTF-8; save"):
        check_file(broken)
    wrong = tmp_path / "d.jsonl"
    wrong.write_text('{"question": "q"}\n', encoding="utf-8")
    with pytest.raises(KnowledgeFileError, match=r'd.jsonl: line 1: needs "question" and'):
        check_file(wrong)


def test_config_refuses_bad_knowledge_and_lorebooks_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "k.csv").write_text("question\nq\n", encoding="utf-8")
    config = tmp_path / "config.toml"
    config.write_text(
        '[model]\nbackend = "echo"\n[[characters]]\nname = "Bram"\nknowledge = ["k.csv"]\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"#1 knowledge: .*k.csv: line 1: no 'answer' column"):
        load_config(config)
    card = tmp_path / "card.json"
    card.write_text(
        json.dumps(
            {
                "spec": "chara_card_v2",
                "data": {
                    "name": "Pip",
                    "character_book": {"entries": [{"keys": [1], "content": "x"}]},
                },
            }
        ),
        encoding="utf-8",
    )
    config.write_text('[model]\nbackend = "echo"\n[[characters]]\ncard = "card.json"\n')
    result = subprocess.run(
        [sys.executable, "-m", "charbot.cli", "--config", str(config), "stats"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "card.json: character_book.entries[0].keys must be a list of strings" in line


class CountingEmbedder:
    """A cheap stand-in for MiniLM (our own boundary): records batch sizes."""

    name = "counting"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def encode(self, texts):  # type: ignore[no-untyped-def]
        self.batches.append(len(texts))
        vectors = np.ones((len(texts), 8), dtype=np.float32)
        return vectors / np.sqrt(8)


def test_a_large_file_is_indexed_in_batches_into_a_memory_mapped_cache(tmp_path: Path) -> None:
    big = tmp_path / "big.csv"
    with big.open("w", encoding="utf-8") as file:
        file.write("question,answer\n")
        for i in range(100_000):
            file.write(f"question {i},answer {i}\n")
    embedder = CountingEmbedder()
    index = build_index(big, embedder, tmp_path / "cache", progress=False)
    assert len(index.facts) == 100_000 and max(embedder.batches) == BATCH
    assert isinstance(index.vectors, np.memmap) and index.vectors.dtype == np.float16
    again = build_index(big, embedder, tmp_path / "cache", progress=False)
    assert len(embedder.batches) == -(-100_000 // BATCH)  # the second build hit the cache
    assert again.vectors.shape == (100_000, 8)


class SlowEmbedder(CountingEmbedder):
    """Slow enough that several threads are inside one build at once."""

    def encode(self, texts):  # type: ignore[no-untyped-def]
        import time

        time.sleep(0.05)
        return super().encode(texts)


def test_replies_asking_for_one_index_at_once_build_it_once(tmp_path: Path) -> None:
    """Before: every thread built the file into the same partial name and most failed."""
    from concurrent.futures import ThreadPoolExecutor

    facts = tmp_path / "facts.csv"
    facts.write_text("question,answer\n" + "".join(f"q{i},a{i}\n" for i in range(600)))
    embedder = SlowEmbedder()
    knowledge = Knowledge(tmp_path / "cache", 200, embedder=embedder, progress=False)
    with ThreadPoolExecutor(8) as pool:
        indexes = list(pool.map(lambda _: knowledge._index(str(facts)), range(8)))
    assert all(index is indexes[0] for index in indexes)
    assert len(embedder.batches) == -(-600 // BATCH)  # one build
    assert not list((tmp_path / "cache").glob("*.partial.npy"))


class GatedModel(FakeModel):
    """A model whose start waits until the embedding model has loaded: a core that starts
    them one after the other never gets there."""

    def __init__(self, loaded) -> None:  # type: ignore[no-untyped-def]
        super().__init__(["Fathom."])
        self.loaded = loaded

    async def start(self) -> None:
        import asyncio

        await asyncio.wait_for(asyncio.to_thread(self.loaded.wait), 10)


async def test_knowledge_loads_its_embedding_model_beside_the_model_start(
    make_core: MakeCore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cached indexes still load the embedding model at start, not at the first reply, and
    at the same time as the model."""
    import threading

    facts = tmp_path / "facts.csv"
    facts.write_text(QA, encoding="utf-8")
    bram = Character(name="Bram", knowledge=(str(facts),))
    build_index(facts, CountingEmbedder(), tmp_path / "models" / "knowledge", progress=False)
    loaded = threading.Event()

    class SignallingEmbedder(CountingEmbedder):
        def encode(self, texts):  # type: ignore[no-untyped-def]
            loaded.set()
            return super().encode(texts)

    # the core builds its Knowledge itself, with the default embedder
    monkeypatch.setattr("bot.knowledge.MiniLM", SignallingEmbedder)
    core = await make_core(
        model=GatedModel(loaded), characters=[bram], cache_dir=tmp_path / "models"
    )
    assert loaded.is_set() and core.knowledge.embedder.batches == [1]  # the warm-up only


STARTS_ON_A_FRESH_INTERPRETER = """
import asyncio, sys
from pathlib import Path
from bot.characters import Character
from bot.config import ModelSettings
from bot.core import Core
from storage.store import Store
from tests.fakes import FakeModel
from tests.test_knowledge import CountingEmbedder

class Model(FakeModel):
    async def start(self):
        # The model's tokenizer thread would import transformers, and with it tokenizers.
        print("tokenizers imported first:", "tokenizers" in sys.modules)
        await super().start()

async def main(folder):
    store = await Store.open(f"sqlite:///{folder}/bot.db")
    bram = Character(name="Bram", knowledge=(f"{folder}/facts.csv",))
    settings = ModelSettings(backend="fake", cache_dir=Path(folder))
    core = Core(store=store, model=Model(), characters=[bram], settings=settings,
                embedder=CountingEmbedder())
    await core.start()
    await core.close()
    await store.close()

assert "tokenizers" not in sys.modules
asyncio.run(main(sys.argv[1]))
"""


def test_start_imports_tokenizers_before_indexing_and_the_model_race_for_it(
    tmp_path: Path,
) -> None:
    """A first start with a new knowledge file died with KeyError: 'tokenizers': the
    indexing thread and the tokenizer's both imported it at once."""
    (tmp_path / "facts.csv").write_text("question,answer\nq,a\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-c", STARTS_ON_A_FRESH_INTERPRETER, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "tokenizers imported first: True" in result.stdout


def test_an_unexpected_error_is_one_line_naming_the_traceback_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from charbot import cli

    async def broken(config, args):  # type: ignore[no-untyped-def]
        raise KeyError("tokenizers")

    monkeypatch.setattr(cli.stats_command, "stats_command", broken)
    config = tmp_path / "config.toml"
    config.write_text('[[characters]]\nname = "Mara"\n', encoding="utf-8")
    assert cli.main(["--config", str(config), "stats"]) == 1
    log = tmp_path / "data" / "charbot-errors.log"
    assert capsys.readouterr().err.splitlines() == [
        f"charbot: error: KeyError: 'tokenizers' (unexpected; the full traceback is in {log})"
    ]
    logged = log.read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in logged and "KeyError: 'tokenizers'" in logged
