"""config.toml, read once at start-up and validated into typed, frozen settings.

Every error is one line naming the file, the field and the fix (a :class:`ConfigError`).
The parts: ``settings`` (the dataclasses), ``reading`` (the file, unknown keys, value
types), one module per section that needs more than types (``model``, ``sections`` for
[storage], [bot] and the platforms, ``characters``, ``training``, ``clean``), and ``load``,
which composes them. Import the names from here.
"""

from bot.config.load import DEFAULT_CONFIG, config_path, load_config, read_token
from bot.config.reading import CONFIG_ENV
from bot.config.settings import (
    BotSettings,
    CleanSettings,
    Config,
    ConsoleSettings,
    DiscordSettings,
    LimitRules,
    LimitsSettings,
    LoopSettings,
    MemorySettings,
    ModelSettings,
    SceneSettings,
    TelegramSettings,
    TrainingSettings,
    WebSettings,
)
from bot.errors import ConfigError
from engine import parse_threads  # tests/test_threads.py reads it from here
from storage.settings import StorageSettings  # it lives with the store, which must not import bot

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "BotSettings",
    "CleanSettings",
    "Config",
    "ConfigError",
    "ConsoleSettings",
    "DiscordSettings",
    "LimitRules",
    "LimitsSettings",
    "LoopSettings",
    "MemorySettings",
    "ModelSettings",
    "SceneSettings",
    "StorageSettings",
    "TelegramSettings",
    "TrainingSettings",
    "WebSettings",
    "config_path",
    "load_config",
    "parse_threads",
    "read_token",
]
