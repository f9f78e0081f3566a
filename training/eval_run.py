"""``charbot eval``: load the serving model once, evaluate one or two versions, write the report."""

from __future__ import annotations

from pathlib import Path

from bot.config import Config
from bot.errors import CharbotError
from bot.loras import BASE, LoraVersion, find_version, list_versions
from engine import ChatModel, Sampling, create_model
from training.evaluate import (
    BASE_LABEL,
    Case,
    Embedder,
    VersionEval,
    cases,
    evaluate_version,
    reference_loss,
    write_report,
)
from training.train_data import read_records

HELDOUT = "heldout.jsonl"


def eval_sets(data_dir: Path, method: str = "sft") -> tuple[list[Case], list[Case]]:
    """(held-out, corrected) questions of a version: its validation records, and what its
    last stage (the feedback, by default) trained on."""
    heldout_file = data_dir / HELDOUT
    if not heldout_file.is_file():
        raise CharbotError(f"{data_dir}: no {HELDOUT}; evaluate a version made by charbot train")
    heldout, _ = read_records(heldout_file, method)
    stage_files = sorted(data_dir.glob("stage-*.jsonl"), key=lambda p: int(p.name.split("-")[1]))
    trained = read_records(stage_files[-1], method)[0] if stage_files else []
    return cases(heldout), cases(trained)


def eval_sampling(config: Config, name: str) -> Sampling:
    """Greedy, with the character's own length and repetition penalty: comparable runs."""
    character = next(c for c in config.characters if c.name == name)
    return Sampling(
        max_new_tokens=character.max_new_tokens or config.model.max_new_tokens,
        temperature=0.0,
        top_p=1.0,
        repetition_penalty=character.repetition_penalty or config.model.repetition_penalty,
    )


def _serving_model(config: Config, progress: bool, worker: str) -> ChatModel:
    if config.model.backend != "local":
        raise CharbotError(
            f'charbot eval needs [model] backend = "local" (not {config.model.backend!r})'
        )
    return create_model(config.model, progress=progress, worker=worker)


async def evaluate_directory(
    config: Config,
    name: str,
    label: str,
    lora_path: str | None,
    data_dir: Path,
    progress: bool,
    *,
    worker: str = "thread",
) -> VersionEval:
    """Evaluate one LoRA directory on the sets in ``data_dir`` (train --eval)."""
    heldout, corrected = eval_sets(data_dir)
    results = await evaluate_many(
        config, name, [(label, lora_path)], heldout, corrected, progress, worker=worker
    )
    return results[0]


async def evaluate_many(
    config: Config,
    name: str,
    versions: list[tuple[str, str | None]],
    heldout: list[Case],
    corrected: list[Case],
    progress: bool,
    *,
    worker: str = "thread",
) -> list[VersionEval]:
    """Answer, score and measure held-out loss for each (label, LoRA path)."""
    import asyncio

    from engine import load_training_model

    model = _serving_model(config, progress, worker)
    await model.start()
    try:
        embedder = await asyncio.to_thread(Embedder)
        sampling = eval_sampling(config, name)
        results = []
        for label, path in versions:
            if progress:
                print(f"evaluating {name} {label}…", flush=True)
            results.append(
                await evaluate_version(
                    model, embedder, name, label, path, heldout, corrected, sampling
                )
            )
    finally:
        await model.close()
    base, tokenizer, _ = await asyncio.to_thread(load_training_model, config.model)
    for result, (_label, path) in zip(results, versions, strict=True):
        result.heldout_loss = await asyncio.to_thread(
            reference_loss, base, tokenizer, path, heldout
        )
    return results


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
    heldout, corrected = eval_sets(chosen[0].path / "data")
    versions = [
        (v.id if v else BASE_LABEL, str(v.path) if v else None)
        for v in ([first, second] if against is not None else [first])
    ]
    # The serving scheduler on a thread: the same code path as the bot's, quicker to start.
    results = await evaluate_many(config, name, versions, heldout, corrected, progress)
    for result in results:
        stats = live.get(None if result.label == BASE_LABEL else result.label)
        if stats is not None:
            result.live_up_rate, result.live_replies = stats.up_rate, stats.replies
    settings = config.training_for(name)
    report = write_report(results, name, settings.reports_dir)
    return report, results
