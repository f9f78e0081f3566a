"""``charbot data clean``: the export's cleaning rules applied to a character's dataset."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from training.cleaning import Cleaner, Report
from training.dataset.files import DatasetFiles, atomic_write, read_records
from training.export import DUPLICATE, dumps, fingerprint


def clean_dataset(files: DatasetFiles, cleaner: Cleaner) -> Report:
    """Rewrite train.jsonl (and val.jsonl) without what the rules remove, duplicates across
    both files included; record the counts in the manifest."""
    report = Report()
    seen: set[bytes] = set()
    for path in files.parts():
        with atomic_write(path) as out:
            for _number, record in tqdm(
                read_records(path), desc=f"clean {path.name}", unit="record", disable=None
            ):
                report.read += 1
                kept = cleaner.apply(record, report)
                if kept is None:
                    continue
                key = fingerprint(kept)
                if key in seen:
                    report.removed[DUPLICATE] += 1
                    continue
                seen.add(key)
                report.kept += 1
                out.write(dumps(kept))
    manifest = files.read_manifest()
    manifest["cleaned"] = report.as_dict()
    manifest["files"] = {p.name: _count(p) for p in files.parts()}
    files.write_manifest(manifest)
    return report


def _count(path: Path) -> int:
    with path.open(encoding="utf-8") as lines:
        return sum(1 for line in lines if line.strip())
