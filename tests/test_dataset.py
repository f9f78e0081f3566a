"""Dataset tools through the real CLI: import (CSV, messages and prompt/response JSONL, other
encodings), bad input, clean, a deterministic split by conversation, and stats."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from datasets import load_dataset
from trl.data_utils import is_conversational

from charbot.cli import main
from tests.tiny_model import build_tokenizer

CONFIG = """
[model]
backend = "echo"

[storage]
url = "sqlite:///charbot.db"

[clean]
scrub = ["email", "url"]

[clean.characters.Aria]
exclude_words = ["actor", "director"]
exclude_patterns = ['\\bStar ?Trek\\b']
max_chars = 60

[[characters]]
name = "Aria"
description = "A starship navigator."
"""

# As public Korean chatbot Q-A sets are laid out: a header and a label column.
KOREAN_CSV = (
    "Q,A,label\n"
    "12시 땡!,하루가 또 가네요.,0\n"
    "1지망 학교 떨어졌어,위로해 드립니다.,0\n"
    '"쉼표, 있는 질문","줄바꿈\n있는 답",1\n'
    "가스비 너무 많이 나왔다,다음 달에는 더 절약해봐요.,0\n"
)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def charbot(config: Path, *args: str) -> int:
    return main(["--config", str(config), *args])


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def dataset_dir(config: Path) -> Path:
    return config.parent / "data" / "datasets" / "Aria"


def test_korean_csv_imports_and_round_trips_byte_exact(config: Path, tmp_path: Path) -> None:
    source = tmp_path / "chatbot.csv"
    source.write_bytes(KOREAN_CSV.encode("utf-8"))
    assert charbot(config, "data", "import", str(source), "--character", "aria") == 0
    train = dataset_dir(config) / "train.jsonl"
    found = records(train)
    assert found[2]["prompt"] == [{"role": "user", "content": "쉼표, 있는 질문"}]
    assert found[2]["completion"] == [{"role": "assistant", "content": "줄바꿈\n있는 답"}]
    assert found[2]["meta"] == {"label": "1", "line": 5, "source": "chatbot.csv"}
    # Back to CSV from the records alone: the same bytes as the file imported.
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["Q", "A", "label"])
    for record in found:
        content = [record["prompt"][0]["content"], record["completion"][0]["content"]]
        writer.writerow([*content, record["meta"]["label"]])
    assert out.getvalue().encode("utf-8") == source.read_bytes()
    manifest = json.loads((dataset_dir(config) / "manifest.json").read_text())
    assert manifest["counts"] == {"bad": 0, "duplicates": 0, "imported": 4}
    assert manifest["source"]["file"] == "chatbot.csv" and len(manifest["source"]["sha256"]) == 64
    loaded = load_dataset("json", data_files=str(train), split="train")
    assert all(is_conversational(row) for row in loaded) and len(loaded) == 4


def test_another_encoding(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "euckr.csv"
    source.write_bytes(KOREAN_CSV.encode("cp949"))
    assert charbot(config, "data", "import", str(source), "--character", "Aria") == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"charbot: error: {source}:2: not valid utf-8 text")
    assert "--encoding cp949" in error and "\n" not in error
    assert not (dataset_dir(config) / "train.jsonl").exists()
    args = ("data", "import", str(source), "--character", "Aria", "--encoding", "cp949")
    assert charbot(config, *args) == 0
    utf8 = tmp_path / "utf8.csv"
    utf8.write_bytes(KOREAN_CSV.encode("utf-8"))
    from_cp949 = records(dataset_dir(config) / "train.jsonl")
    assert charbot(config, "data", "import", str(utf8), "--character", "Aria") == 0
    from_utf8 = records(dataset_dir(config) / "train.jsonl")
    assert [r["completion"] for r in from_cp949] == [r["completion"] for r in from_utf8]


def test_jsonl_forms(config: Path, tmp_path: Path) -> None:
    source = tmp_path / "mixed.jsonl"
    lines = [
        {
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
            ]
        },
        {"prompt": "Where?", "response": "Here."},
        {
            "prompt": [{"role": "user", "content": "When?"}],
            "completion": [{"role": "assistant", "content": "Now."}],
        },
        {"prompt": "Where?", "response": "Here."},  # an exact duplicate
    ]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines) + "\n")
    assert charbot(config, "data", "import", str(source), "--character", "Aria") == 0
    found = records(dataset_dir(config) / "train.jsonl")
    assert [r["prompt"][-1]["content"] for r in found] == ["Hi", "Where?", "When?"]
    assert found[0]["prompt"][0] == {"role": "system", "content": "S"}
    assert [r["completion"] for r in found][1] == [{"role": "assistant", "content": "Here."}]
    manifest = json.loads((dataset_dir(config) / "manifest.json").read_text())
    assert manifest["counts"]["duplicates"] == 1


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("missing.csv", "question,answer\nonly one column\n", ":2: expected 2 or 3 columns"),
        ("broken.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": oops}\n', ":2: not JSON"),
        ("noanswer.jsonl", '{"prompt": "a"}\n', ':1: a "prompt" needs a "completion"'),
        ("empty.csv", "", ": empty file"),
        ("header.csv", "Q,A\n", ": no records found"),
    ],
)
def test_bad_input_names_file_and_line(
    config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    name: str,
    content: str,
    problem: str,
) -> None:
    source = tmp_path / name
    source.write_text(content, encoding="utf-8")
    assert charbot(config, "data", "import", str(source), "--character", "Aria") == 2
    error = capsys.readouterr().err
    assert f"{source}{problem}" in error and error.count("\n") == 1
    assert "Traceback" not in error


def test_skip_bad_keeps_the_good_lines(config: Path, tmp_path: Path) -> None:
    source = tmp_path / "some.csv"
    source.write_bytes(b"q1,a1\nbroken\nq2,a2\n\xff\xfe,x\nq3,\nq4,a4\n")
    args = ("data", "import", str(source), "--character", "Aria", "--skip-bad")
    assert charbot(config, *args) == 0
    assert [
        r["completion"][0]["content"] for r in records(dataset_dir(config) / "train.jsonl")
    ] == ["a1", "a2", "a4"]
    rejects = records(dataset_dir(config) / "import-rejects.jsonl")
    assert [(r["line"], r["error"].split(" ")[0]) for r in rejects] == [
        (2, "expected"),
        (4, "not"),
        (5, "empty"),
    ]


def _write_dataset(config: Path, rows: list[dict]) -> Path:
    train = dataset_dir(config) / "train.jsonl"
    train.parent.mkdir(parents=True, exist_ok=True)
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return train


def _pair(question: str, answer: str, **meta: object) -> dict:
    return {
        "prompt": [{"role": "user", "content": question}],
        "completion": [{"role": "assistant", "content": answer}],
        "meta": meta,
    }


def test_clean_applies_the_characters_rules(config: Path, capsys: pytest.CaptureFixture) -> None:
    rows = [
        _pair("Who played you?", "An actor did."),  # exclude word
        _pair("Who is the Director?", "Nobody."),  # exclude word, in the question, any case
        _pair("Seen Star Trek?", "No."),  # exclude pattern
        _pair("Fans of factors?", "Factors are fine."),  # "actor" inside a word stays
        _pair("Long?", "x" * 61),  # longer than max_chars
        _pair("Mail?", "Write to a@b.co or see https://x.io/y."),  # scrubbed
        _pair("Mail?", "Write to c@d.co or see https://x.io/y."),  # the same once scrubbed
    ]
    _write_dataset(config, rows)
    assert charbot(config, "data", "clean", "--character", "Aria") == 0
    kept = records(dataset_dir(config) / "train.jsonl")
    assert [r["completion"][0]["content"] for r in kept] == [
        "Factors are fine.",
        "Write to [email] or see [url]",
    ]
    report = capsys.readouterr().err
    assert "removed       2  exclude word 'actor'" not in report
    for line in (
        "removed       1  exclude word 'actor'",
        "removed       1  exclude word 'director'",
        "removed       1  exclude pattern '\\\\bStar ?Trek\\\\b'",
        "removed       1  longer than 60 characters",
        "removed       1  exact duplicate",
        "changed       2  scrubbed email",
        "changed       2  scrubbed url",
    ):
        assert line in report, report
    manifest = json.loads((dataset_dir(config) / "manifest.json").read_text())
    assert manifest["cleaned"]["kept"] == 2 and manifest["files"] == {"train.jsonl": 2}


def test_split_is_deterministic_and_disjoint_by_conversation(config: Path) -> None:
    rows = [_pair(f"q{n}", f"a{n}", conversation_id=n // 3, platform="test") for n in range(300)]
    rows += [_pair("same question", f"take {n}") for n in range(5)]  # siblings, no conversation
    _write_dataset(config, rows)
    split = ("data", "split", "--character", "Aria", "--val", "0.2", "--seed", "7")
    assert charbot(config, *split) == 0
    train_file, val_file = (dataset_dir(config) / n for n in ("train.jsonl", "val.jsonl"))
    first = (train_file.read_bytes(), val_file.read_bytes())
    train, val = records(train_file), records(val_file)
    assert len(train) + len(val) == 305 and 30 < len(val) < 90

    def groups(part: list[dict]) -> set:
        return {r["meta"].get("conversation_id", r["prompt"][0]["content"]) for r in part}

    assert not groups(train) & groups(val)
    assert charbot(config, *split) == 0  # re-splitting the split gives the same files
    assert (train_file.read_bytes(), val_file.read_bytes()) == first
    assert charbot(config, *split[:-1], "8") == 0
    assert records(val_file) != val  # another seed, another split
    manifest = json.loads((dataset_dir(config) / "manifest.json").read_text())
    assert manifest["split"]["seed"] == 8
    assert sum(manifest["files"].values()) == 305


def test_stats_writes_markdown_and_histogram(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tokenizer_dir = tmp_path / "tokenizer"
    build_tokenizer().save_pretrained(tokenizer_dir)
    rows = [
        _pair("Hello?", "Hello there, traveller."),
        _pair("Hello?", "Hello there, traveller."),  # exact duplicate
        _pair("hello", "hello there traveller"),  # near duplicate
        _pair("Who directed it?", "The director."),  # would be removed
    ]
    _write_dataset(config, rows)
    args = ("data", "stats", "--character", "Aria", "--tokenizer", str(tokenizer_dir))
    assert charbot(config, *args) == 0
    summary = capsys.readouterr().out
    assert summary == (dataset_dir(config) / "stats.md").read_text(encoding="utf-8")
    assert "| train.jsonl | 4 |" in summary
    assert "- exact: 1 (25.0%)" in summary and "near (same words" in summary
    assert "| exclude word 'director' | 1 | 25.0% |" in summary
    assert "1. hello (3)" in summary
    # Byte-level tokens: "Hello there, traveller." is 23 tokens.
    assert "| answer | 13 | 23 | 23 | 23 |" in summary
    assert (dataset_dir(config) / "stats.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_character_and_missing_dataset(config: Path, capsys: pytest.CaptureFixture) -> None:
    assert charbot(config, "data", "clean", "--character", "Zed") == 2
    assert "--character 'Zed' is not configured; use one of Aria" in capsys.readouterr().err
    assert charbot(config, "data", "split", "--character", "Aria") == 2
    assert "charbot data import FILE --character Aria" in capsys.readouterr().err
