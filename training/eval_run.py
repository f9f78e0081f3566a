"""``charbot eval``: load the serving model once, evaluate one or two versions, write the report."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bot.config import Config, TrainingSettings
from bot.errors import CharbotError
from bot.loras import BASE, METADATA, LoraVersion, find_version, list_versions
from engine import ChatModel, create_model
from training.asking import Asker, eval_sampling
from training.eval_sets import read_corrections, read_sets, write_corrections
from training.evaluate import (
    BASE_LABEL,
    Embedder,
    VersionEval,
    evaluate_version,
    reference_loss,
    write_report,
)
from training.judging import drift, judge_version


def _serving_model(config: Config, progress: bool, worker: str) -> ChatModel:
    if config.model.backend != "local":
        raise CharbotError(
            f'charbot eval needs [model] backend = "local" (not {config.model.backend!r})'
        )
    return create_model(config.model, progress=progress, worker=worker)


async def _real_messages(config: Config, name: str) -> list[str]:
    from storage.messages import asked_of
    from storage.store import open_store

    async with open_store(config.storage) as store:
        return await store.read(lambda conn: asked_of(conn, name, 64))


async def _paraphrased(asker: Asker, data_dir: Path, progress: bool) -> None:
    """Generate paraphrases for corrections that have none; cache them with the data."""
    from training.paraphrase import generate_paraphrases

    corrections = read_corrections(data_dir)
    missing = [c for c in corrections if not c.get("paraphrases")]
    if not missing:
        return
    if progress:
        print(f"rewording {len(missing)} corrected questions (none were written)…", flush=True)
    found = await generate_paraphrases(asker.model, [c["question"] for c in missing])
    for c in missing:
        c["paraphrases"] = found.get(c["question"], [])
        c["paraphrases_from"] = "generated"
    write_corrections(data_dir, corrections)


async def evaluate_many(
    config: Config,
    name: str,
    versions: list[tuple[str, str | None]],
    data_dir: Path,
    progress: bool,
    *,
    worker: str = "thread",
) -> list[VersionEval]:
    """Every set for each (label, LoRA path), the first compared with the others (drift);
    held-out loss last, with the training model."""
    import asyncio

    from engine import load_training_model

    real = await _real_messages(config, name)
    model = _serving_model(config, progress, worker)
    await model.start()
    try:
        asker = Asker(config, model)
        await _paraphrased(asker, data_dir, progress)
        sets = read_sets(config, name, data_dir, real)
        embedder = await asyncio.to_thread(Embedder)
        sampling = eval_sampling(config, asker.character(name, None))
        results = []
        for label, path in versions:
            if progress:
                print(f"evaluating {name} {label}…", flush=True)
            result = await evaluate_version(
                model, embedder, name, label, path, sets.heldout, sets.corrected, sampling
            )
            results.append(await judge_version(asker, embedder, name, path, sets, result))
    finally:
        await model.close()
    for other in results[1:]:
        results[0].drift = drift(embedder, results[0], other)
    base, tokenizer, _ = await asyncio.to_thread(
        load_training_model, config.model, progress=progress
    )
    for result, (_label, path) in zip(results, versions, strict=True):
        result.heldout_loss = await asyncio.to_thread(
            reference_loss, base, tokenizer, path, sets.heldout
        )
    return results


def with_baseline(results: list[VersionEval], settings: TrainingSettings) -> dict[str, Any]:
    """The first version's summary, with the compared version's beside it and the gate's
    decision on the two."""
    from training.gate import gate_record

    summary = results[0].summary()
    summary["against"] = results[1].label if len(results) > 1 else None
    summary["baseline"] = results[1].summary() if len(results) > 1 else None
    summary["gate"] = gate_record(summary, settings)
    return summary


def save_evaluation(version: LoraVersion, summary: dict[str, Any]) -> None:
    """Write ``summary`` into the version's metadata (what `loras list` and the studio
    show), atomically; the version's id and weights do not change."""
    file = version.path / METADATA
    metadata = json.loads(file.read_text(encoding="utf-8"))
    metadata["evaluation"] = summary
    tmp = file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metadata, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, file)


def _pick(config: Config, name: str, wanted: str | None, current: str | None) -> LoraVersion | None:
    if wanted is not None and wanted.strip().lower() in (BASE, "none"):
        return None
    if wanted is not None:
        return find_version(config.training.loras_dir, name, wanted)
    if current is not None:
        return find_version(config.training.loras_dir, name, current)
    versions = list_versions(config.training.loras_dir, name)
    if not versions:
        raise CharbotError(
            f"{name} has no LoRA versions to evaluate; train one with "
            f"`charbot train --character {name}`"
        )
    return versions[-1]


async def run_eval(
    config: Config, name: str, wanted: str | None, against: str | None, progress: bool
) -> tuple[Path, list[VersionEval]]:
    """Evaluate ``wanted`` (default: the version in use) and ``against``; write the report."""
    from storage import lora_choices
    from storage.store import open_store
    from storage.version_stats import stats_by_version

    async with open_store(config.storage) as store:
        choice = (await lora_choices.current_choices(store)).get(name.lower())
        live = {s.version: s for s in await stats_by_version(store, name)}
    first = _pick(config, name, wanted, choice.version if choice else None)
    second = _pick(config, name, against, None) if against is not None else None
    chosen = [v for v in (first, second) if v is not None]
    if not chosen:
        raise CharbotError("--version base needs --against VERSION: the questions come from it")
    versions = [
        (v.id if v else BASE_LABEL, str(v.path) if v else None)
        for v in ([first, second] if against is not None else [first])
    ]
    # The serving scheduler on a thread: the same code path as the bot's, quicker to start.
    results = await evaluate_many(config, name, versions, chosen[0].path / "data", progress)
    for result in results:
        stats = live.get(None if result.label == BASE_LABEL else result.label)
        if stats is not None:
            result.live_up_rate, result.live_replies = stats.up_rate, stats.replies
    if first is not None:
        save_evaluation(first, with_baseline(results, config.training_for(name)))
    settings = config.training_for(name)
    report = write_report(results, name, settings.reports_dir)
    return report, results
