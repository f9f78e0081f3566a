"""From ``charbot train``'s arguments to a published version: the plan, the run, the metadata.

The plan is fixed and written into the run directory before the model loads (each stage's
records, the validation records, the parent), so ``--resume`` trains exactly the same data.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bot.config import Config, TrainingSettings
from bot.errors import CharbotError
from bot.knowledge import LEARNT
from bot.loras import LoraVersion, character_dir, find_version
from engine import BaseIdentity, EngineError, base_identity, fingerprint
from training.eval_sets import HELDOUT, TAUGHT, write_corrections
from training.recipe import Recipe, build_recipe, write_learnt
from training.train import StopFlag, TrainPlan, TrainResult, lora_bytes, train
from training.train_data import (
    DataError,
    DataFile,
    Stage,
    check_fits,
    normalise,
    read_records,
    split_validation,
    write_records,
)
from training.versions import RunDir, check_disk, last_run, new_run, publish


@dataclass
class Prepared:
    """A plan and the run directory it will train in."""

    plan: TrainPlan
    run: RunDir
    parent: str | None  # the parent version's id
    since: float | None  # feedback from replies made at or after this time
    sources: list[list[DataFile]]  # per stage: where its records came from
    resume: bool = False
    recipe: Recipe | None = None  # the feedback recipe (sft from feedback), else None


async def current_version(config: Config, name: str) -> LoraVersion | None:
    """The version ``name`` speaks with now, by the persisted choice."""
    from storage import lora_choices
    from storage.store import open_store

    async with open_store(config.storage) as store:
        choice = (await lora_choices.current_choices(store)).get(name.lower())
    if choice is None or choice.version is None:
        return None
    try:
        return find_version(config.training.loras_dir, name, choice.version)
    except CharbotError:
        return None


async def build_plan(config: Config, name: str, args: argparse.Namespace) -> tuple[Prepared, str]:
    """Read and check the data (one-line errors, before any model loads); make the run."""
    settings = _settings(config, name, args)
    method = args.method or settings.method
    if args.resume:
        return _resumed(config, name, settings, args), "resumed"
    parent = await _parent(config, name)
    since = parent.metadata.get("created_ts") if parent is not None else None
    stages, validation = await _stages(config, name, settings, method, args, since)
    recipe = None
    if _feedback_recipe(stages, method):
        check_fits(stages, method, settings.min_examples)  # before any model loads
        stages, own_validation, recipe = await _with_recipe(
            config, name, settings, stages, parent, validation is None, args
        )
        validation = own_validation if validation is None else validation
    elif validation is None:
        stages, validation = split_validation(stages, settings.val_fraction, settings.seed)
    check_fits(stages, method, settings.min_examples)
    run = new_run(settings.loras_dir, name)
    _write_data(run, stages, validation)
    if recipe is not None:
        write_learnt(run.path / "data", recipe.learnt)
        write_records(run.path / "data" / TAUGHT, [{"answer": a} for a in recipe.taught])
        write_corrections(
            run.path / "data",
            [
                {"question": c.question, "answer": c.answer, "paraphrases": list(c.paraphrases)}
                for c in recipe.corrections
            ],
        )
    plan = TrainPlan(
        name,
        method,
        stages,
        validation,
        settings,
        config.model,
        str(parent.path) if parent else None,
        args.device,
    )
    sources = [stage.files for stage in stages]
    prepared = Prepared(plan, run, parent.id if parent else None, since, sources, recipe=recipe)
    _save_plan(prepared)
    note = f"from {parent.id}" if parent else "a fresh LoRA"
    return prepared, note


def _feedback_recipe(stages: list[Stage], method: str) -> bool:
    """The recipe applies to sft feedback read from the store (not to --data files)."""
    return method == "sft" and bool(stages) and stages[-1].name == "feedback"


async def _with_recipe(
    config: Config,
    name: str,
    settings: TrainingSettings,
    stages: list[Stage],
    parent: LoraVersion | None,
    split_head: bool,
    args: argparse.Namespace,
) -> tuple[list[Stage], list[dict[str, Any]], Recipe]:
    """The feedback stage through the recipe (training/recipe.py), with the serving model
    started for the prompts and the replayed answers; the dataset stage split as before."""
    from engine import create_model
    from training.asking import Asker

    feedback = stages[-1]
    head, head_validation = stages[:-1], []
    if split_head:
        head, head_validation = split_validation(head, settings.val_fraction, settings.seed)
    model = create_model(
        dataclasses.replace(config.model, backend="local"), progress=False, worker="thread"
    )
    await model.start()
    try:
        asker = Asker(config, model)
        speaking = asker.character(name, str(parent.path) if parent else None)
        cache = character_dir(settings.loras_dir, name) / ".replay"
        recipe = await build_recipe(
            asker, speaking, settings, feedback.records, speaking.lora, cache
        )
    finally:
        await model.close()
    records = [normalise(r, "sft", "feedback") for r in recipe.train]
    stage = Stage("feedback", records, feedback.epochs, feedback.files)
    validation = head_validation + [normalise(r, "sft", "validation") for r in recipe.validation]
    if not getattr(args, "quiet", False):
        for line in recipe.notes:
            print(f"{name}: {line}")
    return [*head, stage], validation, recipe


def _settings(config: Config, name: str, args: argparse.Namespace) -> TrainingSettings:
    """The character's [training] settings, with --epochs over them."""
    settings = config.training_for(name)
    if args.epochs is not None:
        if args.epochs < 1:
            raise DataError("--epochs must be at least 1")
        settings = dataclasses.replace(settings, epochs=args.epochs)
    return settings


async def _parent(config: Config, name: str) -> LoraVersion | None:
    """The version to continue from: the one in use, unless it was made for another base."""
    parent = await current_version(config, name)
    base = base_identity(config.model)
    if parent is not None:
        trained_on = parent.metadata.get("base_model", {})
        if trained_on.get("fingerprint") not in (None, base.fingerprint):
            parent = None  # made for another base: start a fresh LoRA
    return parent


def _write_data(run: RunDir, stages: list[Stage], validation: list[dict[str, Any]]) -> None:
    """Each stage's records and the validation records into the run, so --resume reads
    exactly them; a fresh export's records get their hash as the stage's source."""
    data = run.path / "data"
    for index, stage in enumerate(stages, start=1):
        written = write_records(data / f"stage-{index}-{stage.name}.jsonl", stage.records)
        if not stage.files or not stage.files[0].sha256:  # a fresh export: hash its records
            label = stage.files[0].path if stage.files else stage.name
            stage.files = [DataFile(label, written.sha256, written.records)]
    write_records(data / HELDOUT, validation)


def _save_plan(prepared: Prepared) -> None:
    """The plan in the run's state, for --resume (_resumed reads it back)."""
    plan = prepared.plan
    prepared.run.save_state(
        {
            "plan": {
                "method": plan.method,
                "stages": [[s.name, s.epochs] for s in plan.stages],
                "parent": prepared.parent,
                "parent_path": plan.parent_path,
                "since": prepared.since,
                "sources": [[dataclasses.asdict(f) for f in files] for files in prepared.sources],
                "device": plan.device,
            }
        }
    )


async def _stages(
    config: Config,
    name: str,
    settings: TrainingSettings,
    method: str,
    args: argparse.Namespace,
    since: float | None,
) -> tuple[list[Stage], list[dict[str, Any]] | None]:
    """The curriculum: --stage options, else --data files, else the dataset then feedback."""
    from training.train_data import parse_stage

    if args.stage or args.data:
        specs = [parse_stage(text, settings.epochs) for text in args.stage]
        if args.data:
            specs.append(("data", list(args.data), settings.epochs))
        stages = []
        for stage_name, files, epochs in specs:
            stage = Stage(stage_name, [], epochs)
            for file in files:
                records, identity = read_records(file, method)
                stage.records += records
                stage.files.append(identity)
            stages.append(stage)
        return stages, None
    stages, validation = [], None
    folder = settings.datasets_dir / name
    if (folder / "train.jsonl").is_file():
        records, identity = read_records(folder / "train.jsonl", method)
        stages.append(Stage("dataset", records, settings.epochs, [identity]))
    if (folder / "val.jsonl").is_file():
        validation, _identity = read_records(folder / "val.jsonl", method)
    from storage.store import open_store
    from training.cleaning import Report
    from training.feedback_source import fresh_feedback
    from training.records import SAME_AS_REPLY

    report = Report()
    async with open_store(config.storage) as store:
        feedback = await fresh_feedback(store, name, method, since, report)
    if report.removed.get(SAME_AS_REPLY):
        print(
            f"{name}: skipped {report.removed[SAME_AS_REPLY]} corrections identical to the "
            "reply they correct",
            file=sys.stderr,
        )
    if method != "sft":
        feedback = [normalise(r, method, "feedback") for r in feedback]
    identity = DataFile(f"feedback since {since or 'the beginning'}", "", len(feedback))
    stages.append(Stage("feedback", feedback, settings.epochs, [identity]))
    return stages, validation  # None: the caller holds out part of each stage


def _resumed(config: Config, name: str, settings: TrainingSettings, args: Any) -> Prepared:
    run = last_run(settings.loras_dir, name)
    if run is None:
        raise DataError(
            f"{name} has no unfinished run to resume under "
            f"{character_dir(settings.loras_dir, name)}; start one without --resume"
        )
    state = run.state()["plan"]
    method = state["method"]
    stages = []
    for index, (stage_name, epochs) in enumerate(state["stages"], start=1):
        records, _ = read_records(run.path / "data" / f"stage-{index}-{stage_name}.jsonl", method)
        files = [DataFile(**f) for f in state["sources"][index - 1]]
        stages.append(Stage(stage_name, records, epochs, files))
    validation, _ = read_records(run.path / "data" / HELDOUT, method)
    plan = TrainPlan(
        name,
        method,
        stages,
        validation,
        settings,
        config.model,
        state.get("parent_path"),
        state.get("device", "cpu"),
    )
    sources = [s.files for s in stages]
    return Prepared(plan, run, state.get("parent"), state.get("since"), sources, resume=True)


def _libraries() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("torch", "transformers", "peft", "trl", "datasets"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


async def run_training(
    config: Config, prepared: Prepared, args: argparse.Namespace, *, loaded: Any = None
) -> LoraVersion:
    """Train, optionally evaluate, and publish the version (with its metadata)."""
    run = prepared.run
    progress = not getattr(args, "quiet", False)
    result = await _train(prepared, progress, loaded)
    # The version carries the data it was trained and validated on, for `charbot eval`.
    shutil.copytree(run.path / "data", run.lora_dir / "data", dirs_exist_ok=True)
    learnt = run.path / "data" / LEARNT
    if learnt.is_file():  # the bot retrieves it for this version (training/recipe.py)
        shutil.copy(learnt, run.lora_dir / LEARNT)
    evaluation = None
    if getattr(args, "eval", False) or getattr(args, "use", False):
        evaluation = await _evaluation(config, prepared, progress)
    metadata = _metadata(config, prepared, result, evaluation)
    return publish(run, prepared.plan.settings.loras_dir, metadata)


async def _train(prepared: Prepared, progress: bool, loaded: Any) -> TrainResult:
    """The training itself: on a thread, unless the model was loaded here already (tests)."""
    plan, run = prepared.plan, prepared.run

    def disk(peft_model: Any) -> None:
        # The version, a checkpoint with optimizer state per stage, and some slack.
        check_disk(plan.settings.loras_dir, lora_bytes(peft_model) * 6 + 20_000_000)

    stop = StopFlag()

    def work() -> Any:
        return train(
            plan,
            run,
            resume=prepared.resume,
            progress=progress,
            stop=stop,
            loaded=loaded,
            before_training=disk,
        )

    # Signal handlers belong to the main thread: installed here, around the training thread.
    with stop.on_sigint():
        return await asyncio.to_thread(work) if loaded is None else work()


async def _evaluation(config: Config, prepared: Prepared, progress: bool) -> Any:
    """The new version's evaluation against the one in use (or the base), with the gate's
    decision; None (with a warning) when it failed."""
    from training.eval_run import evaluate_many, with_baseline

    run = prepared.run
    current = (prepared.parent, prepared.plan.parent_path)
    versions = [("new", str(run.lora_dir)), (current[0] or "base", current[1])]
    try:
        found = await evaluate_many(
            config, prepared.plan.character, versions, run.lora_dir / "data", progress
        )
    except (CharbotError, EngineError) as exc:  # the weights are worth keeping without it
        print(f"charbot: warning: evaluation skipped: {exc}", file=sys.stderr)
        return None
    return with_baseline(found, prepared.plan.settings)


def _metadata(
    config: Config, prepared: Prepared, result: TrainResult, evaluation: Any
) -> dict[str, Any]:
    """metadata.json of the version: what it was trained from, on and with, and how it did."""
    plan = prepared.plan
    base = _trained_base(config, result)
    val_losses = [loss for s in result.stages for loss in s.val_losses]
    return {
        "character": plan.character,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "created_ts": time.time(),
        "method": plan.method,
        "parent": prepared.parent,
        "base_model": base.as_dict(),
        "hyperparameters": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in dataclasses.asdict(plan.settings).items()
        },
        "examples": sum(len(s.records) for s in plan.stages),
        "recipe": (
            {"counts": prepared.recipe.counts, "notes": prepared.recipe.notes}
            if prepared.recipe is not None
            else None
        ),
        "feedback_since": prepared.since,
        "stages": [
            {
                **dataclasses.asdict(r),
                "files": [dataclasses.asdict(f) for f in files],
            }
            for r, files in zip(result.stages, prepared.sources, strict=True)
        ],
        "validation": {
            "examples": len(plan.validation),
            "best_loss": min(val_losses) if val_losses else None,
            "final_loss": val_losses[-1] if val_losses else None,
        },
        "timing": {
            "seconds": round(result.seconds, 2),
            "train_seconds": round(sum(s.seconds for s in result.stages), 2),
            "tokens": result.tokens,
            "tokens_per_second": round(result.tokens_per_second, 1),
        },
        "device": plan.device,
        "libraries": _libraries(),
        "evaluation": evaluation,
    }


def _trained_base(config: Config, result: TrainResult) -> BaseIdentity:
    """The base the LoRA was trained on, fingerprinted from its directory when it has one."""
    base_path = Path(result.base_path)
    base = base_identity(config.model, str(base_path) if base_path.is_dir() else None)
    if base.fingerprint is None and base_path.is_dir():
        base = dataclasses.replace(base, fingerprint=fingerprint(base_path))
    return base
