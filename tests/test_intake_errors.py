"""Storage and config mistakes stop `charbot` with one line naming the field and the fix,
exit code 2, and no traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from charbot.cli import main

CONFIG = """
[model]
backend = "echo"

[storage]
url = "{url}"

[[characters]]
name = "Aria"
description = "A navigator."
"""


def run_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> str:
    """`charbot stats` with this config; the one line it printed (asserted exit code 2)."""
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    code = main(["stats", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite//data/charbot.db", "is not a database URL"),
        ("postgresql://charbot@127.0.0.1:port/charbot", "is not a database URL"),
        ("nosuchdb://host/x", "no driver for 'nosuchdb'"),
        ("sqlite:///{tmp}/a-file/charbot.db", "cannot create the directory"),
        ("sqlite:///{tmp}/garbage.db", "not a SQLite database"),
        ("postgresql://charbot:s3cret@127.0.0.1:1/charbot", "refused the connection"),
    ],
)
def test_storage_url_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, expected: str
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "garbage.db").write_bytes(b"this is not a database, it is a shopping list\n" * 40)
    err = run_stats(tmp_path, capsys, CONFIG.format(url=url.format(tmp=tmp_path)))
    assert "[storage] url" in err and expected in err
    assert "s3cret" not in err  # a password in the URL is never printed


def test_missing_postgres_driver_names_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if charbot[postgres] were absent
    err = run_stats(tmp_path, capsys, CONFIG.format(url="postgresql://charbot@127.0.0.1/x"))
    assert "[storage] url" in err and "pip install 'charbot[postgres]'" in err


def test_unwritable_database_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A directory where the database file should be: nothing can be written there.
    (tmp_path / "charbot.db").mkdir()
    url = f"sqlite:///{tmp_path / 'charbot.db'}"
    err = run_stats(tmp_path, capsys, CONFIG.format(url=url))
    assert "[storage] url" in err and "is a directory" in err


@pytest.mark.parametrize(
    ("characters", "expected"),
    [("characters = [1, 2]", "entry #1 is 1"), ('characters = ["Mara"]', "entry #1 is 'Mara'")],
)
def test_characters_that_are_not_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], characters: str, expected: str
) -> None:
    err = run_stats(tmp_path, capsys, f'{characters}\n[model]\nbackend = "echo"\n')
    assert "characters" in err and expected in err and "[[characters]]" in err
    assert "unknown key" not in err
