"""Reading config.toml: the file itself, and the checks every table shares (unknown keys,
each value against its dataclass field's type). Every failure is one :class:`ConfigError`
line that names the file and the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from pathlib import Path
from typing import Any

from bot.errors import ConfigError

CONFIG_ENV = "CHARBOT_CONFIG"


class Where:
    """Formats errors that name the file and the field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, field_name: str, problem: str) -> None:
        raise ConfigError(f"{self.path}: {field_name}: {problem}")


def read_file(path: Path) -> dict[str, Any]:
    """The parsed TOML of ``path``; a missing, unparsable or non-UTF-8 file is one line."""
    if not path.is_file():
        raise ConfigError(
            f"{path}: no such config file; pass --config PATH, set {CONFIG_ENV}, "
            "or copy the repository's config.toml"
        )
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax there") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8") from None


def reject_unknown(where: Where, section: str, table: dict[str, Any], known: set[str]) -> None:
    """Fail on the first key of ``table`` not in ``known``, suggesting the closest one."""
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else f"known keys: {', '.join(sorted(known))}"
            )
            label = f"[{section}] {key}" if section else key
            if key == "token":
                where.fail(label, "tokens are never written in the file; set token_env instead")
            where.fail(label, f"unknown key; {hint}")


def field_values(where: Where, label: str, table: dict[str, Any], cls: type) -> dict[str, Any]:
    """The keys of ``table`` as fields of the dataclass ``cls``: unknown keys refused, each
    value checked against its field's type. ``label`` is the table's name, without brackets."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    reject_unknown(where, label, table, set(fields))
    return {
        key: coerce(where, f"[{label}] {key}", value, str(fields[key].type))
        for key, value in table.items()
    }


def read_section(where: Where, name: str, table: Any, cls: type) -> Any:
    """The table [``name``] as a ``cls``; keys it leaves out keep their defaults."""
    if not isinstance(table, dict):
        where.fail(f"[{name}]", "must be a table, e.g. [" + name + "] on its own line")
    return cls(**field_values(where, name, table, cls))


def coerce(where: Where, label: str, value: Any, kind: str) -> Any:
    """Check ``value`` against a dataclass field's declared type (a string: annotations are
    postponed) and convert ids to strings, lists to tuples, paths to Path."""
    optional = kind.endswith("| None")
    kind = kind.removesuffix(" | None")
    if optional and value in ("", None):
        return None
    if kind == "bool":
        if not isinstance(value, bool):
            where.fail(label, f"expected true or false, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            where.fail(label, f"expected a whole number, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            where.fail(label, f"expected a number, got {value!r}")
        return float(value)
    if kind == "int | str":
        if isinstance(value, bool) or not isinstance(value, int | str):
            where.fail(label, f"expected a whole number or a string in quotes, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            where.fail(label, f"expected a string in quotes, got {value!r}")
        return value
    if kind == "Path":
        if not isinstance(value, str):
            where.fail(label, f"expected a path in quotes, got {value!r}")
        return Path(value)
    if kind.startswith("tuple[str"):
        if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
            where.fail(label, f'expected a list of ids or names, e.g. ["123"], got {value!r}')
        return tuple(str(v) for v in value)
    if kind.startswith("tuple[int"):
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            where.fail(label, f"expected a list of whole numbers, e.g. [0, 1], got {value!r}")
        return tuple(value)
    if kind.startswith("dict[str, str]"):
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            where.fail(label, f'expected a table of id = "character name", got {value!r}')
        return {str(k): v for k, v in value.items()}
    raise AssertionError(f"unhandled config type {kind}")  # a bug in this module


def resolve(base: Path, path: Path) -> Path:
    """``path`` relative to ``base`` (the config file's folder) unless it is absolute."""
    return path if path.is_absolute() else base / path
