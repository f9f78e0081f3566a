"""Character cards: V3 JSON and PNG cards (``chara`` / ``ccv3`` chunks) round-trip into
characters, and `charbot characters import` prints config lines that load."""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from bot.characters import load_card
from bot.config import load_config

V3 = {
    "spec": "chara_card_v3",
    "spec_version": "3.0",
    "data": {
        "name": "Bram",
        "nickname": "Old Bram",
        "description": "{{char}} keeps the lighthouse on Gull Rock.",
        "personality": "Gruff.",
        "scenario": "A storm.",
        "first_mes": "Shut the door, {{user}}.",
        "mes_example": "<START>\n{{user}}: Cat?\n{{char}}: Fathom.",
        "creator_notes": "not for prompts",
        "system_prompt": "",
        "post_history_instructions": "",
        "alternate_greetings": ["Tea?"],
        "group_only_greetings": ["Evening, all."],
        "tags": [],
        "creator": "test",
        "character_version": "1",
        "extensions": {},
        "assets": [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}],
        "character_book": {
            "scan_depth": 2,
            "entries": [
                {
                    "keys": ["Fathom"],
                    "content": "Fathom is Bram's grey cat.",
                    "extensions": {},
                    "enabled": True,
                    "insertion_order": 1,
                    "use_regex": False,
                    "constant": False,
                    "selective": False,
                    "secondary_keys": [],
                }
            ],
        },
    },
}


def png(chunks: dict[str, dict]) -> bytes:
    """A 1×1 PNG carrying each card as a base64 tEXt chunk under its keyword."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    texts = b"".join(
        chunk(b"tEXt", key.encode() + b"\0" + base64.b64encode(json.dumps(card).encode()))
        for key, card in chunks.items()
    )
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + texts
        + chunk(b"IDAT", zlib.compress(b"\0\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


def test_v3_json_card_round_trips_with_its_lorebook(tmp_path: Path) -> None:
    path = tmp_path / "bram.json"
    path.write_text(json.dumps(V3), encoding="utf-8")
    values = load_card(path)
    assert values["name"] == "Bram" and values["greeting"] == "Shut the door, {{user}}."
    assert values["alternate_greetings"] == ("Tea?",)
    book = values["lorebook"]
    assert book.scan_depth == 2 and book.entries[0].keys == ("Fathom",)
    assert book.select(["Is Fathom well?"], len, 100) == ["Fathom is Bram's grey cat."]


def test_png_card_prefers_the_v3_chunk_and_reads_a_v2_only_png(tmp_path: Path) -> None:
    v2 = {"spec": "chara_card_v2", "data": {**V3["data"], "name": "Bram (V2)"}}
    both = tmp_path / "both.png"
    both.write_bytes(png({"chara": v2, "ccv3": V3}))
    assert load_card(both)["name"] == "Bram"
    old = tmp_path / "old.png"
    old.write_bytes(png({"chara": v2}))
    assert load_card(old)["name"] == "Bram (V2)"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "charbot.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )


def test_characters_import_prints_lines_that_load(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[model]\nbackend = "echo"\n[[characters]]\nname = "Mara"\n')
    (tmp_path / "cards").mkdir()
    card = tmp_path / "cards" / "bram.png"
    card.write_bytes(png({"ccv3": V3}))
    result = cli("characters", "import", str(card), "--config", str(config), cwd=Path.cwd())
    assert result.returncode == 0, result.stderr
    assert "Bram: Character Card V3 (PNG), 1 lorebook entry, 1 alternate greeting" in result.stdout
    lines = result.stdout.split("[[characters]]", 1)[1]
    assert 'card = "cards/bram.png"' in lines
    with config.open("a") as file:
        file.write("[[characters]]" + lines)
    loaded = load_config(config)
    bram = loaded.characters[1]
    assert bram.name == "Bram" and bram.lorebook is not None
    assert "Gull Rock" in bram.description


def test_a_broken_card_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[model]\nbackend = "echo"\n[[characters]]\nname = "Mara"\n')
    picture = tmp_path / "photo.png"
    picture.write_bytes(png({}))
    result = cli("characters", "import", str(picture), "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "photo.png: a PNG without a 'chara' or 'ccv3' chunk is not a character card" in line
    bad_book = tmp_path / "bad.json"
    bad = {"spec": "chara_card_v3", "data": {"name": "X", "character_book": {"entries": [{}]}}}
    bad_book.write_text(json.dumps(bad))
    result = cli("characters", "import", str(bad_book), "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2 and "character_book.entries[0].content must be" in result.stderr
