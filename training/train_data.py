"""Training records for one method: read from JSONL, checked, split into train and validation.

The shapes are TRL's conversational ones (and what ``charbot export`` writes):

- ``sft``: ``{"prompt": [messages], "completion": [{"role": "assistant", ...}]}`` — the loss
  is on the completion only. Older ``{"messages": [...]}`` records are turned into this by
  taking the last assistant turn as the completion.
- ``dpo``: ``{"prompt": [...], "chosen": [assistant], "rejected": [assistant]}``
- ``kto``: ``{"prompt": [...], "completion": [assistant], "label": bool}``, both labels needed.

Anything else (``meta``, ids) is kept out of the trainer's columns.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.errors import CharbotError

METHODS = ("sft", "dpo", "kto")
COLUMNS = {
    "sft": ("prompt", "completion"),
    "dpo": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
}
Record = dict[str, Any]


class DataError(CharbotError):
    """Training data that cannot be used; one line naming the file, the problem and the fix."""


@dataclass(frozen=True)
class DataFile:
    """One file a stage reads, with what identifies its content in a version's metadata."""

    path: str
    sha256: str
    records: int


@dataclass
class Stage:
    """One curriculum stage: its own data and epochs, trained after the stages before it."""

    name: str
    records: list[Record]
    epochs: int
    files: list[DataFile] = field(default_factory=list)


def normalise(record: Any, method: str, where: str) -> Record:
    if not isinstance(record, dict):
        raise DataError(f"{where}: not a JSON object; each line must be one record")
    if method == "sft" and "messages" in record and "prompt" not in record:
        messages = record["messages"]
        last = max(
            (i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None
        )
        if last is None or last == 0:
            raise DataError(f"{where}: 'messages' has no assistant turn after a prompt")
        record = {"prompt": messages[:last], "completion": [messages[last]]}
    missing = [c for c in COLUMNS[method] if c not in record]
    if missing:
        kinds = ", ".join(COLUMNS[method])
        raise DataError(
            f"{where}: a {method} record needs {kinds}; this one lacks {', '.join(missing)} "
            f"(export the right format with `charbot export --format {method}`)"
        )
    out = {c: record[c] for c in COLUMNS[method]}
    if not isinstance(out["prompt"], list) or not out["prompt"]:
        raise DataError(f"{where}: 'prompt' must be a non-empty list of chat messages")
    if method == "kto":
        out["label"] = bool(out["label"])
    return out


def read_records(path: Path, method: str) -> tuple[list[Record], DataFile]:
    """Every record of ``path`` in ``method``'s shape, and the file's identity."""
    if not path.is_file():
        raise DataError(f"{path}: no such data file; check the path given to --data")
    raw = path.read_bytes()
    records = []
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc}); fix that line") from None
        records.append(normalise(record, method, f"{path}:{number}"))
    return records, DataFile(str(path), hashlib.sha256(raw).hexdigest(), len(records))


def write_records(path: Path, records: list[Record]) -> DataFile:
    """Write ``records`` as JSONL (for a version's own copy of its data)."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return DataFile(str(path), hashlib.sha256(text.encode()).hexdigest(), len(records))


def check_fits(stages: list[Stage], method: str, min_examples: int) -> None:
    """Refuse data that cannot train ``method`` — before any model is loaded."""
    total = sum(len(s.records) for s in stages)
    if total < min_examples:
        raise DataError(
            f"only {total} {method} training examples; at least {min_examples} are needed, "
            "because a LoRA trained on fewer learns those lines, not the character "
            "(collect more corrections, or pass --data FILE with more records)"
        )
    if method == "kto":
        labels = {r["label"] for s in stages for r in s.records}
        if len(labels) < 2:
            kind = "desirable (👍)" if True in labels else "undesirable (👎)"
            raise DataError(
                f"KTO needs both desirable and undesirable examples; these are all {kind} "
                "(use --method sft for corrections, or collect votes both ways)"
            )


def split_validation(
    stages: list[Stage], fraction: float, seed: int
) -> tuple[list[Stage], list[Record]]:
    """Hold out ``fraction`` of each stage (at least one record where a stage has three or
    more) for validation; the same seed gives the same split."""
    rng = random.Random(seed)
    kept, held = [], []
    for stage in stages:
        order = list(range(len(stage.records)))
        rng.shuffle(order)
        count = round(len(order) * fraction)
        if fraction > 0 and count == 0 and len(order) >= 3:
            count = 1
        chosen = set(order[:count])
        held += [r for i, r in enumerate(stage.records) if i in chosen]
        rest = [r for i, r in enumerate(stage.records) if i not in chosen]
        kept.append(Stage(stage.name, rest, stage.epochs, stage.files))
    return kept, held


def parse_stage(text: str, default_epochs: int) -> tuple[str, list[Path], int]:
    """``NAME=FILE[,FILE][:EPOCHS]`` → (name, files, epochs)."""
    name, sep, rest = text.partition("=")
    epochs = default_epochs
    if rest.rsplit(":", 1)[-1].isdigit() and ":" in rest:
        rest, count = rest.rsplit(":", 1)
        epochs = int(count)
    files = [Path(f) for f in rest.split(",") if f]
    if not sep or not name or not files or epochs < 1:
        raise DataError(
            f"--stage {text!r}: write NAME=FILE[,FILE][:EPOCHS], e.g. general=data/qa.jsonl:1"
        )
    return name, files, epochs
