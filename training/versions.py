"""Writing LoRA versions that never overwrite one another.

A run works in a hidden directory ``loras_dir/<character>/.run-<id>/`` (its checkpoints, and
``run.json`` so that ``--resume`` can continue it). On success the LoRA is moved into
``vNNNN-<hash>/`` with ``metadata.json``, by one rename: an interrupted run leaves only the
hidden directory, which no listing and no ``use`` ever picks. The hash is over the weights
and the metadata, so two runs can never be mistaken for one; the number counts up, and a
rename that finds the number taken (two runs finishing together) takes the next one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.errors import CharbotError
from bot.loras import METADATA, LoraVersion, character_dir, list_versions

RUN_PREFIX = ".run-"
RUN_STATE = "run.json"


class VersionError(CharbotError):
    """A version cannot be written (no disk space, a broken run directory)."""


@dataclass
class RunDir:
    """A training run's hidden working directory."""

    path: Path
    character: str

    @property
    def lora_dir(self) -> Path:
        return self.path / "lora"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def state(self) -> dict[str, Any]:
        file = self.path / RUN_STATE
        return json.loads(file.read_text()) if file.is_file() else {}

    def save_state(self, state: dict[str, Any]) -> None:
        tmp = self.path / (RUN_STATE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.path / RUN_STATE)  # never a half-written state


def new_run(loras_dir: Path, character: str) -> RunDir:
    root = character_dir(loras_dir, character)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{RUN_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    path.mkdir()
    return RunDir(path, character)


def last_run(loras_dir: Path, character: str) -> RunDir | None:
    """The newest unfinished run of ``character`` that recorded its state (for --resume)."""
    root = character_dir(loras_dir, character)
    runs = sorted(
        (p for p in root.glob(f"{RUN_PREFIX}*") if (p / RUN_STATE).is_file()),
        key=lambda p: p.stat().st_mtime,
    )
    return RunDir(runs[-1], character) if runs else None


def check_disk(loras_dir: Path, needed_bytes: int) -> None:
    """One clear line before training when the version and its checkpoints cannot fit."""
    loras_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(loras_dir).free
    if free < needed_bytes:
        raise VersionError(
            f"not enough disk space in {loras_dir}: {free / 1e6:.0f} MB free, about "
            f"{needed_bytes / 1e6:.0f} MB needed for the version and its checkpoints; "
            "free some space or set [training] loras_dir elsewhere"
        )


def _content_hash(lora_dir: Path, metadata: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    for file in sorted(lora_dir.iterdir()):
        if file.is_file():
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    digest.update(json.dumps(metadata, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def publish(run: RunDir, loras_dir: Path, metadata: dict[str, Any]) -> LoraVersion:
    """Move the run's finished LoRA into the next ``vNNNN-<hash>`` and delete the run."""
    source = run.lora_dir
    if not (source / "adapter_config.json").is_file():
        raise VersionError(f"{run.path}: the run has no finished LoRA to publish")
    content = _content_hash(source, metadata)
    root = character_dir(loras_dir, run.character)
    number = max((v.number for v in list_versions(loras_dir, run.character)), default=0) + 1
    for _attempt in range(100):
        version_id = f"v{number:04d}-{content[:8]}"
        full = {**metadata, "id": version_id, "content_sha256": content}
        (source / METADATA).write_text(json.dumps(full, indent=2, default=str) + "\n")
        target = root / version_id
        try:
            # rename(2) onto a non-empty directory fails: a taken number is never replaced.
            if any(root.glob(f"v{number:04d}-*")):
                raise FileExistsError(target)
            os.rename(source, target)
        except OSError:
            number += 1
            continue
        shutil.rmtree(run.path, ignore_errors=True)
        return LoraVersion(run.character, version_id, number, target, full)
    raise VersionError(f"could not find a free version number under {root}")
