"""The 4-bit decode copies (engine/int4.py) saved once and read back on later starts.

Quantizing the default model's 121 projections and its output layer took 0.5–0.7 s of a
~3 s cached start here; reading them back from a safetensors file takes a fraction of that.
One file per checkpoint directory, under ``[model] cache_dir``/int4. It records what it was
made from — the weight files' sizes and times, the layout (charbot's kernels' own, or
torch's, which depends on torch's version), the group size — and is made again when any of
that changes. A file that
cannot be read or written costs only the time: the copies are computed as before.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from engine import int4, native

log = logging.getLogger(__name__)


def _layout(kernels: native.Kernels | None) -> list[str]:
    """The key's first lines: what the packed layout depends on."""
    # torch's version either way: weights charbot's layout does not take use torch's
    first = f"charbot kernels {native.PAIR_BYTES}" if kernels is not None else "torch's kernel"
    return [first, f"torch {torch.__version__}", f"group {int4.GROUP} tiles {int4.INNER_K_TILES}"]


def source_key(weight_files: Iterable[Path], kernels: native.Kernels | None = None) -> str:
    """What the copies depend on, as one string: the layout, then a line per weight file
    (path, size, modification time; :func:`_sources` reads the paths back)."""
    parts = _layout(kernels)
    for path in weight_files:
        stat = path.stat()
        parts.append(f"{path.resolve()} {stat.st_size} {stat.st_mtime_ns}")
    return "\n".join(parts)


def _sources(key: str) -> list[str]:
    """The weight files named in a :func:`source_key`."""
    return [line.rsplit(" ", 2)[0] for line in key.splitlines()[len(_layout(None)) :]]


class Int4Store:
    """Hands out 4-bit copies by name: from the file where it matches, else quantized now
    (and written by :meth:`save`)."""

    def __init__(self, path: Path, key: str, kernels: native.Kernels | None = None) -> None:
        self.path = path
        self.key = key
        self.kernels = kernels
        self.saved: dict[str, torch.Tensor] = {}
        self.made: dict[str, int4.Int4] = {}
        self._read()

    @classmethod
    def for_checkpoint(
        cls,
        cache_dir: Path,
        directory: Path,
        weight_files: list[Path],
        kernels: native.Kernels | None = None,
    ):
        """The store for a checkpoint's copies in ``kernels``' layout (None: torch's)."""
        digest = hashlib.sha256(str(directory.resolve()).encode())
        if kernels is not None:  # both layouts' files can be kept side by side
            digest.update(b"charbot kernels")
        name = digest.hexdigest()[:16]
        key = source_key(weight_files, kernels)
        return cls(cache_dir / "int4" / f"{name}.safetensors", key, kernels)

    def _read(self) -> None:
        if not self.path.is_file():
            return
        try:
            from safetensors import safe_open

            with safe_open(str(self.path), framework="pt") as handle:
                if (handle.metadata() or {}).get("key") != self.key:
                    return  # made from other weights or another torch: quantize anew
                # detached: safetensors' tensors are views of a flat one, which would keep
                # the file's pages mapped after huge_pages.settle moved the copies
                self.saved = {key: handle.get_tensor(key).detach() for key in handle.keys()}  # noqa: SIM118
        except Exception as exc:  # a damaged file raises safetensors' own error type
            log.info("ignoring 4-bit cache %s: %s", self.path, exc)
            self.saved = {}

    def get(self, name: str, weight: torch.Tensor) -> int4.Int4:
        packed = self.saved.get(f"{name}.packed")
        scales = self.saved.get(f"{name}.scales")
        blob = self.saved.get(f"{name}.native")
        out_features, in_features = weight.shape
        if self.kernels is not None and blob is not None and blob.shape[0] * 4 == out_features:
            return native.NativeInt4(blob, out_features, in_features, self.kernels)
        if packed is not None and scales is not None and scales.shape[1] == out_features:
            return int4.Int4Weight(packed, scales, out_features, in_features)
        made = int4.quantize(weight, self.kernels)
        self.made[name] = made
        return made

    def release(self) -> None:
        """Forget the tensors read from the file: the copies made from them hold what they
        use, and once moved onto huge pages nothing else needs the originals."""
        self.saved = {}

    def save(self) -> None:
        """Write the file if anything had to be quantized (atomically: a rename)."""
        if not self.made:
            return
        tensors = dict(self.saved)
        for name, weight in self.made.items():
            if isinstance(weight, native.NativeInt4):
                tensors[f"{name}.native"] = weight.blob
            else:  # a shape charbot's layout does not take
                tensors[f"{name}.packed"] = weight.packed
                tensors[f"{name}.scales"] = weight.scales_zeros
        try:
            from safetensors.torch import save_file

            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(prefix=".int4-", dir=self.path.parent)
            os.close(handle)
            try:
                save_file(tensors, tmp, metadata={"key": self.key})
                os.replace(tmp, self.path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning("could not save the 4-bit copies to %s: %s", self.path, exc)
        self.made.clear()
        _prune(self.path.parent)


def _prune(directory: Path) -> None:
    """Delete copies whose checkpoint is gone (a deleted model, a test's temporary one), so
    the folder does not grow with every directory a model was ever loaded from."""
    from safetensors import safe_open

    for path in directory.glob("*.safetensors"):
        try:
            with safe_open(str(path), framework="pt") as handle:
                key = (handle.metadata() or {}).get("key", "")
            sources = _sources(key)
            if sources and not all(os.path.exists(source) for source in sources):
                path.unlink()
        except Exception as exc:  # unreadable: leave it; the next save may replace it
            log.debug("not pruning %s: %s", path, exc)
