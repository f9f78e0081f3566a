"""`charbot memory show|forget|rebuild` and `charbot forget-user` through the CLI's main, on
a SQLite file a core with memory on filled (real MiniLM vectors, a summary, notes)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from bot.config import MemorySettings
from bot.core import Core
from charbot.cli import main
from storage import memory as sql
from tests.conftest import MakeCore
from tests.test_memory import FACT, StoryModel, chat

CONFIG = """
[model]
backend = "echo"

[storage]
url = "{url}"

[[characters]]
name = "Aria"
description = "A cheerful starship navigator."

[[characters]]
name = "Bram"
description = "A grumpy lighthouse keeper."
"""
SETTINGS = MemorySettings(summarize_every=4, recall_tokens=160)


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(url=db_url), encoding="utf-8")
    return path


@pytest.fixture
async def core(make_core: MakeCore) -> Core:
    """Sam (test:42) told Aria two note-worthy lines in chat c1; Kim (test:7) said
    hello in chat c2. A summary of c1's conversation, notes about Sam, every vector."""
    made = await make_core(model=StoryModel(["Sam told Aria about Lena the vet."]), memory=SETTINGS)
    await chat(made, FACT, "My brother is a nurse.")
    await chat(made, "Hello from Kim.", chat="c2", user="7", name="Kim")
    return made


async def charbot(config: Path, *args: str) -> int:
    """The CLI's main in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(main, ["--config", str(config), *args])


async def count(core: Core, table: object) -> int:
    from sqlalchemy import func, select

    return await core.store.read(
        lambda conn: conn.execute(select(func.count()).select_from(table)).scalar()
    )


async def test_show_lists_summaries_and_notes(core: Core, config: Path, capsys) -> None:
    assert await charbot(config, "memory", "show") == 0
    out = capsys.readouterr().out
    _fact, note = await core.store.read(lambda conn: sql.person_notes(conn, "Aria", "test", "42"))
    assert "summaries (1)" in out and "test:c1" in out
    assert "Sam told Aria about Lena the vet." in out
    assert f"#{note.id}  Aria  test:42  shared  rules" in out
    assert "My brother is a nurse." in out
    assert await charbot(config, "memory", "show", "--user", "test:7") == 0
    out = capsys.readouterr().out
    assert "summaries: none" in out and "notes: none" in out
    assert await charbot(config, "memory", "show", "--chat", "test:c1", "--character", "aria") == 0
    out = capsys.readouterr().out
    assert "Lena the vet" in out and "nurse" in out
    assert await charbot(config, "memory", "show", "--character", "Bram") == 0
    assert "nurse" not in capsys.readouterr().out


async def test_forget_removes_notes_and_names_unknown_ids(core: Core, config: Path, capsys) -> None:
    fact, note = await core.store.read(lambda conn: sql.list_notes(conn))
    assert await charbot(config, "memory", "forget", str(note.id), "9999") == 0
    captured = capsys.readouterr()
    assert f"removed note #{note.id} (Aria, test:42): My brother is a nurse." in captured.out
    assert "no note #9999" in captured.err
    assert await core.store.read(lambda conn: sql.list_notes(conn)) == [fact]
    assert await charbot(config, "memory", "forget", str(note.id)) == 2
    err = capsys.readouterr().err
    assert err == f"charbot: error: no note #{note.id}; `charbot memory show` lists them\n"


async def test_forget_user_removes_notes_vectors_and_summaries(
    core: Core, config: Path, capsys
) -> None:
    vectors = await count(core, sql._V)
    assert await charbot(config, "forget-user", "test", "42") == 0
    out = capsys.readouterr().out
    assert out.startswith("forgot test:42: 2 notes, 2 message vectors and 1 summaries")
    assert "stay in the history and the training data" in out and out.count("\n") == 1
    assert await core.store.read(lambda conn: sql.person_notes(conn, None, "test", "42")) == []
    assert await count(core, sql._V) == vectors - 2
    assert await core.store.read(lambda conn: sql.list_summaries(conn)) == []
    assert await core.store.read(lambda conn: sql.is_forgotten(conn, "test", "42"))


async def test_rebuild_embeds_every_message_again(
    core: Core, config: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    vectors = await count(core, sql._V)
    assert vectors == 6  # three messages and three replies
    assert await charbot(config, "memory", "rebuild", "--chat", "test:c2") == 0
    assert capsys.readouterr().out == (
        "dropped 2 message vectors of test:c2; embedded 2 messages (all-MiniLM-L6-v2)\n"
    )
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # tqdm draws only on a terminal
    assert await charbot(config, "memory", "rebuild") == 0
    captured = capsys.readouterr()
    assert "dropped 6 message vectors; embedded 6 messages" in captured.out
    assert "memory index" in captured.err  # the progress bar, even for six
    assert await count(core, sql._V) == vectors


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("memory", "show", "--user", "42"), "--user '42': write PLATFORM:ID"),
        (("memory", "show", "--chat", "test:"), "--chat 'test:': write PLATFORM:ID"),
        (("memory", "forget", "first"), "'first' is not a note id"),
        (("memory", "rebuild", "--chat", ":c1"), "--chat ':c1': write PLATFORM:ID"),
        (("forget-user", "test", " "), "give the platform and the user id"),
    ],
)
async def test_bad_input_is_one_line_and_exit_2(
    core: Core, config: Path, capsys, args: tuple[str, ...], expected: str
) -> None:
    assert await charbot(config, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("charbot: error: ") and expected in err, err
    assert err.count("\n") == 1
