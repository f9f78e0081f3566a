"""[model]: the backend (a name, an older alias, or a one-run override), its server for the
openai backend, the sampling defaults and the engine's limits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bot.config.reading import Where, resolve
from bot.config.settings import ModelSettings
from engine import BACKENDS, ENGINES, KERNELS, backend_name, parse_threads

_AT_LEAST_ONE = (
    "max_new_tokens",
    "context_tokens",
    "max_batch_size",
    "max_queue",
    "max_concurrency",
)


def check_model(
    where: Where, model: ModelSettings, base: Path, backend: str | None
) -> ModelSettings:
    """``model`` checked: ``backend`` (if given) replaces its backend, an older backend
    name becomes today's, and cache_dir is taken relative to ``base`` (the config's folder)."""
    if backend is not None:
        model = dataclasses.replace(model, backend=backend)
    model = dataclasses.replace(model, backend=backend_name(model.backend))
    if model.backend not in BACKENDS:
        where.fail(
            "[model] backend",
            f"{model.backend!r} is not a backend; use one of {', '.join(BACKENDS)}",
        )
    if model.backend == "openai":
        _check_openai(where, model)
    _check_sampling(where, model)
    _check_sizes(where, model)
    if model.kv_cache_mb < 0:
        where.fail("[model] kv_cache_mb", "must not be negative (0 turns the prefix cache off)")
    _check_engine(where, model)
    return dataclasses.replace(model, cache_dir=resolve(base, model.cache_dir))


def _check_openai(where: Where, model: ModelSettings) -> None:
    """The openai backend needs a server address and the name the server gives the model."""
    if not model.base_url or not model.base_url.startswith(("http://", "https://")):
        where.fail(
            "[model] base_url",
            'backend "openai" needs the server\'s API root, e.g. "http://127.0.0.1:8000/v1"',
        )
    if not model.model:
        where.fail(
            "[model] model",
            'backend "openai" needs the served base model\'s name, e.g. model = "smollm2" '
            "(GET <base_url>/models lists them)",
        )
    if model.timeout_s <= 0:
        where.fail("[model] timeout_s", "must be above 0 seconds")


def _check_sampling(where: Where, model: ModelSettings) -> None:
    for name in ("temperature", "top_p"):
        if getattr(model, name) < 0:
            where.fail(f"[model] {name}", "must not be negative")
    if model.repetition_penalty <= 0:
        where.fail("[model] repetition_penalty", "must be above 0 (1.0 turns it off)")


def _check_sizes(where: Where, model: ModelSettings) -> None:
    for name in _AT_LEAST_ONE:
        if getattr(model, name) < 1:
            where.fail(f"[model] {name}", "must be at least 1")


def _check_engine(where: Where, model: ModelSettings) -> None:
    try:
        parse_threads(model.threads)
    except ValueError as exc:
        where.fail("[model] threads", str(exc))
    if model.engine not in ENGINES:
        where.fail("[model] engine", f"{model.engine!r} is not one of {', '.join(ENGINES)}")
    if model.kernels not in KERNELS:
        where.fail("[model] kernels", f"{model.kernels!r} is not one of {', '.join(KERNELS)}")
