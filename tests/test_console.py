"""The console adapter fed by a script, and the `charbot` command end to end."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.console import ConsoleAdapter
from bot.characters import Character
from bot.config import MemorySettings
from tests.conftest import MakeCore
from tests.fakes import FakeModel

REPO = Path(__file__).resolve().parent.parent


async def run_script(core, script: str, **kw) -> str:  # type: ignore[no-untyped-def]
    out = io.StringIO()
    console = ConsoleAdapter(core, stdin=io.StringIO(script), stdout=out, **kw)
    await console.run()
    return out.getvalue()


async def test_console_script_drives_the_whole_loop(make_core: MakeCore) -> None:
    model = FakeModel(["Ahoy there.", "A second go.", "Bram here."])
    core = await make_core(model=model)
    output = await run_script(
        core,
        "Hello!\n/bad\n/fix A better answer.\n/regen\n/good\n/characters\n"
        "/character Bram\nhi Bram\n/character Zed\n/nonsense\n/quit\nnever read\n",
    )
    assert "Aria: Ahoy there.\n" in output
    assert "Aria: A second go.\n" in output
    assert "Bram: Bram here.\n" in output
    assert "unknown character 'Zed'; known characters: Aria, Bram" in output
    assert "unknown command /nonsense" in output
    assert "never read" not in output and len(model.requests) == 3
    rows = await core.store.list_messages()
    first, regen = rows[1], rows[2]
    assert regen.regenerated_from_id == first.id
    ratings = {(r.message_id, r.value) for r in await core.store.list_votes()}
    assert ratings == {(first.id, -1), (regen.id, 1)}  # /good rated the regenerated reply
    assert [(c.message_id, c.text) for c in await core.store.list_corrections()] == [
        (first.id, "A better answer.")
    ]


async def test_console_reset_and_feedback_before_any_reply(make_core: MakeCore) -> None:
    model = FakeModel(["one", "two"])
    core = await make_core(model=model)
    output = await run_script(core, "/good\nfirst\n/reset\nsecond\n")
    assert "[no reply yet in this session]" in output
    assert [m["content"] for m in model.requests[1].messages if m["role"] == "user"] == ["second"]


def write_config(tmp_path: Path) -> Path:
    config = (REPO / "config.toml").read_text(encoding="utf-8")
    path = tmp_path / "config.toml"
    path.write_text(config, encoding="utf-8")
    (tmp_path / "characters").mkdir()
    for card in (REPO / "characters").glob("*.*"):  # cards and knowledge files
        (tmp_path / "characters" / card.name).write_bytes(card.read_bytes())
    return path


def charbot(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, "-m", "charbot.cli", "--config", str(config), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )


def test_piped_chat_then_export_contains_the_correction(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    chat = charbot(
        config,
        "chat",
        "--character",
        "Bram",
        "--backend",
        "echo",
        stdin="Hello! 안녕 🌊\n/bad\n/fix A better answer.\n/quit\n",
    )
    assert chat.returncode == 0, chat.stderr
    assert "Bram: You said: Hello! 안녕 🌊" in chat.stdout
    out = str(tmp_path / "sft.jsonl")
    export = charbot(config, "export", "--format", "sft-messages", "--out", out)
    assert export.returncode == 0, export.stderr
    (record,) = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    messages = record["messages"]
    assert messages[0]["role"] == "system" and "Bram" in messages[0]["content"]
    assert messages[-2] == {"role": "user", "content": "Hello! 안녕 🌊"}
    assert messages[-1] == {"role": "assistant", "content": "A better answer."}
    stats = charbot(config, "stats")
    bram = next(line for line in stats.stdout.splitlines() if line.startswith("Bram"))
    assert bram.split()[1:] == ["1", "1", "0", "1", "1", "0"]


def test_unknown_character_at_the_cli_exits_2(tmp_path: Path) -> None:
    result = charbot(write_config(tmp_path), "chat", "--character", "Zed", "--backend", "echo")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "charbot: error: unknown character 'Zed'; known characters: Mara, Bram, Pip"
    )


async def test_console_switches_the_current_characters_lora(
    make_core: MakeCore, tmp_path: Path
) -> None:
    (tmp_path / "v7").mkdir()
    model = FakeModel()
    core = await make_core(model=model)
    output = await run_script(
        core, f"/lora {tmp_path / 'gone'}\n/lora {tmp_path / 'v7'}\nhi\n/adapter none\n"
    )
    assert "directory not found" in output  # the bad path is refused, the chat goes on
    assert "[Aria now uses LoRA v7]" in output
    assert model.requests[0].lora is not None
    # The older name still works, and says the new one.
    assert "[(/adapter is now /lora.)]\n[Aria now uses no LoRA]" in output
    assert model.loras == {}


async def test_console_remembers_lists_and_forgets_notes(make_core: MakeCore) -> None:
    model = FakeModel(["Noted.", "Hello."])
    memory = MemorySettings(summarize_every=0, recall_tokens=0)
    core = await make_core(model=model, memory=memory)
    output = await run_script(
        core,
        "/remember I am allergic to cats\n/remember --public I play the violin\n/memory\n"
        "Any pets on board?\n/forget all\n/memory\nAnd now?\n",
    )
    assert "[Aria will remember that (note 1) (only in this private chat;" in output
    assert "[Aria will remember that (note 2). /memory lists them.]" in output
    assert "1. I am allergic to cats (private)\n2. I play the violin\n" in output
    assert "I am allergic to cats" in model.requests[0].messages[0]["content"]
    assert "[Aria forgot all 2 notes about you.]" in output
    assert "Aria doesn't remember anything about you yet." in output
    assert "allergic" not in str(model.requests[1].messages)
    # The commands are answered, never stored as messages of the conversation.
    users = [r.text for r in await core.store.list_messages() if r.role == "user"]
    assert users == ["Any pets on board?", "And now?"]


async def test_character_joins_the_scene_and_new_starts_afresh(make_core: MakeCore) -> None:
    model = FakeModel(["Ahoy.", "Bram here.", "Fresh start."])
    core = await make_core(model=model)
    output = await run_script(core, "Hello!\n/character Bram\nhi Bram\n/new\nagain\n/reset\n")
    assert "[Bram answers from now on; /new starts a fresh conversation]" in (output)
    # Bram saw the scene so far; after /new the history starts afresh.
    bram = "\n".join(m["content"] for m in model.requests[1].messages if m["role"] != "system")
    assert "Hello!" in bram and "[Aria] Ahoy." in bram and "hi Bram" in bram
    fresh = [m["content"] for m in model.requests[2].messages if m["role"] == "user"]
    assert fresh == ["again"]
    assert output.count("[new conversation with Bram]") == 2  # /reset still works too
    assert "[already talking to Bram]" in await run_script(core, "/character bram\n")


async def test_usage_lines_for_fix_paging_past_the_ends_and_the_greeting(
    make_core: MakeCore,
) -> None:
    model = FakeModel(["one", "two"])
    characters = [Character(name="Aria", greeting="Welcome aboard.")]
    core = await make_core(model=model, characters=characters)
    output = await run_script(core, "/new\n/good\n/fix\nhello\n/regen\n/next\n/prev\n/prev\n")
    assert "[usage: /fix TEXT — the reply the character should have given instead]" in output
    assert "[that is the greeting, not a written reply" in output
    assert "[2/2: that is the last version; /regen writes another]" in output
    assert "[1/2] Aria: one" in output
    assert "[1/2: that is the first version; /next goes forward]" in output
    assert await core.store.list_votes() == []


def test_unknown_character_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    text = config.read_text(encoding="utf-8")
    # A model that cannot load: reaching it would fail with another error.
    config.write_text(text.replace('base = "smollm2"', 'base = "/no/such/model"'), "utf-8")
    result = charbot(config, "chat", "--character", "Brma")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "charbot: error: unknown character 'Brma' (did you mean Bram?); known characters: "
        "Mara, Bram, Pip"
    )


def test_storage_errors_name_the_config_file_and_a_misspelled_scheme(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from charbot.cli import main

    config = write_config(tmp_path)
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace('url = "sqlite:///', 'url = "sqlte:///'), "utf-8")
    assert main(["--config", str(config), "stats"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"charbot: error: {config}: [storage] url: unknown database 'sqlte' "
        "(did you mean sqlite? e.g. 'sqlite:///data/charbot.db')"
    )
    (tmp_path / "folder.db").mkdir()  # opening fails: the store's own error, with the file
    config.write_text(text.replace("data/charbot.db", "folder.db"), "utf-8")
    assert main(["--config", str(config), "stats"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"charbot: error: {config}: [storage] url: ") and "directory" in err
