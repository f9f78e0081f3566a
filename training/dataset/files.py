"""The files of one character's dataset, read and written line by line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from bot.errors import CharbotError

TRAIN, VAL, MANIFEST = "train.jsonl", "val.jsonl", "manifest.json"


class DataError(CharbotError):
    """Bad input data or a missing dataset; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class DatasetFiles:
    """Where one character's dataset lives."""

    root: Path  # the datasets directory
    character: str

    @property
    def directory(self) -> Path:
        return self.root / self.character

    @property
    def train(self) -> Path:
        return self.directory / TRAIN

    @property
    def val(self) -> Path:
        return self.directory / VAL

    @property
    def manifest(self) -> Path:
        return self.directory / MANIFEST

    def parts(self) -> list[Path]:
        """The record files that exist: train, then val."""
        found = [p for p in (self.train, self.val) if p.is_file()]
        if not found:
            raise DataError(
                f"{self.train}: no dataset for {self.character!r}; "
                f"create one with `charbot data import FILE --character {self.character}`"
            )
        return found

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest.is_file():
            return {"character": self.character}
        return json.loads(self.manifest.read_text(encoding="utf-8"))

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        with atomic_write(self.manifest) as out:
            out.write(json.dumps(manifest, ensure_ascii=False, sort_keys=True, indent=2) + "\n")


def read_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each line of a JSONL file we wrote."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{path}:{number}: not JSON ({exc.msg}); fix or delete that line"
                    ) from None


@contextmanager
def atomic_write(path: Path) -> Iterator[TextIO]:
    """Write ``path`` through a temporary file renamed into place only on success, so a
    failed run leaves the old file as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    try:
        with temporary.open("w", encoding="utf-8", newline="\n") as out:
            yield out
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
