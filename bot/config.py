"""config.toml, read once at start-up and validated into typed, frozen settings.

Every error is one line naming the file, the field and the fix (a :class:`ConfigError`).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.characters import Character, load_card
from bot.errors import ConfigError
from engine import (
    BACKENDS,
    ENGINES,
    KERNELS,
    EngineSettings,
    backend_name,
    parse_threads,
)
from storage.settings import StorageSettings


@dataclass(frozen=True, slots=True)
class ModelSettings(EngineSettings):
    """[model]: the engine's settings (engine.EngineSettings: backend, base model, serving),
    plus the prompt's knowledge budget and the default sampling settings."""

    # Sampling defaults: config.toml's, tuned on benchmarks/persona.py (docs/persona.md).
    max_new_tokens: int = 160
    temperature: float = 0.5
    top_p: float = 0.9
    repetition_penalty: float = 1.3  # > 1 discourages the reply repeating itself
    knowledge_tokens: int = 192  # of context_tokens, for lorebook entries and retrieved knowledge


@dataclass(frozen=True, slots=True)
class BotSettings:
    """[bot]: running and stopping (`charbot run`)."""

    shutdown_grace_s: float = 10.0  # on SIGTERM/Ctrl-C: how long replies may finish
    answer_backlog_minutes: float = 10.0  # after a restart: older unanswered messages skipped
    max_replies: int = 16  # replies written at once over all chats (benchmarks/intake.py)


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """[console]: the terminal chat."""

    enabled: bool = True  # started by `charbot run` only when no platform is enabled
    user_name: str = "User"


@dataclass(frozen=True, slots=True)
class DiscordSettings:
    """[discord]. The token is read from the environment variable named by token_env."""

    enabled: bool = False
    token_env: str = "DISCORD_TOKEN"
    allowed_guilds: tuple[str, ...] = ()  # empty = all
    allowed_channels: tuple[str, ...] = ()
    allowed_roles: tuple[str, ...] = ()
    allowed_users: tuple[str, ...] = ()
    admins: tuple[str, ...] = ()
    channel_characters: dict[str, str] = field(default_factory=dict)  # channel id -> name
    use_webhooks: bool = True
    api_base_url: str | None = None  # e.g. http://127.0.0.1:8080/api/v10 (tests, proxies)
    gateway_url: str | None = None  # e.g. ws://127.0.0.1:8080/


@dataclass(frozen=True, slots=True)
class TelegramSettings:
    """[telegram]. The token is read from the environment variable named by token_env."""

    enabled: bool = False
    token_env: str = "TELEGRAM_TOKEN"
    allowed_chats: tuple[str, ...] = ()  # empty = all
    allowed_users: tuple[str, ...] = ()
    admins: tuple[str, ...] = ()
    default_character: str | None = None
    base_url: str | None = None  # a self-hosted Bot API server (and tests), ".../bot"


@dataclass(frozen=True, slots=True)
class WebSettings:
    """[web]: the studio, a local web app (adapters/web). Any host but 127.0.0.1 needs the
    admin password in the environment variable named by password_env."""

    enabled: bool = False  # also serve it inside `charbot run`
    host: str = "127.0.0.1"
    port: int = 8765
    password_env: str | None = None  # the admin password's environment variable (never a value)
    user_name: str = "User"  # the name web chat messages are stored under


@dataclass(frozen=True, slots=True)
class TrainingSettings:
    """[training] (and [training.characters.NAME] overrides): LoRA fine-tuning of a character.

    The defaults train a few hundred pairs in minutes on a 2-core CPU and were checked with
    benchmarks/feedback_loop.py: small models need all linear layers and enough steps.
    """

    method: str = "sft"  # "sft" | "dpo" | "kto"
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("all-linear",)
    epochs: int = 6
    learning_rate: float = 1e-3
    batch_size: int = 4
    gradient_accumulation: int = 1
    weight_decay: float = 0.0
    max_length: int = 512  # tokens per example; longer ones are cut
    seed: int = 0
    val_fraction: float = 0.1  # held out when the dataset has no val.jsonl
    early_stopping: int = 2  # bad epochs (validation loss above the best) before stopping
    early_stopping_tolerance: float = 0.25  # "above": by more than this fraction of the best
    min_examples: int = 4  # fewer training examples are refused
    bf16: str = "auto"  # "auto" (where the CPU has bf16) | "true" | "false"
    loras_dir: Path = Path("data/loras")  # versions: loras_dir/<character>/vNNNN-<hash>/
    datasets_dir: Path = Path("data/datasets")  # a character's base dataset
    reports_dir: Path = Path("data/reports")
    poll_seconds: float = 2.0  # how often a running bot looks for a switched version


@dataclass(frozen=True, slots=True)
class CleanSettings:
    """[clean] (and [clean.characters.NAME] additions): cleaning rules of training data,
    applied by `charbot export` and `charbot data clean` (see training/cleaning.py)."""

    exclude_words: tuple[str, ...] = ()  # whole words, any case, e.g. out-of-world words
    exclude_patterns: tuple[str, ...] = ()  # regular expressions (Python syntax)
    min_chars: int = 1  # shorter answers are removed
    max_chars: int = 0  # longer answers are removed; 0 = no limit
    scrub: tuple[str, ...] = ("email", "phone", "url", "mention")  # replaced by [email] etc.


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration."""

    path: Path
    model: ModelSettings
    storage: StorageSettings
    characters: tuple[Character, ...]
    default_character: str
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    discord: DiscordSettings = field(default_factory=DiscordSettings)
    telegram: TelegramSettings = field(default_factory=TelegramSettings)
    web: WebSettings = field(default_factory=WebSettings)
    bot: BotSettings = field(default_factory=BotSettings)
    clean: CleanSettings = field(default_factory=CleanSettings)
    # Per-character [clean.characters.NAME] rules, by lower-case name; see clean_for.
    clean_overrides: dict[str, CleanSettings] = field(default_factory=dict)

    def clean_for(self, character: str) -> CleanSettings:
        """The cleaning rules of ``character``: [clean] with its own additions."""
        return self.clean_overrides.get(character.lower(), self.clean)

    training: TrainingSettings = field(default_factory=TrainingSettings)
    # Per-character [training.characters.NAME] settings, by lower-case name; see training_for.
    training_overrides: dict[str, TrainingSettings] = field(default_factory=dict)

    def training_for(self, character: str) -> TrainingSettings:
        """The training settings of ``character``: its overrides over [training]."""
        return self.training_overrides.get(character.lower(), self.training)


CONFIG_ENV = "CHARBOT_CONFIG"
DEFAULT_CONFIG = Path("config.toml")
_SECTIONS = {
    "model": ModelSettings,
    "storage": StorageSettings,
    "bot": BotSettings,
    "console": ConsoleSettings,
    "discord": DiscordSettings,
    "telegram": TelegramSettings,
    "web": WebSettings,
}
_TOP_LEVEL = {*_SECTIONS, "characters", "default_character", "clean", "training"}
log = logging.getLogger(__name__)
_CHARACTER_KEYS = {f.name for f in dataclasses.fields(Character)} - {"extensions", "lorebook"}
_CHARACTER_KEYS |= {"card", "adapter"}  # adapter: the older name of lora


def config_path(cli_value: str | None) -> Path:
    """--config wins, then $CHARBOT_CONFIG, then ./config.toml."""
    return Path(cli_value or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_config(path: Path, *, backend: str | None = None) -> Config:
    """Read and validate ``path``. ``backend`` overrides [model] backend for one run."""
    if not path.is_file():
        raise ConfigError(
            f"{path}: no such config file; pass --config PATH, set {CONFIG_ENV}, "
            "or copy the repository's config.toml"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax there") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    where = _Where(path)
    _reject_unknown(where, "", raw, _TOP_LEVEL)
    sections = {
        name: _section(where, name, raw.get(name, {}), cls) for name, cls in _SECTIONS.items()
    }
    model: ModelSettings = sections["model"]
    if backend is not None:
        model = dataclasses.replace(model, backend=backend)
    model = dataclasses.replace(model, backend=backend_name(model.backend))
    if model.backend not in BACKENDS:
        where.fail(
            "[model] backend",
            f"{model.backend!r} is not a backend; use one of {', '.join(BACKENDS)}",
        )
    if model.backend == "openai":
        _check_openai(where, model)
    for name in ("temperature", "top_p"):
        if getattr(model, name) < 0:
            where.fail(f"[model] {name}", "must not be negative")
    if model.repetition_penalty <= 0:
        where.fail("[model] repetition_penalty", "must be above 0 (1.0 turns it off)")
    for name in (
        "max_new_tokens",
        "context_tokens",
        "max_batch_size",
        "max_queue",
        "max_concurrency",
    ):
        if getattr(model, name) < 1:
            where.fail(f"[model] {name}", "must be at least 1")
    try:
        parse_threads(model.threads)
    except ValueError as exc:
        where.fail("[model] threads", str(exc))
    if model.engine not in ENGINES:
        where.fail("[model] engine", f"{model.engine!r} is not one of {', '.join(ENGINES)}")
    if model.kernels not in KERNELS:
        where.fail("[model] kernels", f"{model.kernels!r} is not one of {', '.join(KERNELS)}")
    base_dir = path.resolve().parent
    model = dataclasses.replace(model, cache_dir=_resolve(base_dir, model.cache_dir))
    storage = dataclasses.replace(
        sections["storage"], url=_storage_url(base_dir, sections["storage"].url)
    )
    for section, name in (
        ("storage", "max_wait_s"),
        ("storage", "busy_timeout_s"),
        ("bot", "shutdown_grace_s"),
        ("bot", "answer_backlog_minutes"),
    ):
        if getattr(sections[section], name) < 0:
            where.fail(f"[{section}] {name}", "must not be negative")
    if sections["bot"].max_replies < 1:
        where.fail("[bot] max_replies", "must be at least 1")

    characters = _characters(where, raw.get("characters"), base_dir)
    names = [c.name.lower() for c in characters]
    default = raw.get("default_character", characters[0].name)
    if not isinstance(default, str) or default.lower() not in names:
        where.fail(
            "default_character",
            f"{default!r} is not a configured character; use one of "
            + ", ".join(c.name for c in characters),
        )
    for section in ("discord", "telegram"):
        settings = sections[section]
        mapped = list(getattr(settings, "channel_characters", {}).values())
        if getattr(settings, "default_character", None):
            mapped.append(settings.default_character)
        for name in mapped:
            if name.lower() not in names:
                where.fail(f"[{section}]", f"character {name!r} is not configured")
    training, overrides = _training(where, raw.get("training", {}), base_dir, names)
    clean, clean_overrides = _clean(where, raw.get("clean", {}), names)
    return Config(
        path=path,
        clean=clean,
        clean_overrides=clean_overrides,
        training=training,
        training_overrides=overrides,
        model=model,
        storage=storage,
        bot=sections["bot"],
        characters=tuple(characters),
        default_character=default,
        console=sections["console"],
        discord=sections["discord"],
        telegram=sections["telegram"],
        web=sections["web"],
    )


def _check_openai(where: _Where, model: ModelSettings) -> None:
    """The openai backend needs a server address and the name the server gives the model."""
    if not model.base_url or not model.base_url.startswith(("http://", "https://")):
        where.fail(
            "[model] base_url",
            'backend "openai" needs the server\'s API root, e.g. "http://127.0.0.1:8000/v1"',
        )
    if not model.model:
        where.fail(
            "[model] model",
            'backend "openai" needs the served base model\'s name, e.g. model = "smollm2" '
            "(GET <base_url>/models lists them)",
        )
    if model.timeout_s <= 0:
        where.fail("[model] timeout_s", "must be above 0 seconds")


def read_token(section: str, token_env: str) -> str:
    """A platform token from the environment; the error names the variable, never a value."""
    token = os.environ.get(token_env, "").strip()
    if not token:
        raise ConfigError(
            f"[{section}] is enabled but the environment variable {token_env} is empty; "
            f"export {token_env}=<your bot token> (tokens never go in the config file)"
        )
    return token


class _Where:
    """Formats errors that name the file and the field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, field_name: str, problem: str) -> None:
        raise ConfigError(f"{self.path}: {field_name}: {problem}")


def _reject_unknown(where: _Where, section: str, table: dict[str, Any], known: set[str]) -> None:
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


def _section(where: _Where, name: str, table: Any, cls: type) -> Any:
    if not isinstance(table, dict):
        where.fail(f"[{name}]", "must be a table, e.g. [" + name + "] on its own line")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _reject_unknown(where, name, table, set(fields))
    values = {
        key: _coerce(where, f"[{name}] {key}", value, str(fields[key].type))
        for key, value in table.items()
    }
    return cls(**values)


def _coerce(where: _Where, label: str, value: Any, kind: str) -> Any:
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
    if kind.startswith("dict[str, str]"):
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            where.fail(label, f'expected a table of id = "character name", got {value!r}')
        return {str(k): v for k, v in value.items()}
    raise AssertionError(f"unhandled config type {kind}")  # a bug in this module


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else base / path


def _storage_url(base: Path, url: str) -> str:
    """Relative SQLite paths are relative to the config file, not the working directory."""
    prefix = next((p for p in ("sqlite+aiosqlite:///", "sqlite:///") if url.startswith(p)), None)
    if prefix is None:
        return url
    database = url[len(prefix) :]
    if database in ("", ":memory:") or database.startswith("/"):
        return "sqlite:///" + database
    return "sqlite:///" + str((base / database).resolve())


def _knowledge_files(
    where: _Where, label: str, base: Path, names: tuple[str, ...]
) -> tuple[str, ...]:
    """Resolve and read each knowledge file once, so a bad line stops the start-up."""
    from bot.knowledge import KnowledgeFileError, check_file

    paths = tuple(str(_resolve(base, Path(name))) for name in names)
    for path in paths:
        try:
            check_file(Path(path))
        except KnowledgeFileError as exc:
            where.fail(f"{label} knowledge", str(exc))
    return paths


def _characters(where: _Where, entries: Any, base: Path) -> list[Character]:
    if not entries:
        where.fail("[[characters]]", "at least one character is needed; add a [[characters]] table")
    if not isinstance(entries, list):
        where.fail("characters", "must be an array of tables: write [[characters]]")
    characters: list[Character] = []
    fields = {f.name: f for f in dataclasses.fields(Character)}
    for index, entry in enumerate(entries, start=1):
        label = f"[[characters]] #{index}"
        if not isinstance(entry, dict):
            # characters = ["Mara"] or [1, 2]: a list of names is not how characters are made.
            where.fail(
                "characters",
                f"entry #{index} is {entry!r}, not a table; each character is its own "
                '[[characters]] table with name = "..." (see the example config.toml)',
            )
        _reject_unknown(where, f"characters #{index}", entry, _CHARACTER_KEYS)
        entry = _older_lora_keys(where, label, entry)
        values: dict[str, Any] = {}
        if "card" in entry:
            card_path = _resolve(base, Path(str(entry["card"])))
            try:
                values = load_card(card_path)
            except ValueError as exc:
                where.fail(f"{label} card", str(exc))
        for key, value in entry.items():
            if key == "card":
                continue
            values[key] = _coerce(where, f"{label} {key}", value, str(fields[key].type))
        name = values.get("name")
        if not isinstance(name, str) or not name.strip():
            where.fail(f"{label} name", "every character needs a name (or a card with one)")
        if name.lower() in {c.name.lower() for c in characters}:
            where.fail(f"{label} name", f"{name!r} is used twice; names must be unique")
        if values.get("lora"):
            values["lora"] = str(_resolve(base, Path(values["lora"])))
        if values.get("knowledge"):
            values["knowledge"] = _knowledge_files(where, label, base, values["knowledge"])
        characters.append(Character(**values))
    return characters


def _older_lora_keys(where: _Where, label: str, entry: dict[str, Any]) -> dict[str, Any]:
    """A character's LoRA directory was ``adapter`` and its llama-server id ``lora = N``;
    both still work, each with one line naming today's key."""
    entry = dict(entry)
    if isinstance(entry.get("lora"), int) and not isinstance(entry["lora"], bool):
        log.warning(
            "%s: %s lora = %d: a llama-server adapter id is now lora_id = %d "
            "(lora is the LoRA directory)",
            where.path,
            label,
            entry["lora"],
            entry["lora"],
        )
        entry["lora_id"] = entry.pop("lora")
    if "adapter" in entry:
        if "lora" in entry:
            where.fail(f"{label} adapter", "is the older name of lora; keep only lora")
        log.warning("%s: %s adapter = ...: the key is now lora", where.path, label)
        entry["lora"] = entry.pop("adapter")
    return entry


def _training(
    where: _Where, table: Any, base: Path, names: list[str]
) -> tuple[TrainingSettings, dict[str, TrainingSettings]]:
    """[training] and its [training.characters.NAME] tables, each over the one before."""
    if not isinstance(table, dict):
        where.fail("[training]", "must be a table, e.g. [training] on its own line")
    table = dict(table)
    per_character = table.pop("characters", {})
    settings = _training_table(where, "training", table, TrainingSettings(), base)
    if not isinstance(per_character, dict):
        where.fail("[training.characters]", "must hold tables, e.g. [training.characters.Bram]")
    overrides = {}
    for name, values in per_character.items():
        if name.lower() not in names:
            where.fail(f"[training.characters.{name}]", f"character {name!r} is not configured")
        label = f"training.characters.{name}"
        overrides[name.lower()] = _training_table(where, label, values, settings, base)
    return settings, overrides


def _training_table(
    where: _Where, label: str, table: Any, over: TrainingSettings, base: Path
) -> TrainingSettings:
    if not isinstance(table, dict):
        where.fail(f"[{label}]", "must be a table of settings")
    fields = {f.name: f for f in dataclasses.fields(TrainingSettings)}
    _reject_unknown(where, label, table, set(fields))
    values = {
        key: _coerce(where, f"[{label}] {key}", value, str(fields[key].type))
        for key, value in table.items()
    }
    settings = dataclasses.replace(over, **values)
    if settings.method not in ("sft", "dpo", "kto"):
        where.fail(f"[{label}] method", f"{settings.method!r} is not a method; use sft, dpo or kto")
    if settings.bf16 not in ("auto", "true", "false"):
        where.fail(f"[{label}] bf16", 'use "auto", "true" or "false"')
    for name in ("rank", "alpha", "epochs", "batch_size", "gradient_accumulation", "max_length"):
        if getattr(settings, name) < 1:
            where.fail(f"[{label}] {name}", "must be at least 1")
    if not 0 <= settings.val_fraction < 1:
        where.fail(f"[{label}] val_fraction", "must be at least 0 and below 1")
    if settings.learning_rate <= 0:
        where.fail(f"[{label}] learning_rate", "must be above 0")
    paths = {
        name: _resolve(base, getattr(settings, name))
        for name in ("loras_dir", "datasets_dir", "reports_dir")
    }
    return dataclasses.replace(settings, **paths)


_SCRUB_KINDS = ("email", "phone", "url", "mention")


def _clean(
    where: _Where, table: Any, names: list[str]
) -> tuple[CleanSettings, dict[str, CleanSettings]]:
    """[clean] and its [clean.characters.NAME] tables."""
    if not isinstance(table, dict):
        where.fail("[clean]", "must be a table, e.g. [clean] on its own line")
    table = dict(table)
    per_character = table.pop("characters", {})
    shared = _clean_table(where, "clean", table, CleanSettings())
    if not isinstance(per_character, dict):
        where.fail("[clean.characters]", "must hold tables, e.g. [clean.characters.Bram]")
    overrides = {}
    for name, values in per_character.items():
        label = f"clean.characters.{name}"
        if name.lower() not in names:
            where.fail(f"[{label}]", f"character {name!r} is not configured")
        # Words and patterns named here are added to the shared ones; other keys replace.
        base = dataclasses.replace(shared, exclude_words=(), exclude_patterns=())
        own = _clean_table(where, label, values, base)
        overrides[name.lower()] = dataclasses.replace(
            own,
            exclude_words=shared.exclude_words + own.exclude_words,
            exclude_patterns=shared.exclude_patterns + own.exclude_patterns,
        )
    return shared, overrides


def _clean_table(where: _Where, label: str, table: Any, over: CleanSettings) -> CleanSettings:
    if not isinstance(table, dict):
        where.fail(f"[{label}]", "must be a table of settings")
    fields = {f.name: f for f in dataclasses.fields(CleanSettings)}
    _reject_unknown(where, label, table, set(fields))
    values = {
        key: _coerce(where, f"[{label}] {key}", value, str(fields[key].type))
        for key, value in table.items()
    }
    settings = dataclasses.replace(over, **values)
    for pattern in settings.exclude_patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            where.fail(f"[{label}] exclude_patterns", f"{pattern!r} is not a regex: {exc}")
    for kind in settings.scrub:
        if kind not in _SCRUB_KINDS:
            where.fail(f"[{label}] scrub", f"{kind!r}; use any of {', '.join(_SCRUB_KINDS)}")
    for name in ("min_chars", "max_chars"):
        if getattr(settings, name) < 0:
            where.fail(f"[{label}] {name}", "must not be negative")
    return settings
