"""Which base model a LoRA belongs to: the configured base's name and, where its files are
on this machine, a hash of them (a LoRA trained on other weights must not be served)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from engine.settings import EngineSettings


@dataclass(frozen=True, slots=True)
class BaseIdentity:
    """The configured base model: its name and, where its files are local, their hash."""

    name: str
    fingerprint: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"name": self.name, "fingerprint": self.fingerprint}


def fingerprint(directory: Path) -> str:
    """sha256 over a model directory's config and weight files, cached beside them by
    size and mtime (hashing ~540 MB takes a second or two; a start should not pay it)."""
    weights = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin"))
    files = [*weights, directory / "config.json"]
    files = [p for p in files if p.is_file()]
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    cache = directory / ".charbot-fingerprint.json"
    with contextlib.suppress(OSError, ValueError):
        cached = json.loads(cache.read_text())
        if cached["stamp"] == stamp:
            return str(cached["sha256"])
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    value = digest.hexdigest()
    with contextlib.suppress(OSError):  # a read-only model directory: just not cached
        cache.write_text(json.dumps({"stamp": stamp, "sha256": value}))
    return value


def base_identity(settings: EngineSettings, loaded_path: str | None = None) -> BaseIdentity:
    """Identify ``[model] base`` without loading it (``loaded_path``: where it was loaded)."""
    from engine.local_files import CONVERTED_NAME, DEFAULT_ALIAS, is_complete

    path = Path(loaded_path) if loaded_path else None
    if path is None:
        if settings.base.lower() == DEFAULT_ALIAS:
            path = settings.cache_dir / CONVERTED_NAME
            path = path if is_complete(path) else None
        elif Path(settings.base).expanduser().is_dir():
            path = Path(settings.base).expanduser()
    digest = fingerprint(path) if path is not None and path.is_dir() else None
    return BaseIdentity(settings.base, digest)
