"""``load_config``: config.toml read once, each section validated by its own module, and
composed into one :class:`Config`; plus where the file is and where tokens come from."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from bot.config.characters import default_character, read_characters, read_global_lorebooks
from bot.config.clean import read_clean
from bot.config.limits import read_limits
from bot.config.model import check_model
from bot.config.reading import CONFIG_ENV, Where, read_file, read_section, reject_unknown
from bot.config.sections import (
    check_bot,
    check_discord,
    check_loop,
    check_memory,
    check_platform_characters,
    check_scenes,
    check_storage,
)
from bot.config.settings import (
    BotSettings,
    Config,
    ConsoleSettings,
    DiscordSettings,
    LoopSettings,
    MemorySettings,
    ModelSettings,
    SceneSettings,
    TelegramSettings,
    WebSettings,
)
from bot.config.training import read_training
from bot.errors import ConfigError
from storage.settings import StorageSettings

DEFAULT_CONFIG = Path("config.toml")
# The sections that are one settings table each; the rest are read by their own modules.
_SECTIONS = {
    "model": ModelSettings,
    "storage": StorageSettings,
    "bot": BotSettings,
    "console": ConsoleSettings,
    "discord": DiscordSettings,
    "telegram": TelegramSettings,
    "web": WebSettings,
    "memory": MemorySettings,
    "scenes": SceneSettings,
    "loop": LoopSettings,
}
_TOP_LEVEL = {
    *_SECTIONS,
    *("characters", "default_character", "clean", "training", "lorebooks", "limits"),
}


def config_path(cli_value: str | None) -> Path:
    """--config wins, then $CHARBOT_CONFIG, then ./config.toml."""
    return Path(cli_value or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_config(path: Path, *, backend: str | None = None, base_model: str | None = None) -> Config:
    """Read and validate ``path``. ``backend`` and ``base_model`` override [model] backend
    and base for one run."""
    # The order of the checks is the order errors are reported in: every table's keys and
    # types first, then each section's values, then what names a character.
    raw = read_file(path)
    where = Where(path)
    reject_unknown(where, "", raw, _TOP_LEVEL)
    tables = {
        name: read_section(where, name, raw.get(name, {}), cls) for name, cls in _SECTIONS.items()
    }
    base = path.resolve().parent
    model = tables["model"]
    if base_model:
        model = dataclasses.replace(model, base=base_model)
    model = check_model(where, model, base, backend)
    storage = check_storage(where, tables["storage"], base)
    bot = check_bot(where, tables["bot"])
    memory = check_memory(where, tables["memory"])
    scenes = check_scenes(where, tables["scenes"])
    loop = check_loop(where, tables["loop"])
    discord = check_discord(where, tables["discord"])
    global_books = read_global_lorebooks(where, raw.get("lorebooks", {}), base)
    characters = read_characters(where, raw.get("characters"), base, global_books)
    default = default_character(where, raw, characters)
    names = [c.name.lower() for c in characters]
    check_platform_characters(where, tables["discord"], tables["telegram"], names)
    training, training_overrides = read_training(where, raw.get("training", {}), base, names)
    clean, clean_overrides = read_clean(where, raw.get("clean", {}), names)
    limits = read_limits(where, raw.get("limits", {}), names)
    return Config(
        path=path,
        clean=clean,
        clean_overrides=clean_overrides,
        training=training,
        training_overrides=training_overrides,
        model=model,
        storage=storage,
        bot=bot,
        memory=memory,
        scenes=scenes,
        limits=limits,
        loop=loop,
        characters=tuple(characters),
        default_character=default,
        console=tables["console"],
        discord=discord,
        telegram=tables["telegram"],
        web=tables["web"],
    )


def read_token(section: str, token_env: str) -> str:
    """A platform token from the environment; the error names the variable, never a value."""
    token = os.environ.get(token_env, "").strip()
    if not token:
        raise ConfigError(
            f"[{section}] is enabled but the environment variable {token_env} is empty; "
            f"export {token_env}=<your bot token> (tokens never go in the config file)"
        )
    return token
