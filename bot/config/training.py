"""[training] and its [training.characters.NAME] overrides, each over the one before."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bot.config.overrides import character_tables, split_characters
from bot.config.reading import Where, field_values, resolve
from bot.config.settings import TrainingSettings


def read_training(
    where: Where, table: Any, base: Path, names: list[str]
) -> tuple[TrainingSettings, dict[str, TrainingSettings]]:
    """The shared settings, and each character's (by lower-case name) over them."""
    own, per_character = split_characters(where, "training", table)
    settings = _training_table(where, "training", own, TrainingSettings(), base)
    overrides = {
        name: _training_table(where, label, values, settings, base)
        for name, label, values in character_tables(where, "training", per_character, names)
    }
    return settings, overrides


def _training_table(
    where: Where, label: str, table: Any, over: TrainingSettings, base: Path
) -> TrainingSettings:
    if not isinstance(table, dict):
        where.fail(f"[{label}]", "must be a table of settings")
    settings = dataclasses.replace(over, **field_values(where, label, table, TrainingSettings))
    _check_training(where, label, settings)
    paths = {
        name: resolve(base, getattr(settings, name))
        for name in ("loras_dir", "datasets_dir", "reports_dir")
    }
    return dataclasses.replace(settings, **paths)


def _check_training(where: Where, label: str, settings: TrainingSettings) -> None:
    if settings.method not in ("sft", "dpo", "kto"):
        where.fail(f"[{label}] method", f"{settings.method!r} is not a method; use sft, dpo or kto")
    if settings.bf16 not in ("auto", "true", "false"):
        where.fail(f"[{label}] bf16", 'use "auto", "true" or "false"')
    for name in ("rank", "alpha", "epochs", "batch_size", "gradient_accumulation", "max_length"):
        if getattr(settings, name) < 1:
            where.fail(f"[{label}] {name}", "must be at least 1")
    if not 0 <= settings.val_fraction < 1:
        where.fail(f"[{label}] val_fraction", "must be at least 0 and below 1")
    if settings.learning_rate <= 0:
        where.fail(f"[{label}] learning_rate", "must be above 0")
    for name in ("replay", "persona_replay", "min_heldout", "knowledge_distractors"):
        if getattr(settings, name) < 0:
            where.fail(f"[{label}] {name}", "must be 0 (off) or more")
    for name in ("max_leak_increase", "max_distinct_drop", "max_persona_drop"):
        if not 0 <= getattr(settings, name) <= 1:
            where.fail(f"[{label}] {name}", "is a share of replies: from 0 to 1, e.g. 0.05")
