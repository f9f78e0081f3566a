"""``charbot import-corrections``: a filled review file read back into the store.

Each line of the file that ``charbot export --format review`` wrote may now carry a
``better`` answer (empty: skipped), ``"accept": true`` (the reviewer's answer wins over
newer corrections), an ``exclude`` reason (the reply is kept out of every export) and
``paraphrases``, other ways to ask the prompt's last question (stored with source
``reviewer``; the next LoRA's evaluation asks them). Reading the same file twice changes
nothing: an identical correction, exclusion or paraphrase already stored is left as it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection
from tqdm import tqdm

from storage.paraphrases import ParaphraseTooLong, add_paraphrases_sync, clean_paraphrases
from storage.review import UnknownReply, add_correction_sync, exclude_sync
from training.dataset.files import DataError, atomic_write


@dataclass
class ImportedReview:
    """What reading a review file did."""

    added: int = 0
    already: int = 0  # identical corrections stored before
    empty: int = 0  # records with no ``better``, no ``exclude`` and no ``paraphrases``
    excluded: int = 0
    paraphrases_added: int = 0
    paraphrases_already: int = 0  # wordings of the reply stored before
    missing: list[int] = field(default_factory=list)  # reply ids no longer stored
    bad: list[tuple[int, str]] = field(default_factory=list)
    rejects: Path | None = None


class _Bad(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class _Line:
    """What one review record asks for."""

    reply_id: int
    better: str
    accept: bool
    exclude: str
    paraphrases: list[str]


def _parse(line: str) -> _Line:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _Bad(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict):
        raise _Bad("expected a JSON object from `charbot export --format review`")
    reply_id, better = value.get("id"), value.get("better", "")
    accept, exclude = value.get("accept", False), value.get("exclude", "")
    if isinstance(reply_id, bool) or not isinstance(reply_id, int):
        raise _Bad('"id" must be the reply\'s number, as exported')
    if not isinstance(better, str):
        raise _Bad('"better" must be text (leave it "" to skip the record)')
    if not isinstance(accept, bool):
        raise _Bad('"accept" must be true or false')
    if not isinstance(exclude, str):
        raise _Bad('"exclude" must be a reason in text, or ""')
    return _Line(reply_id, better.strip(), accept, exclude.strip(), _paraphrases(value))


def _paraphrases(value: dict[str, Any]) -> list[str]:
    found = value.get("paraphrases", [])
    if not isinstance(found, list) or not all(isinstance(text, str) for text in found):
        raise _Bad('"paraphrases" must be a list of texts, e.g. ["How far can it jump?"], or []')
    try:
        return clean_paraphrases(found)
    except ParaphraseTooLong as exc:
        raise _Bad(f'"paraphrases": {exc}') from None


def import_review(
    conn: Connection,
    path: Path,
    *,
    author: str,
    accept_all: bool = False,
    skip_bad: bool = False,
) -> ImportedReview:
    """Read ``path`` in the caller's transaction: a bad line raises (nothing is stored)
    unless ``skip_bad``, which lists bad lines in ``<path>.rejects.jsonl`` instead."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    result = ImportedReview()
    try:
        lines = path.open(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    number = 0
    with lines:
        try:
            numbered = tqdm(enumerate(lines, 1), desc="import", unit="line", disable=None)
            for number, line in numbered:
                if not line.strip():
                    continue
                try:
                    parsed = _parse(line)
                except _Bad as problem:
                    if not skip_bad:
                        raise DataError(
                            f"{path}:{number}: {problem}; fix it or pass --skip-bad"
                        ) from None
                    result.bad.append((number, str(problem)))
                    continue
                _apply(conn, result, parsed, accept_all, author)
        except UnicodeDecodeError:
            raise DataError(f"{path}:{number + 1}: not UTF-8; save the file as UTF-8") from None
    if result.bad:
        result.rejects = path.with_name(path.name + ".rejects.jsonl")
        with atomic_write(result.rejects) as side:
            for number, problem in result.bad:
                side.write(json.dumps({"line": number, "error": problem}) + "\n")
    return result


def _apply(
    conn: Connection, result: ImportedReview, line: _Line, accept_all: bool, author: str
) -> None:
    if not line.better and not line.exclude and not line.paraphrases:
        result.empty += 1
        return
    try:
        if line.better:
            added: Any = add_correction_sync(
                conn,
                line.reply_id,
                author,
                line.better,
                source="import",
                accepted=line.accept or accept_all,
                once=True,
            )
            if added is None:
                result.already += 1
            else:
                result.added += 1
        if line.exclude and exclude_sync(conn, line.reply_id, line.exclude, author):
            result.excluded += 1
        if line.paraphrases:
            new = add_paraphrases_sync(
                conn, line.reply_id, line.paraphrases, source="reviewer", author=author
            )
            result.paraphrases_added += new
            result.paraphrases_already += len(line.paraphrases) - new
    except UnknownReply:
        result.missing.append(line.reply_id)
