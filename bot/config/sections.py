"""The small sections: [storage], [bot], and the characters [discord] and [telegram] name.
[console] and [web] need no checks beyond their keys' types (reading.read_section)."""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from bot.config.reading import Where
from bot.config.settings import (
    BotSettings,
    DiscordSettings,
    LoopSettings,
    MemorySettings,
    SceneSettings,
    TelegramSettings,
)
from bot.scenes import POLICIES
from storage.settings import StorageSettings

# SQLAlchemy's own dialects (a third-party one still opens, or gets "install the driver").
DATABASES = ("sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql")


def check_storage(where: Where, storage: StorageSettings, base: Path) -> StorageSettings:
    """``storage`` checked, its SQLite path taken relative to ``base`` (the config's folder);
    a misspelled database in the URL's scheme (``sqlte://``) gets a did-you-mean."""
    scheme, found, _ = storage.url.partition("://")
    backend = scheme.partition("+")[0].lower()
    if found and backend not in DATABASES:
        close = difflib.get_close_matches(backend, DATABASES, n=1, cutoff=0.6)
        if close:
            fixed = close[0] + storage.url[len(backend) :]
            where.fail(
                "[storage] url",
                f"unknown database {backend!r} (did you mean {close[0]}? e.g. {fixed!r})",
            )
    storage = dataclasses.replace(storage, url=_storage_url(base, storage.url))
    for name in ("max_wait_s", "busy_timeout_s"):
        if getattr(storage, name) < 0:
            where.fail(f"[storage] {name}", "must not be negative")
    return storage


def _storage_url(base: Path, url: str) -> str:
    """Relative SQLite paths are relative to the config file, not the working directory."""
    prefix = next((p for p in ("sqlite+aiosqlite:///", "sqlite:///") if url.startswith(p)), None)
    if prefix is None:
        return url
    database = url[len(prefix) :]
    if database in ("", ":memory:") or database.startswith("/"):
        return "sqlite:///" + database
    return "sqlite:///" + str((base / database).resolve())


def check_bot(where: Where, bot: BotSettings) -> BotSettings:
    """[bot]: the waits are not negative, at least one reply is written at a time."""
    for name in ("shutdown_grace_s", "answer_backlog_minutes"):
        if getattr(bot, name) < 0:
            where.fail(f"[bot] {name}", "must not be negative")
    if bot.max_replies < 1:
        where.fail("[bot] max_replies", "must be at least 1")
    return bot


def check_discord(where: Where, discord: DiscordSettings) -> DiscordSettings:
    """[discord] sharding: shard_ids need shard_count and lie in 0..shard_count-1."""
    count = discord.shard_count
    if count is not None and count < 1:
        where.fail("[discord] shard_count", "must be at least 1")
    if discord.shard_ids and count is None:
        where.fail(
            "[discord] shard_ids", "needs [discord] shard_count, the number of shards in all"
        )
    if count is not None:
        wrong = [i for i in discord.shard_ids if not 0 <= i < count]
        if wrong:
            where.fail(
                "[discord] shard_ids",
                f"{wrong[0]} is not a shard of {count}; shard ids run from 0 to {count - 1}",
            )
        if len(set(discord.shard_ids)) != len(discord.shard_ids):
            where.fail("[discord] shard_ids", "names a shard twice")
    return discord


EXTRACT = ("rules", "model", "off")


def check_memory(where: Where, memory: MemorySettings) -> MemorySettings:
    """[memory]: budgets not negative, a known way to extract notes, a model with its
    server."""
    budgets = ("recall_tokens", "summary_tokens", "notes_tokens", "recall_top_k", "cache_mb")
    _at_least(where, "memory", memory, (*budgets, "summarize_every"), 0)
    _at_least(where, "memory", memory, ("note_chars", "max_notes"), 1)
    if not -1.0 <= memory.recall_min_score <= 1.0:
        where.fail("[memory] recall_min_score", "is a cosine similarity, between -1 and 1")
    if memory.extract not in EXTRACT:
        where.fail("[memory] extract", f"must be one of {', '.join(EXTRACT)}")
    if memory.model and not memory.base_url:
        where.fail("[memory] model", "needs [memory] base_url, the server that serves it")
    if memory.base_url and not memory.model:
        where.fail("[memory] base_url", "needs [memory] model, the served model's name")
    return memory


def check_platform_characters(
    where: Where, discord: DiscordSettings, telegram: TelegramSettings, names: list[str]
) -> None:
    """The characters [discord] channel_characters and [telegram] default_character name
    are configured (``names`` are lower-case)."""
    named = {
        "discord": list(discord.channel_characters.values()),
        "telegram": [telegram.default_character] if telegram.default_character else [],
    }
    for section, mapped in named.items():
        for name in mapped:
            if name.lower() not in names:
                where.fail(f"[{section}]", f"character {name!r} is not configured")


def check_scenes(where: Where, scenes: SceneSettings) -> SceneSettings:
    """[scenes]: a known policy, a chain that is not negative."""
    for label, policy in (("policy", scenes.policy), *scenes.chats.items()):
        if policy not in POLICIES:
            where.fail(f"[scenes] {label}", f"must be one of {', '.join(POLICIES)}")
    for chat in scenes.chats:
        if ":" not in chat:
            where.fail(f"[scenes.chats] {chat}", 'name a chat as "PLATFORM:ID", e.g. "discord:123"')
    if scenes.max_chain < 0:
        where.fail(
            "[scenes] max_chain", "must not be negative (0: characters never answer each other)"
        )
    return scenes


def check_loop(where: Where, loop: LoopSettings) -> LoopSettings:
    """[loop]: counts are not negative, probabilities lie in (0, 1), some draws are made."""
    counts = ("max_votes_per_person_day", "promote_min_ratings", "promote_min_people")
    _at_least(where, "loop", loop, (*counts, "rollback_min_ratings", "min_swipe_pairs"), 0)
    for name in ("promote_probability", "rollback_probability"):
        if not 0 < getattr(loop, name) < 1:
            where.fail(f"[loop] {name}", "must lie between 0 and 1, e.g. 0.95")
    if loop.promote_max_loss < 0:
        where.fail("[loop] promote_max_loss", "must not be negative, e.g. 0.005")
    if loop.max_days <= 0:
        where.fail("[loop] max_days", "must be more than 0, e.g. 14")
    if loop.samples < 1000:
        where.fail("[loop] samples", "must be at least 1000, e.g. 20000")
    return loop


def _at_least(
    where: Where, section: str, settings: object, names: tuple[str, ...], floor: int
) -> None:
    """Each of ``names`` in ``[section]`` is at least ``floor`` (0: not negative)."""
    reason = "must not be negative" if floor == 0 else f"must be at least {floor}"
    for name in names:
        if getattr(settings, name) < floor:
            where.fail(f"[{section}] {name}", reason)
