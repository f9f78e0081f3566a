"""``charbot data import``: an outside file becomes a character's ``train.jsonl``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from training.dataset.files import DataError, DatasetFiles, atomic_write
from training.dataset.readers import BadLine, Source, read_file
from training.export import dumps, fingerprint


@dataclass
class ImportResult:
    """What an import read, kept and rejected."""

    imported: int = 0
    duplicates: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)
    rejects: Path | None = None  # the side file listing bad lines, with --skip-bad


def import_file(files: DatasetFiles, source: Source, *, skip_bad: bool = False) -> ImportResult:
    """Read ``source`` into ``files.train`` (replacing it) and write the manifest.

    A bad line stops the import with an error naming the file, the line and the problem,
    and leaves the dataset as it was; with ``skip_bad`` the good lines are kept and the bad
    ones listed in ``import-rejects.jsonl`` beside the dataset.
    """
    if not source.path.is_file():
        raise DataError(f"{source.path}: no such file")
    if source.path.stat().st_size == 0:
        raise DataError(f"{source.path}: empty file; nothing to import")
    result = ImportResult()
    seen: set[bytes] = set()
    with atomic_write(files.train) as out:
        progress = tqdm(read_file(source), desc="import", unit="line", disable=None)
        for number, record in progress:
            if isinstance(record, BadLine):
                if not skip_bad:
                    raise DataError(
                        f"{source.path}:{number}: {record}; fix the line or pass --skip-bad"
                    )
                result.bad.append((number, str(record)))
                continue
            key = fingerprint(record)
            if key in seen:
                result.duplicates += 1
                continue
            seen.add(key)
            out.write(dumps(record))
            result.imported += 1
        if not result.imported:
            raise DataError(
                f"{source.path}: no records found"
                + (f" ({len(result.bad)} bad lines)" if result.bad else "")
                + "; expected question,answer CSV rows or messages / prompt-completion JSONL"
            )
    rejects = files.directory / "import-rejects.jsonl"
    rejects.unlink(missing_ok=True)
    if result.bad:
        with atomic_write(rejects) as side:
            for number, problem in result.bad:
                side.write(json.dumps({"line": number, "error": problem}, ensure_ascii=False))
                side.write("\n")
        result.rejects = rejects
    # A new import replaces the dataset; an old validation split would mix two sources.
    files.val.unlink(missing_ok=True)
    files.write_manifest(
        {
            "character": files.character,
            "format": "sft",
            "source": {
                "file": source.path.name,
                "sha256": source.digest.hexdigest(),
                "bytes": source.size,
                "encoding": source.encoding,
                "kind": source.kind(),
            },
            "counts": {
                "imported": result.imported,
                "duplicates": result.duplicates,
                "bad": len(result.bad),
            },
            "files": {files.train.name: result.imported},
        }
    )
    return result
