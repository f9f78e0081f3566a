"""SillyTavern World Info files as lorebooks: ``lorebooks = [...]`` per character and
``[lorebooks] global``, merged with a card's ``character_book`` under one token budget, what
reaches the stored prompt, `charbot characters import` of a World Info file, and a malformed
file as one line naming the file and the entry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.config import ConfigError, load_config
from tests.conftest import MakeCore
from tests.fakes import FakeModel, RecordingTarget
from tests.test_core import inbound

CONSTANT = "Bram is seventy."
CARD = "Card: Fathom sleeps by the stove."
FATHOM = "Fathom is a grey cat."
STORM = "The storm of '89 sank three boats."
TEA = "Tea is strong and black with honey."
LIGHT = "The light has never failed."

# As SillyTavern writes them: entries keyed by uid, with the fields it always writes.
WORLD = {
    "entries": {
        "0": {"uid": 0, "key": ["Fathom"], "keysecondary": [], "content": FATHOM,
              "constant": False, "selective": False, "order": 50, "position": 0,
              "disable": False, "caseSensitive": None, "matchWholeWords": None},
        "1": {"uid": 1, "key": ["storm"], "keysecondary": ["boat", "ship"], "content": STORM,
              "constant": False, "selective": True, "selectiveLogic": 0, "order": 200,
              "position": 1, "disable": False},
        "2": {"uid": 2, "key": ["lamp"], "keysecondary": [], "content": "Lamp oil.",
              "constant": False, "selective": False, "order": 300, "position": 0,
              "disable": True},
        "3": {"uid": 3, "key": [], "keysecondary": [], "content": CONSTANT, "constant": True,
              "selective": False, "order": 10, "position": 0, "disable": False},
        "4": {"uid": 4, "key": ["tea"], "keysecondary": [], "content": TEA, "constant": False,
              "selective": False, "order": 150, "position": 0, "disable": False},
        "5": {"uid": 5, "key": ["light"], "keysecondary": [], "content": LIGHT,
              "constant": False, "selective": False, "order": 120, "position": 0,
              "disable": False, "matchWholeWords": False},
    }
}  # fmt: skip
GLOBAL = {
    "entries": {
        "7": {"key": ["Gull"], "content": "Gull Rock lies north.", "caseSensitive": True,
              "order": 100, "disable": False, "constant": False, "selective": False},
    }
}  # fmt: skip
CARD_JSON = {
    "spec": "chara_card_v2",
    "data": {
        "name": "Bram",
        "description": "A lighthouse keeper.",
        "character_book": {
            "entries": [{"keys": ["Fathom"], "content": CARD, "insertion_order": 60,
                         "priority": 60, "enabled": True}]
        },
    },
}  # fmt: skip


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def world_config(tmp_path: Path, world: Any = WORLD) -> Path:
    (tmp_path / "lore").mkdir(exist_ok=True)
    write(tmp_path / "lore" / "bram.json", world)
    write(tmp_path / "lore" / "world.json", GLOBAL)
    write(tmp_path / "bram.json", CARD_JSON)
    config = tmp_path / "config.toml"
    config.write_text(
        '[model]\nbackend = "echo"\n'
        '[lorebooks]\nglobal = ["lore/world.json"]\n'
        '[[characters]]\ncard = "bram.json"\nlorebooks = ["lore/bram.json"]\n'
        '[[characters]]\nname = "Mara"\n',
        encoding="utf-8",
    )
    return config


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "charbot.cli", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_world_info_files_merge_with_the_card_book_and_the_global_one(tmp_path: Path) -> None:
    bram, mara = load_config(world_config(tmp_path)).characters
    assert bram.lorebooks == (
        str(tmp_path / "lore" / "bram.json"),
        str(tmp_path / "lore" / "world.json"),
    )
    assert bram.lorebook is not None and len(bram.lorebook.entries) == 1 + 6 + 1
    assert mara.lorebook is not None and [e.content for e in mara.lorebook.entries] == [
        "Gull Rock lies north."
    ]

    def chosen(*recent: str) -> list[str]:
        assert bram.lorebook is not None
        return bram.lorebook.select(list(recent), lambda text: 1, 100)

    assert chosen("hello") == [CONSTANT]  # constant: always; disabled "lamp": never
    assert chosen("a storm tonight", "and the lamp?") == [CONSTANT]  # selective: no boat
    assert chosen("a storm", "my ship") == [CONSTANT, STORM]  # any secondary key will do
    assert chosen("the lighthouse") == [CONSTANT, LIGHT]  # matchWholeWords false
    assert chosen("gull rock") == [CONSTANT]  # caseSensitive true
    assert chosen("Gull Rock") == [CONSTANT, "Gull Rock lies north."]


async def test_the_stored_prompt_holds_exactly_the_entries_within_the_budget(
    make_core: MakeCore, tmp_path: Path
) -> None:
    config = load_config(world_config(tmp_path))
    model = FakeModel(["Aye."])

    def cost(text: str) -> int:
        return model.count_tokens([{"role": "system", "content": text}])

    # Every entry below is selected; by order (highest first) storm, tea, card and Fathom
    # would come next, but Fathom does not fit and the constant entry after it still does.
    budget = cost(STORM) + cost(TEA) + cost(CARD) + cost(CONSTANT)
    assert cost(FATHOM) > cost(CONSTANT)
    core = await make_core(model=model, characters=config.characters, knowledge_tokens=budget)
    message = "A storm took my boat. Tea? And where is Fathom? Is that the lamp?"
    await core.handle(inbound(message), RecordingTarget())
    reply = (await core.store.list_messages())[-1]
    system = json.loads(reply.prompt_json)[0]["content"]
    known = system.split("What Bram knows:\n", 1)[1].split("\n\n", 1)[0]
    # In insertion order (order, lowest first), the card's entry among the file's.
    assert known.splitlines() == [f"- {CONSTANT}", f"- {CARD}", f"- {TEA}", f"- {STORM}"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"key": "Fathom"}, 'entries["0"].key must be a list of strings'),
        ({"content": None}, 'entries["0"].content must be a string'),
        ({"disable": "no"}, 'entries["0"].disable must be true or false'),
        ({"selectiveLogic": 7}, 'entries["0"].selectiveLogic must be 0 (and any)'),
    ],
)
def test_a_malformed_world_info_file_is_one_line_naming_the_file_and_entry(
    tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    entries = dict(WORLD["entries"])
    entries["0"] = {**entries["0"], **change}
    config = world_config(tmp_path, {"entries": entries})
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    (line,) = str(refused.value).splitlines()
    assert line.startswith(f"{config}: [[characters]] #1 lorebooks: world info file ")
    assert "bram.json: " + expected in line
    result = cli("--config", str(config), "stats")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert expected in line
    bad = tmp_path / "lore" / "bram.json"
    ok = tmp_path / "ok.toml"
    ok.write_text('[model]\nbackend = "echo"\n[[characters]]\nname = "Mara"\n')
    result = cli("--config", str(ok), "characters", "import", str(bad))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert f"world info file {bad}: {expected}" in line


def test_not_a_world_info_file_and_a_missing_one(tmp_path: Path) -> None:
    config = world_config(tmp_path, {"entries": ["not", "an", "object"]})
    with pytest.raises(ConfigError, match=r"bram.json: not a World Info file; expected an object"):
        load_config(config)
    config.write_text('[model]\nbackend = "echo"\n[lorebooks]\nglobal = ["gone.json"]\n')
    with pytest.raises(ConfigError, match=r"\[lorebooks\] global: world info file .*gone.json"):
        load_config(config)


def test_characters_import_prints_lines_that_load(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[model]\nbackend = "echo"\n[[characters]]\nname = "Bram"\n')
    (tmp_path / "lore").mkdir()
    world = write(tmp_path / "lore" / "bram.json", WORLD)
    result = cli("--config", str(config), "characters", "import", str(world))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("bram.json: World Info, 6 entries (1 constant, 1 disabled)")
    assert 'lorebooks = ["lore/bram.json"]' in result.stdout
    assert '[lorebooks]\nglobal = ["lore/bram.json"]' in result.stdout
    with config.open("a") as file:
        file.write('lorebooks = ["lore/bram.json"]\n')
    (bram,) = load_config(config).characters
    assert bram.lorebook is not None and len(bram.lorebook.entries) == 6
