"""Character cards as people have them: Card V2 and V3 JSON, and PNG cards that carry the
card in a ``chara`` (V2) or ``ccv3`` (V3) text chunk, base64-encoded JSON.

:func:`read_card` returns the card object; :func:`card_values` turns it into Character
keyword arguments. Every error is a ValueError with one line naming the file and the fix.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import zlib
from pathlib import Path
from typing import Any

from bot.lorebook import parse_book

SPECS = {"chara_card_v2": "Character Card V2", "chara_card_v3": "Character Card V3"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# V3 wins over V2 when a PNG carries both (V3 writers keep a V2 chunk for old readers).
_PNG_KEYWORDS = ("ccv3", "chara")

# Card field -> our field. creator_notes is for people browsing cards and never enters a
# prompt, so it is deliberately absent.
_CARD_FIELDS = {
    "name": "name",
    "description": "description",
    "personality": "personality",
    "scenario": "scenario",
    "first_mes": "greeting",
    "mes_example": "example_dialogue",
    "system_prompt": "system_prompt",
    "post_history_instructions": "post_history_instructions",
}


def read_card(path: Path) -> dict[str, Any]:
    """The card object of a .json or .png card file (spec checked, ``data`` present)."""
    if not path.is_file():
        raise ValueError(f"card file {path} does not exist; fix the path (relative to config)")
    raw = path.read_bytes()
    if raw.startswith(PNG_SIGNATURE):
        text = png_card_text(raw, path)
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ValueError(f"card file {path} is neither UTF-8 JSON nor a PNG card") from None
    try:
        card = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"card file {path} is not valid JSON ({exc})") from None
    if not isinstance(card, dict) or card.get("spec") not in SPECS:
        raise ValueError(
            f'card file {path} is not a Character Card (spec "chara_card_v2" or "chara_card_v3")'
        )
    if not isinstance(card.get("data"), dict):
        raise ValueError(f"card file {path} has no data object")
    return card


def png_text_chunks(raw: bytes, path: Path) -> dict[str, bytes]:
    """tEXt / iTXt chunks of a PNG by keyword (uncompressed text only)."""
    chunks: dict[str, bytes] = {}
    at = len(PNG_SIGNATURE)
    while at + 8 <= len(raw):
        length, kind = struct.unpack(">I4s", raw[at : at + 8])
        body = raw[at + 8 : at + 8 + length]
        if len(body) < length:
            raise ValueError(f"card file {path}: the PNG is cut short; export the card again")
        if kind == b"tEXt" and b"\0" in body:
            keyword, _, value = body.partition(b"\0")
            chunks[keyword.decode("latin-1")] = value
        elif kind == b"iTXt" and b"\0" in body:
            keyword, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _language, _, rest = rest.partition(b"\0")
            _translated, _, value = rest.partition(b"\0")
            chunks[keyword.decode("latin-1")] = zlib.decompress(value) if compressed else value
        elif kind == b"IEND":
            break
        at += 12 + length
    return chunks


def png_card_text(raw: bytes, path: Path) -> str:
    """The card JSON inside a PNG card."""
    chunks = png_text_chunks(raw, path)
    for keyword in _PNG_KEYWORDS:
        if keyword in chunks:
            try:
                return base64.b64decode(chunks[keyword], validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise ValueError(
                    f"card file {path}: the {keyword!r} chunk is not base64 UTF-8 JSON"
                ) from None
    raise ValueError(
        f"card file {path}: a PNG without a 'chara' or 'ccv3' chunk is not a character card"
    )


def card_values(card: dict[str, Any], path: Path) -> dict[str, Any]:
    """Character keyword arguments from a card object read by :func:`read_card`."""
    data = card["data"]
    values: dict[str, Any] = {}
    for card_key, ours in _CARD_FIELDS.items():
        value = data.get(card_key, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise ValueError(f"card file {path}: data.{card_key} must be a string")
        values[ours] = value
    greetings = data.get("alternate_greetings") or []
    if not isinstance(greetings, list) or not all(isinstance(g, str) for g in greetings):
        raise ValueError(f"card file {path}: data.alternate_greetings must be a list of strings")
    values["alternate_greetings"] = tuple(greetings)
    extensions = data.get("extensions", {})
    values["extensions"] = extensions if isinstance(extensions, dict) else {}
    book = data.get("character_book")
    if book is not None:
        values["lorebook"] = parse_book(book, f"card file {path}")
    return values
