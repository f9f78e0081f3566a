"""``charbot data stats``: what a character's dataset holds, as markdown and a histogram.

Counts, lengths in the base model's own tokens (prompt with its chat template, answer),
exact and near duplicates (the same question and answer once case, punctuation and spacing
are ignored), the share each cleaning rule would remove, and the most frequent words.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from training.cleaning import Cleaner
from training.dataset.files import DatasetFiles, read_records
from training.export import fingerprint

_WORD = re.compile(r"\w+")
_NOT_WORD = re.compile(r"[\W_]+")
_BATCH = 256


@dataclass
class DatasetStats:
    """Everything ``charbot data stats`` reports."""

    files: dict[str, int] = field(default_factory=dict)
    prompt_tokens: list[int] = field(default_factory=list)
    answer_tokens: list[int] = field(default_factory=list)
    duplicates: int = 0
    near_duplicates: int = 0
    would_remove: Counter[str] = field(default_factory=Counter)
    words: Counter[str] = field(default_factory=Counter)

    @property
    def records(self) -> int:
        return sum(self.files.values())


def _answer(record: dict[str, Any]) -> tuple[list[dict[str, str]], str]:
    if "messages" in record:
        return record["messages"][:-1], record["messages"][-1]["content"]
    return record["prompt"], record["completion"][-1]["content"]


def collect(files: DatasetFiles, tokenizer: Any, cleaner: Cleaner) -> DatasetStats:
    """Read every record once, tokenizing in batches."""
    stats = DatasetStats()
    exact: set[bytes] = set()
    near: set[str] = set()
    prompts: list[list[dict[str, str]]] = []
    answers: list[str] = []

    def flush() -> None:
        if not answers:
            return
        rendered = tokenizer.apply_chat_template(
            prompts, tokenize=False, add_generation_prompt=True
        )
        encoded = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        stats.prompt_tokens.extend(len(ids) for ids in encoded)
        encoded = tokenizer(answers, add_special_tokens=False)["input_ids"]
        stats.answer_tokens.extend(len(ids) for ids in encoded)
        prompts.clear()
        answers.clear()

    for path in files.parts():
        count = 0
        for _number, record in tqdm(
            read_records(path), desc=f"stats {path.name}", unit="record", disable=None
        ):
            count += 1
            prompt, answer = _answer(record)
            key = fingerprint(record)
            question = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
            loose = _NOT_WORD.sub(" ", f"{question}\n{answer}".casefold()).strip()
            if key in exact:
                stats.duplicates += 1
            elif loose in near:
                stats.near_duplicates += 1
            exact.add(key)
            near.add(loose)
            reason = cleaner.why_removed(record)
            if reason is not None:
                stats.would_remove[reason] += 1
            stats.words.update(w for w in _WORD.findall(answer.casefold()) if len(w) > 1)
            prompts.append(prompt)
            answers.append(answer)
            if len(answers) >= _BATCH:
                flush()
        stats.files[path.name] = count
    flush()
    return stats


def _spread(values: list[int]) -> str:
    if not values:
        return "– | – | – | – | –"
    ordered = sorted(values)

    def at(share: float) -> int:
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    mean = sum(ordered) / len(ordered)
    return f"{ordered[0]} | {at(0.5)} | {at(0.9)} | {ordered[-1]} | {mean:.1f}"


def markdown(character: str, stats: DatasetStats, top: int = 20) -> str:
    """The summary written to ``stats.md`` and printed."""
    total = stats.records or 1
    lines = [
        f"# Dataset: {character}",
        "",
        "| file | records |",
        "|---|---|",
        *[f"| {name} | {count} |" for name, count in stats.files.items()],
        "",
        "## Length in tokens",
        "",
        "| part | min | median | p90 | max | mean |",
        "|---|---|---|---|---|---|",
        f"| prompt (chat template) | {_spread(stats.prompt_tokens)} |",
        f"| answer | {_spread(stats.answer_tokens)} |",
        "",
        "## Duplicates",
        "",
        f"- exact: {stats.duplicates} ({100 * stats.duplicates / total:.1f}%)",
        f"- near (same words, ignoring case, punctuation and spacing): {stats.near_duplicates}"
        f" ({100 * stats.near_duplicates / total:.1f}%)",
        "",
        "## Cleaning rules (what `charbot data clean` would remove)",
        "",
    ]
    if stats.would_remove:
        lines += ["| rule | records | share |", "|---|---|---|"]
        lines += [
            f"| {rule} | {n} | {100 * n / total:.1f}% |"
            for rule, n in sorted(stats.would_remove.items())
        ]
    else:
        lines.append("Nothing: every record passes the rules.")
    lines += ["", f"## Top {top} words in answers", ""]
    lines += [
        f"{rank}. {word} ({n})" for rank, (word, n) in enumerate(stats.words.most_common(top), 1)
    ]
    return "\n".join(lines) + "\n"


def histogram(stats: DatasetStats, path: Path, character: str) -> None:
    """A PNG of the prompt and answer token lengths."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, values, title in (
        (axes[0], stats.prompt_tokens, "prompt tokens"),
        (axes[1], stats.answer_tokens, "answer tokens"),
    ):
        axis.hist(values or [0], bins=40, color="#4c72b0")
        axis.set_title(title)
        axis.set_xlabel("tokens")
        axis.set_ylabel("records")
    figure.suptitle(f"{character}: {stats.records} records")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
