"""``charbot data split``: a deterministic train/validation split by conversation.

Every record goes to one side by a hash of its group and the seed, so the split needs no
memory and no shuffle, and the same seed gives the same split on any machine. A group is
the record's conversation when it came from the bot (regenerated siblings and their
preference pairs share it) and otherwise its prompt — so one question never straddles train
and validation.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from training.dataset.files import DataError, DatasetFiles, atomic_write, read_records
from training.export import dumps


def group_of(record: dict[str, Any]) -> str:
    """The key that keeps related records on one side of the split."""
    meta = record.get("meta") or {}
    if meta.get("conversation_id") is not None:
        return f"conversation:{meta.get('platform', '')}:{meta['conversation_id']}"
    prompt = record.get("prompt")
    if prompt is None:  # the messages form: everything before the answer
        prompt = (record.get("messages") or [])[:-1]
    return "prompt:" + json.dumps(prompt, ensure_ascii=False, sort_keys=True)


def in_validation(group: str, fraction: float, seed: int) -> bool:
    digest = hashlib.blake2b(f"{seed}\0{group}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def split_dataset(files: DatasetFiles, *, val: float, seed: int) -> tuple[int, int]:
    """Re-split train.jsonl + val.jsonl into both files; return (train, val) counts."""
    if not 0 < val < 1:
        raise DataError(f"--val {val}: the validation share must be above 0 and below 1")
    parts = files.parts()
    sources = []
    for path in parts:  # read the old files from a moved copy: the new ones replace them
        moved = path.with_name(path.name + ".old")
        path.replace(moved)
        sources.append(moved)
    counts = [0, 0]
    try:
        with atomic_write(files.train) as train, atomic_write(files.val) as valid:
            for path in sources:
                for _number, record in read_records(path):
                    side = in_validation(group_of(record), val, seed)
                    (valid if side else train).write(dumps(record))
                    counts[side] += 1
    except BaseException:
        for moved, path in zip(sources, parts, strict=True):
            moved.replace(path)
        raise
    for moved in sources:
        moved.unlink()
    manifest = files.read_manifest()
    manifest["split"] = {"val": val, "seed": seed, "by": "conversation, else prompt"}
    manifest["files"] = {files.train.name: counts[0], files.val.name: counts[1]}
    files.write_manifest(manifest)
    return counts[0], counts[1]
