"""Reading outside data files into SFT records, line by line, with errors that say where.

Accepted: CSV of question,answer pairs (with or without a header; a third label column
allowed, as in public Korean chatbot Q-A sets), OpenAI/TRL ``messages`` JSONL, and
prompt/response (or prompt/completion) JSONL whose values are strings or message lists. Any
encoding Python knows, UTF-8 by default. Every record becomes conversational prompt–
completion: ``{"prompt": [...], "completion": [{"role": "assistant", ...}], "meta": {...}}``.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from training.dataset.files import DataError

KINDS = ("csv", "jsonl")
_QUESTION_HEADERS = {"q", "question", "prompt", "input", "query", "instruction", "질문"}
_ANSWER_HEADERS = {"a", "answer", "response", "completion", "output", "reply", "답변"}
_ROLES = {"system", "user", "assistant"}


class BadLine(ValueError):
    """One input line that cannot become a record; the message says what is wrong."""


@dataclass
class Source:
    """An input file being read: its hash and size are taken from the bytes as they pass."""

    path: Path
    encoding: str = "utf-8"
    digest: Any = field(default_factory=hashlib.sha256)
    size: int = 0

    def kind(self) -> str:
        suffix = self.path.suffix.lower()
        if suffix in (".csv", ".tsv"):
            return "csv"
        if suffix in (".jsonl", ".json", ".ndjson"):
            return "jsonl"
        raise DataError(
            f"{self.path}: cannot tell the format from {suffix or 'no extension'!r}; "
            "name it .csv or .jsonl"
        )

    def lines(self, raw: BinaryIO) -> Iterator[tuple[int, str | BadLine]]:
        """(line number, text) per physical line, decoded one line at a time so that one
        undecodable line is reported (or skipped) without losing the rest."""
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise DataError(
                f"--encoding {self.encoding!r} is not an encoding Python knows; "
                "try utf-8, cp949, euc-kr, shift_jis, latin-1"
            ) from None
        for number, data in enumerate(raw, start=1):
            self.digest.update(data)
            self.size += len(data)
            try:
                text = data.decode(self.encoding)
            except UnicodeDecodeError as exc:
                yield (
                    number,
                    BadLine(
                        f"not valid {self.encoding} text (byte {data[exc.start]:#04x} at column "
                        f"{exc.start + 1}); pass the file's encoding, e.g. --encoding cp949"
                    ),
                )
                continue
            if number == 1:
                text = text.removeprefix("\ufeff")  # a byte-order mark is not data
            yield number, text


def read_file(source: Source) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """(line number, record or what is wrong with it) for every record of the file."""
    kind = source.kind()
    with source.path.open("rb") as raw:
        lines = source.lines(raw)
        yield from _csv(source, lines) if kind == "csv" else _jsonl(source, lines)


def _meta(source: Source, number: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**(extra or {}), "source": source.path.name, "line": number}


def _pair(question: str, answer: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    return [{"role": "user", "content": question}], [{"role": "assistant", "content": answer}]


def _csv(
    source: Source, lines: Iterator[tuple[int, str | BadLine]]
) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    bad: list[tuple[int, BadLine]] = []
    at = [0]  # the physical line last read (reader.line_num miscounts skipped lines)

    def text_lines() -> Iterable[str]:
        for number, text in lines:
            if isinstance(text, BadLine):
                bad.append((number, text))
            else:
                at[0] = number
                yield text

    delimiter = "\t" if source.path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(text_lines(), delimiter=delimiter)
    first = True
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            yield at[0], BadLine(f"not valid CSV ({exc})")
            continue
        finally:
            while bad:
                yield bad.pop(0)
        number = at[0]
        if not any(cell.strip() for cell in row):
            continue  # blank lines carry nothing
        if first:
            first = False
            if _is_header(row):
                continue
        if len(row) not in (2, 3):
            yield (
                number,
                BadLine(f"expected 2 or 3 columns (question,answer[,label]), found {len(row)}"),
            )
            continue
        question, answer = row[0], row[1]
        if not question.strip() or not answer.strip():
            yield number, BadLine("empty " + ("question" if not question.strip() else "answer"))
            continue
        prompt, completion = _pair(question, answer)
        extra = {"label": row[2]} if len(row) == 3 else None
        record = {"prompt": prompt, "completion": completion, "meta": _meta(source, number, extra)}
        yield number, record


def _is_header(row: list[str]) -> bool:
    cells = [cell.strip().casefold() for cell in row]
    return len(cells) >= 2 and cells[0] in _QUESTION_HEADERS and cells[1] in _ANSWER_HEADERS


def _jsonl(
    source: Source, lines: Iterator[tuple[int, str | BadLine]]
) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    for number, text in lines:
        if isinstance(text, BadLine):
            yield number, text
            continue
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield number, BadLine(f"not JSON ({exc.msg} at column {exc.colno})")
            continue
        try:
            yield number, _from_json(source, number, value)
        except BadLine as problem:
            yield number, problem


def _from_json(source: Source, number: int, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadLine(f"expected a JSON object, found {type(value).__name__}")
    extra = value.get("meta") if isinstance(value.get("meta"), dict) else None
    if "messages" in value:
        messages = _messages(value["messages"], "messages")
        if messages[-1]["role"] != "assistant":
            raise BadLine("the last of messages must be the assistant's answer")
        prompt, completion = messages[:-1], messages[-1:]
    elif "prompt" in value:
        answer_key = next((k for k in ("completion", "response", "answer") if k in value), None)
        if answer_key is None:
            raise BadLine('a "prompt" needs a "completion" or "response" beside it')
        prompt = _side(value["prompt"], "prompt", "user")
        completion = _side(value[answer_key], answer_key, "assistant")
        if completion[-1]["role"] != "assistant":
            raise BadLine(f'"{answer_key}" must end with the assistant\'s answer')
    else:
        raise BadLine('expected a "messages" list or "prompt" and "completion"/"response"')
    if not any(m["role"] == "user" for m in prompt):
        raise BadLine("no user turn before the answer")
    if not completion[-1]["content"].strip():
        raise BadLine("empty answer")
    return {"prompt": prompt, "completion": completion, "meta": _meta(source, number, extra)}


def _side(value: Any, key: str, role: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise BadLine(f'empty "{key}"')
        return [{"role": role, "content": value}]
    return _messages(value, key)


def _messages(value: Any, key: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise BadLine(f'"{key}" must be a non-empty list of {{"role", "content"}} objects')
    out = []
    for index, message in enumerate(value):
        if (
            not isinstance(message, dict)
            or message.get("role") not in _ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise BadLine(
                f'"{key}"[{index}] must be {{"role": "system|user|assistant", "content": text}}'
            )
        out.append({"role": message["role"], "content": message["content"]})
    return out
