"""Config validation: every malformed file gives one line naming the file, field and fix."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import load_config
from bot.errors import ConfigError
from bot.prompt import example_turns, persona_text

MINIMAL = """
[model]
backend = "echo"

[[characters]]
name = "Aria"
description = "A navigator."
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message  # one line
    assert str(path) in message
    return message


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.model.backend == "echo"
    assert config.default_character == "Aria"
    # The default database lives under data/ next to the config file, wherever we run from.
    assert config.storage.url == f"sqlite:///{(tmp_path / 'data/charbot.db').resolve()}"
    assert config.model.cache_dir == tmp_path.resolve() / "data/models"


def test_the_shipped_config_is_valid() -> None:
    config = load_config(Path(__file__).parent.parent / "config.toml")
    assert len(config.characters) >= 3
    assert config.discord.enabled is False and config.telegram.enabled is False


def test_leaving_a_model_setting_out_means_the_shipped_value() -> None:
    """Every [model] value config.toml sets is also the default a config that leaves it
    out gets (a user who trims the file keeps the tuned behaviour)."""
    import dataclasses
    import tomllib

    from bot.config import ModelSettings

    shipped = tomllib.loads((Path(__file__).parent.parent / "config.toml").read_text())["model"]
    defaults = {f.name: f.default for f in dataclasses.fields(ModelSettings)}
    differ = {
        key: (value, defaults[key])
        for key, value in shipped.items()
        if key in defaults and key != "cache_dir" and defaults[key] != value
    }
    assert differ == {}
    assert ModelSettings().cache_dir == Path(shipped["cache_dir"])


def test_bad_toml(tmp_path: Path) -> None:
    assert "not valid TOML" in error_of(write(tmp_path, "[model\nbackend = 1"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml")


def test_no_characters(tmp_path: Path) -> None:
    assert "at least one character" in error_of(write(tmp_path, '[model]\nbackend = "echo"\n'))


def test_character_without_name(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, '[[characters]]\ndescription = "x"\n'))
    assert "[[characters]] #1 name" in message


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL.replace('backend = "echo"', "temprature = 0.5")))
    assert "[model] temprature" in message and "did you mean 'temperature'" in message


def test_wrong_type_names_field(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL.replace('backend = "echo"', 'top_p = "high"')))
    assert "[model] top_p" in message and "expected a number" in message


def test_unknown_backend(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL.replace('"echo"', '"gpt"')))
    assert "[model] backend" in message and "local, openai, echo" in message


def test_the_older_backend_name_still_works(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL.replace('"echo"', '"transformers"')))
    assert config.model.backend == "local"  # the engine on this machine, whatever it runs


def test_older_lora_keys_still_work_and_say_their_new_names(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = '[[characters]]\nname = "Mara"\nadapter = "loras/mara/v1"\nlora = 2\n'
    with caplog.at_level(logging.WARNING, logger="bot.config"):
        config = load_config(write(tmp_path, text))
    (mara,) = config.characters
    assert mara.lora == str(tmp_path / "loras/mara/v1") and mara.lora_id == 2
    said = [r.getMessage() for r in caplog.records]
    assert any("the key is now lora" in line for line in said), said
    assert any("now lora_id = 2" in line for line in said), said


def test_both_lora_names_at_once_are_one_error(tmp_path: Path) -> None:
    text = '[[characters]]\nname = "Mara"\nadapter = "a"\nlora = "b"\n'
    assert "older name of lora" in error_of(write(tmp_path, text))


def test_unknown_engine(tmp_path: Path) -> None:
    text = MINIMAL.replace('backend = "echo"', 'backend = "echo"\nengine = "lean"')
    message = error_of(write(tmp_path, text))
    assert "[model] engine" in message and "'lean'" in message and "auto, transformers" in message


def test_unknown_kernels(tmp_path: Path) -> None:
    text = MINIMAL.replace('backend = "echo"', 'backend = "echo"\nkernels = "fast"')
    message = error_of(write(tmp_path, text))
    assert "[model] kernels" in message and "'fast'" in message and "auto, torch" in message


def test_token_in_file_is_refused(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL + '\n[discord]\ntoken = "abc.def"\n'))
    assert "token_env" in message and "abc.def" not in message


def test_card_file_missing(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, '[[characters]]\ncard = "nowhere.json"\n'))
    assert "card" in message and "nowhere.json" in message


def test_card_file_not_v2(tmp_path: Path) -> None:
    (tmp_path / "old.json").write_text(json.dumps({"name": "Old"}), encoding="utf-8")
    message = error_of(write(tmp_path, '[[characters]]\ncard = "old.json"\n'))
    assert "chara_card_v2" in message


def test_duplicate_names(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL + '\n[[characters]]\nname = "aria"\n'))
    assert "used twice" in message


def test_default_character_must_exist(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, 'default_character = "Zed"\n' + MINIMAL))
    assert "default_character" in message and "Aria" in message


def test_card_fields_and_macros(tmp_path: Path) -> None:
    card = {
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {
            "name": "Pip",
            "description": "{{char}} helps {{user}} find books.",
            "personality": "bright",
            "scenario": "a library",
            "first_mes": "Hoo!",
            "mes_example": "{{user}}: hi\n{{char}}: hoo",
            "creator_notes": "SECRET-NOTES never in a prompt",
            "system_prompt": "",
            "post_history_instructions": "Stay as {{char}}.",
            "alternate_greetings": ["Hoo again!"],
            "extensions": {"x": 1},
        },
    }
    (tmp_path / "pip.json").write_text(json.dumps(card), encoding="utf-8")
    config = load_config(
        write(tmp_path, '[[characters]]\ncard = "pip.json"\navatar_url = "http://a/p.png"\n')
    )
    pip = config.characters[0]
    assert (pip.name, pip.greeting, pip.alternate_greetings) == ("Pip", "Hoo!", ("Hoo again!",))
    assert pip.avatar_url == "http://a/p.png"
    persona = persona_text(pip, "Sam")
    assert "Pip helps Sam find books." in persona
    # Example dialogue reaches the model as marked example turns, not persona text.
    assert [t["content"] for t in example_turns(pip, "Sam")][1:3] == ["hi", "hoo"]
    assert "SECRET-NOTES" not in persona


def test_cli_reports_a_malformed_config_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[model]\nbackend = \n")
    result = subprocess.run(
        [sys.executable, "-m", "charbot.cli", "--config", str(path), "stats"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("charbot: error:")
    assert "Traceback" not in result.stderr


def test_the_shipped_memory_settings_are_the_defaults() -> None:
    import dataclasses
    import tomllib

    from bot.config import MemorySettings

    shipped = tomllib.loads((Path(__file__).parent.parent / "config.toml").read_text())["memory"]
    defaults = {f.name: f.default for f in dataclasses.fields(MemorySettings)}
    assert {k: v for k, v in shipped.items() if defaults[k] != v} == {}


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ('extract = "llm"', "[memory] extract"),
        ("recall_tokens = -1", "[memory] recall_tokens"),
        ('model = "qwen"', "[memory] model"),
        ("recall_min_score = 3", "[memory] recall_min_score"),
    ],
)
def test_bad_memory_settings_are_one_line_naming_the_key(
    tmp_path: Path, line: str, named: str
) -> None:
    assert named in error_of(write(tmp_path, MINIMAL + f"\n[memory]\n{line}\n"))
