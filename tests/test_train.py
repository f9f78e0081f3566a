"""charbot train on the tiny random model: curriculum order, Ctrl-C and --resume, bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bot.config import ModelSettings, TrainingSettings
from charbot.cli import main
from engine import load_training_model
from tests.tiny_model import build_tiny_model
from training.train import StopFlag, TrainingInterrupted, TrainPlan, train
from training.train_data import Stage
from training.versions import last_run, new_run

SETTINGS = TrainingSettings(
    rank=8,
    alpha=16,
    learning_rate=0.02,
    batch_size=4,
    max_length=96,
    bf16="false",
    early_stopping=0,
)


def record(question: str, answer: str) -> dict:  # type: ignore[type-arg]
    return {
        "prompt": [
            {"role": "system", "content": "You are Bram."},
            {"role": "user", "content": question},
        ],
        "completion": [{"role": "assistant", "content": answer}],
        "meta": {"reply_id": 1},
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def loaded(tiny: Path):  # type: ignore[no-untyped-def]
    return load_training_model(ModelSettings(base=str(tiny), dtype="float32"), progress=False)


def _loss(model, tokenizer, records) -> float:  # type: ignore[no-untyped-def]
    from training.evaluate import cases, reference_loss

    return reference_loss(model, tokenizer, None, cases(records))


def test_the_curriculum_trains_its_stages_in_order(tiny: Path, loaded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    first = [record(f"General {i}?", "Water boils at one hundred degrees.") for i in range(4)]
    second = [record(f"Bram {i}?", "Forty winters on Gull Rock, lad.") for i in range(4)]
    plan = TrainPlan(
        "Bram",
        "sft",
        [Stage("general", first, 3), Stage("lines", second, 3)],
        [],
        SETTINGS,
        ModelSettings(base=str(tiny)),
    )
    run = new_run(tmp_path / "loras", "Bram")
    result = train(plan, run, progress=False, loaded=loaded)
    assert [s.name for s in result.stages] == ["general", "lines"]
    assert all(s.steps == 3 and s.tokens > 0 for s in result.stages)

    def loss_on(records, lora: Path) -> float:  # type: ignore[no-untyped-def]
        base = AutoModelForCausalLM.from_pretrained(tiny)
        return _loss(PeftModel.from_pretrained(base, str(lora)), loaded[1], records)

    after_first = run.path / "after-stage-1"
    # The second stage came after the first: the final LoRA knows the second stage's
    # answer better than the LoRA as it was when the first stage ended.
    assert loss_on(second, run.lora_dir) < loss_on(second, after_first) - 0.5
    assert loss_on(first, after_first) < _loss(
        AutoModelForCausalLM.from_pretrained(tiny), loaded[1], first
    )


class StopAtStep(StopFlag):
    """Ctrl-C pressed during the given step (the trainer asks once per step)."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.asked = 0
        self.step = step

    @property  # type: ignore[override]
    def requested(self) -> bool:
        self.asked += 1
        return self.asked >= self.step

    @requested.setter
    def requested(self, value: bool) -> None:
        pass


def test_ctrl_c_saves_a_checkpoint_and_resume_continues_from_it(
    tiny: Path, loaded, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    records = [record(f"Q{i}?", f"Answer {i}.") for i in range(8)]  # 2 steps per epoch
    plan = TrainPlan(
        "Bram", "sft", [Stage("feedback", records, 3)], [], SETTINGS, ModelSettings(base=str(tiny))
    )
    loras = tmp_path / "loras"
    run = new_run(loras, "Bram")
    run.save_state({"plan": {"marker": 1}})
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(plan, run, progress=False, stop=StopAtStep(3), loaded=loaded)
    assert list((run.checkpoints / "stage-1").glob("checkpoint-3"))
    assert not run.lora_dir.exists()  # nothing finished, nothing to publish

    again = last_run(loras, "Bram")
    assert again is not None and again.path == run.path
    fresh = load_training_model(ModelSettings(base=str(tiny)), progress=False)  # a new process
    result = train(plan, again, resume=True, progress=False, loaded=fresh)
    (stage,) = result.stages
    assert (stage.resumed_from, stage.steps) == (3, 6)  # continued, not restarted
    assert (run.lora_dir / "adapter_model.safetensors").is_file()
    assert again.state()["plan"] == {"marker": 1}  # the plan survives for a later resume


# -- bad input: one line, exit code 2, before any model loads ------------------------------------


@pytest.fixture
def config_file(tmp_path: Path, tiny: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[model]
base = "{tiny}"
dtype = "float32"
[training]
min_examples = 4
[[characters]]
name = "Bram"
"""
    )
    return path


def _write(path: Path, records: list[dict]) -> Path:  # type: ignore[type-arg]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--character", "Nobody"], "unknown character 'Nobody'"),
        (["--character", "Bram", "--data", "two.jsonl"], "at least 4 are needed"),
        (["--character", "Bram", "--data", "kto.jsonl", "--method", "kto"], "KTO needs both"),
        (["--character", "Bram", "--data", "two.jsonl", "--method", "dpo"], "needs prompt, chosen"),
        (["--character", "Bram", "--data", "missing.jsonl"], "no such data file"),
        (["--character", "Bram", "--device", "cuda"], "no CUDA GPU"),
        (["--character", "Bram", "--resume"], "no unfinished run"),
        (["--character", "Bram", "--stage", "oops"], "NAME=FILE"),
    ],
)
def test_bad_training_input_is_one_line_and_exit_code_2(
    config_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "two.jsonl", [record("a?", "b"), record("c?", "d")])
    kto = [{**record(f"q{i}?", "x"), "label": True} for i in range(6)]
    _write(tmp_path / "kto.jsonl", kto)
    code = main(["train", "--config", str(config_file), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not list((tmp_path / "data" / "loras").glob("*/v*"))  # nothing was published


def test_training_settings_per_character_override_the_defaults(tmp_path: Path) -> None:
    from bot.config import load_config
    from bot.errors import ConfigError

    path = tmp_path / "config.toml"
    path.write_text(
        """
[training]
epochs = 4
rank = 8
[training.characters.Bram]
epochs = 2
target_modules = ["q_proj", "v_proj"]
[[characters]]
name = "Bram"
[[characters]]
name = "Mara"
"""
    )
    config = load_config(path)
    bram, mara = config.training_for("bram"), config.training_for("Mara")
    assert (bram.epochs, bram.rank, bram.target_modules) == (2, 8, ("q_proj", "v_proj"))
    assert (mara.epochs, mara.rank, mara.target_modules) == (4, 8, ("all-linear",))
    assert bram.loras_dir == tmp_path / "data" / "loras"
    path.write_text(path.read_text().replace("epochs = 2", "epoch = 2"))
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        load_config(path)


def test_dpo_trains_with_the_peft_model_as_its_own_reference(
    tiny: Path, loaded, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    def turn(role: str, text: str) -> list[dict[str, str]]:
        return [{"role": role, "content": text}]

    pairs = [
        {
            "prompt": turn("user", f"Question {i}?"),
            "chosen": turn("assistant", f"A kind answer {i}."),
            "rejected": turn("assistant", f"Go away {i}."),
        }
        for i in range(8)
    ]
    assert_one_vote_epoch_trains("dpo", pairs, tiny, loaded, tmp_path)


def assert_one_vote_epoch_trains(method: str, records, tiny: Path, loaded, tmp_path: Path):  # type: ignore[no-untyped-def]
    """One epoch on 8 vote records (batch 4: two steps), the first two held out: it trains,
    validates once and writes an lora."""
    plan = TrainPlan(
        "Bram",
        method,
        [Stage("votes", records, 1)],
        records[:2],
        SETTINGS,
        ModelSettings(base=str(tiny)),
    )
    run = new_run(tmp_path / "loras", "Bram")
    result = train(plan, run, progress=False, loaded=loaded)
    assert result.stages[0].steps == 2 and len(result.stages[0].val_losses) == 1
    assert (run.lora_dir / "adapter_model.safetensors").is_file()


def test_early_stopping_ends_a_stage_whose_validation_loss_rises(
    tiny: Path, loaded, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # Validation wants the opposite answers of training: its loss can only rise.
    train_set = [record(f"Colour {i}?", "Red, always red.") for i in range(4)]
    validation = [record(f"Colour {i}?", "Blue, never red.") for i in range(2)]
    strict = dataclasses.replace(SETTINGS, early_stopping=1, early_stopping_tolerance=0.0)
    plan = TrainPlan(
        "Bram",
        "sft",
        [Stage("colours", train_set, 8)],
        validation,
        strict,
        ModelSettings(base=str(tiny)),
    )
    result = train(plan, new_run(tmp_path / "loras", "Bram"), progress=False, loaded=loaded)
    (stage,) = result.stages
    assert stage.stopped_early
    assert stage.epochs_run < 8
    assert stage.val_losses[-1] > min(stage.val_losses)


def test_kto_trains_on_both_labels_with_the_peft_model_as_its_own_reference(
    tiny: Path, loaded, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    votes = [
        {
            **record(f"Question {i}?", f"A kind answer {i}." if i % 2 else f"Go away {i}."),
            "label": bool(i % 2),
        }
        for i in range(8)
    ]
    assert_one_vote_epoch_trains("kto", votes, tiny, loaded, tmp_path)
