"""LoRA fine-tuning of a character with TRL: a curriculum of stages into one LoRA.

``train(plan, run)`` loads the base model the bot serves, wraps it in a peft LoRA (or the
parent version's weights, to continue from them), and trains each stage in order with TRL's
``SFTTrainer`` (prompt–completion records: the loss is on the reply only), ``DPOTrainer`` or
``KTOTrainer`` (the peft model is its own reference: the base with the LoRA disabled).
Validation loss is computed every epoch; a stage stops early after ``early_stopping`` epochs
more than ``early_stopping_tolerance`` above its best, and keeps its last good weights. A
checkpoint is saved every epoch and when Ctrl-C asks to stop, so ``--resume`` continues.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.config import ModelSettings, TrainingSettings
from bot.errors import CharbotError
from engine import cpu_has_native_bf16, load_training_model
from training.train_data import Record, Stage
from training.versions import RunDir

log = logging.getLogger(__name__)


class TrainingInterrupted(CharbotError):
    """The run was stopped (Ctrl-C) after saving a checkpoint; ``--resume`` continues it."""


@dataclass
class TrainPlan:
    """Everything a run needs, fixed before any model is loaded."""

    character: str
    method: str
    stages: list[Stage]
    validation: list[Record]
    settings: TrainingSettings
    model: ModelSettings
    parent_path: str | None = None  # continue from this version's weights
    device: str = "cpu"


@dataclass
class StageResult:
    name: str
    examples: int
    epochs_planned: int
    epochs_run: float
    val_losses: list[float] = field(default_factory=list)
    train_loss: float | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    tokens: int = 0
    steps: int = 0  # optimizer steps of the whole stage
    resumed_from: int = 0  # the checkpoint's step when --resume continued this stage


@dataclass
class TrainResult:
    """What a finished run produced: the LoRA in ``run.lora_dir`` and its figures."""

    stages: list[StageResult]
    seconds: float
    tokens: int
    base_path: str

    @property
    def tokens_per_second(self) -> float:
        train_seconds = sum(s.seconds for s in self.stages)
        return self.tokens / train_seconds if train_seconds else 0.0

    @property
    def best_val_loss(self) -> float | None:
        losses = [loss for s in self.stages for loss in s.val_losses]
        return min(losses) if losses else None


class StopFlag:
    """Set by Ctrl-C (or a test); the trainer saves a checkpoint and stops at the next step."""

    def __init__(self) -> None:
        self.requested = False

    @contextmanager
    def on_sigint(self):  # type: ignore[no-untyped-def]
        """The first Ctrl-C stops cleanly after the current step; a second one aborts."""

        def handler(_signum: int, _frame: Any) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            print("\nstopping after this step (Ctrl-C again to abort)…", flush=True)

        if threading.current_thread() is not threading.main_thread():
            yield self  # only the main thread may set handlers (e.g. called from a test)
            return
        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def use_bf16(setting: str, device: str) -> bool:
    if setting in ("true", "false"):
        return setting == "true"
    if device != "cpu":
        return True
    return cpu_has_native_bf16()


def wrap_lora(model, settings: TrainingSettings, parent_path: str | None):  # type: ignore[no-untyped-def]
    """A trainable peft model: a fresh LoRA, or the parent version's to continue from."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if parent_path is not None:
        return PeftModel.from_pretrained(model, parent_path, is_trainable=True)
    modules = settings.target_modules
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules="all-linear" if modules == ("all-linear",) else list(modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def lora_bytes(peft_model) -> int:  # type: ignore[no-untyped-def]
    """Bytes of trainable weights: a version is this, a checkpoint ~4× (optimizer state)."""
    return sum(p.numel() * 4 for p in peft_model.parameters() if p.requires_grad)


def _callbacks(stop: StopFlag, best: dict[str, Any], settings: TrainingSettings, model):  # type: ignore[no-untyped-def]
    from transformers import TrainerCallback

    patience, tolerance = settings.early_stopping, settings.early_stopping_tolerance

    class _Control(TrainerCallback):
        """Ctrl-C → save and stop; early stopping on validation loss.

        An epoch is bad when its validation loss is more than ``tolerance`` above the best
        so far: learning a character's corrections raises the loss on other answers
        (measured on the default model: +5%, +16%, +23% by epochs 3–5, while the held-out
        answers' similarity to their references did not drop), so a hair trigger stops
        before the corrections are learnt; the tolerance guards against runaway
        overfitting. After ``patience`` bad epochs in a row the stage stops and keeps the
        weights of its last epoch within tolerance.
        """

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if stop.requested:
                control.should_save = True
                control.should_training_stop = True
            return control

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # type: ignore[no-untyped-def]
            loss = (metrics or {}).get("eval_loss")
            if loss is None:
                return control
            loss = float(loss)
            best["losses"].append(loss)
            best["loss"] = loss if best["loss"] is None else min(best["loss"], loss)
            if loss <= best["loss"] * (1 + tolerance):
                best["bad"] = 0
                best["weights"] = {
                    name: p.detach().clone()
                    for name, p in model.named_parameters()
                    if p.requires_grad
                }
            else:
                best["bad"] += 1
                if patience and best["bad"] >= patience:
                    best["stopped_early"] = True
                    control.should_training_stop = True
            return control

    return [_Control()]


def _bar(label: str):  # type: ignore[no-untyped-def]
    """One tqdm bar per stage: steps, with the last training loss and each epoch's
    validation loss beside it, in place of the trainer's own bar and log dicts."""
    from tqdm import tqdm
    from transformers import TrainerCallback

    class _Bar(TrainerCallback):
        def __init__(self) -> None:
            self.bar: Any = None
            self.figures: dict[str, str] = {}

        def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self.bar = tqdm(total=state.max_steps, desc=f"training {label}", unit="step")
            self.bar.update(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            for key, name in (("loss", "loss"), ("eval_loss", "val loss")):
                if key in (logs or {}):
                    self.figures[name] = f"{float(logs[key]):.3f}"
            if self.bar is not None:
                self.bar.set_postfix(self.figures, refresh=True)

        def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if self.bar is not None:
                self.bar.close()

    return _Bar()


def _trainer(plan: TrainPlan, model, tokenizer, stage: Stage, output: Path, progress: bool):  # type: ignore[no-untyped-def]
    """The TRL trainer for this plan's method over one stage."""
    from datasets import Dataset

    s = plan.settings
    common = dict(
        output_dir=str(output),
        num_train_epochs=stage.epochs,
        per_device_train_batch_size=s.batch_size,
        per_device_eval_batch_size=s.batch_size,
        gradient_accumulation_steps=s.gradient_accumulation,
        learning_rate=s.learning_rate,
        weight_decay=s.weight_decay,
        seed=s.seed,
        eval_strategy="epoch" if plan.validation else "no",
        save_strategy="epoch",
        save_total_limit=1,
        logging_strategy="epoch",
        report_to="none",
        bf16=use_bf16(s.bf16, plan.device),
        use_cpu=plan.device == "cpu",
        disable_tqdm=True,  # one bar of our own (_Bar), with the loss and validation loss
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
        # TRL turns it on by default; a 135M model needs no memory saved, and recomputing
        # activations costs ~1.4× per step on this CPU.
        gradient_checkpointing=False,
    )
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # tokenising a few hundred records needs no bar of its own
    train_set = Dataset.from_list(stage.records)
    eval_set = Dataset.from_list(plan.validation) if plan.validation else None
    if plan.method == "sft":
        from trl import SFTConfig, SFTTrainer

        config = SFTConfig(**common, max_length=s.max_length, completion_only_loss=True)
        return SFTTrainer(
            model=model,
            args=config,
            train_dataset=train_set,
            eval_dataset=eval_set,
            processing_class=tokenizer,
        )
    if plan.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        config = DPOConfig(**common, max_length=s.max_length)
        return DPOTrainer(
            model=model,
            ref_model=None,  # the peft model with its LoRA disabled is the reference
            args=config,
            train_dataset=train_set,
            eval_dataset=eval_set,
            processing_class=tokenizer,
        )
    from trl import KTOConfig, KTOTrainer

    good = sum(1 for r in stage.records if r["label"])
    bad = len(stage.records) - good
    # KTO wants desirable_weight * good ≈ undesirable_weight * bad (its own warning says so).
    config = KTOConfig(
        **{**common, "per_device_train_batch_size": max(2, s.batch_size)},
        max_length=s.max_length,
        desirable_weight=1.0,
        undesirable_weight=good / bad if bad else 1.0,
    )
    return KTOTrainer(
        model=model,
        ref_model=None,
        args=config,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
    )


def _latest_checkpoint(directory: Path) -> Path | None:
    found = sorted(directory.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[-1]))
    return found[-1] if found else None


def train(
    plan: TrainPlan,
    run: RunDir,
    *,
    resume: bool = False,
    progress: bool = True,
    stop: StopFlag | None = None,
    loaded: tuple[Any, Any, str] | None = None,
    before_training: Callable[[Any], None] | None = None,
) -> TrainResult:
    """Train every stage of ``plan`` in order into ``run.lora_dir``.

    ``resume``: continue ``run`` from its last completed stage or epoch checkpoint.
    ``loaded``: (model, tokenizer, path) already loaded (tests, benchmarks). Raises
    TrainingInterrupted when ``stop`` was set; the run directory then holds a checkpoint.
    ``before_training`` sees the peft model first (e.g. to check the disk has room for it).
    """
    import torch

    stop = stop or StopFlag()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its checkpoint-ordering notices: nothing to act on
    if not progress:
        from transformers.utils.logging import disable_progress_bar

        disable_progress_bar()  # loading and saving bars
    started = time.perf_counter()
    torch.manual_seed(plan.settings.seed)
    model, tokenizer, base_path = loaded or load_training_model(plan.model, progress=progress)
    state = run.state() if resume else {}
    done = int(state.get("completed_stages", 0))
    parent = plan.parent_path
    if done:  # the weights after the last completed stage
        parent = str(run.path / f"after-stage-{done}")
    peft_model = wrap_lora(model, plan.settings, parent)
    if before_training is not None:
        before_training(peft_model)
    results = [StageResult(**r) for r in state.get("results", [])]
    state = run.state()  # the plan written by the caller stays in it

    def save(completed: int) -> None:
        state.update(completed_stages=completed, results=[asdict(r) for r in results])
        run.save_state(state)

    save(done)
    for index, stage in enumerate(plan.stages, start=1):
        if index <= done:
            continue
        if not stage.records:
            results.append(StageResult(stage.name, 0, stage.epochs, 0))
            continue
        output = run.checkpoints / f"stage-{index}"
        best: dict[str, Any] = {"loss": None, "bad": 0, "losses": [], "weights": None}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TRL/transformers advice that does not apply here
            trainer = _trainer(plan, peft_model, tokenizer, stage, output, progress)
        for callback in _callbacks(stop, best, plan.settings, peft_model):
            trainer.add_callback(callback)
        from transformers import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)  # raw log dicts, a line each
        trainer.remove_callback(ProgressCallback)
        if progress:
            trainer.add_callback(_bar(f"{index}/{len(plan.stages)} {stage.name}"))
        checkpoint = _latest_checkpoint(output) if resume else None
        stage_started = time.perf_counter()
        with warnings.catch_warnings():
            # transformers' deprecation notices about its own internals: nothing to act on
            warnings.filterwarnings("ignore", category=FutureWarning)
            outcome = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        seconds = time.perf_counter() - stage_started
        if stop.requested:
            raise TrainingInterrupted(
                f"training stopped at step {trainer.state.global_step} of stage {index}; "
                f"continue with `charbot train --character {plan.character} --resume`"
            )
        if best.get("stopped_early") and best["weights"] is not None:
            with torch.no_grad():  # the last good epoch, not the last one
                for name, param in peft_model.named_parameters():
                    if name in best["weights"]:
                        param.copy_(best["weights"][name])
        results.append(
            StageResult(
                name=stage.name,
                examples=len(stage.records),
                epochs_planned=stage.epochs,
                epochs_run=float(trainer.state.epoch or 0),
                val_losses=best["losses"],
                train_loss=float(outcome.training_loss),
                stopped_early=bool(best.get("stopped_early")),
                seconds=seconds,
                tokens=int(trainer.state.num_input_tokens_seen or 0),
                steps=int(trainer.state.global_step),
                resumed_from=int(checkpoint.name.rsplit("-", 1)[-1]) if checkpoint else 0,
            )
        )
        peft_model.save_pretrained(run.path / f"after-stage-{index}")
        save(index)
    peft_model.save_pretrained(run.lora_dir)
    tokens = sum(r.tokens for r in results)
    return TrainResult(results, time.perf_counter() - started, tokens, base_path)


def asdict(result: StageResult) -> dict[str, Any]:
    return dataclasses.asdict(result)
