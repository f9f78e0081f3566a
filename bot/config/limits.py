"""[limits] and its overrides: [limits.PLATFORM], [limits.characters.NAME] (as
[training.characters.NAME]) and [limits.chats."PLATFORM:CHAT_ID"], each a table of some of
[limits]'s keys."""

from __future__ import annotations

import dataclasses
from typing import Any

from bot.config.overrides import character_tables, split_characters
from bot.config.reading import Where, field_values, reject_unknown
from bot.config.settings import LIMIT_PLATFORMS, LimitRules, LimitsSettings

_COUNTS = (
    "messages_per_minute",
    "private_messages_per_minute",
    "tokens_per_day",
    "private_tokens_per_day",
    "replies_per_chat",
)


def read_limits(where: Where, table: Any, names: list[str]) -> LimitRules:
    """[limits] as :class:`LimitRules`; ``names`` are the configured characters, lower-case."""
    own, per_character = split_characters(where, "limits", table)
    fields = {f.name for f in dataclasses.fields(LimitsSettings)}
    reject_unknown(where, "limits", own, {*fields, *LIMIT_PLATFORMS, "chats", "characters"})
    platforms = {p: own.pop(p) for p in LIMIT_PLATFORMS if p in own}
    chats = own.pop("chats", {})
    base = LimitsSettings(**_layer(where, "limits", own))
    rules = LimitRules(base=base)
    for platform, values in platforms.items():
        rules.platforms[platform] = _layer(where, f"limits.{platform}", values)
    for name, label, values in character_tables(where, "limits", per_character, names):
        layer = _layer(where, label, values)
        if "replies_per_chat" in layer:
            where.fail(
                f"[{label}] replies_per_chat",
                "is the chat's share, not a character's; set it in [limits], "
                '[limits.PLATFORM] or [limits.chats."PLATFORM:CHAT_ID"]',
            )
        rules.characters[name] = layer
    if not isinstance(chats, dict):
        where.fail("[limits.chats]", 'must hold tables, e.g. [limits.chats."telegram:-100123"]')
    for chat, values in chats.items():
        platform, _, chat_id = str(chat).partition(":")
        label = f'limits.chats."{chat}"'
        if platform not in LIMIT_PLATFORMS or not chat_id:
            where.fail(
                f"[{label}]",
                f'name a chat as "PLATFORM:CHAT_ID", PLATFORM one of {", ".join(LIMIT_PLATFORMS)}',
            )
        rules.chats[f"{platform}:{chat_id}"] = _layer(where, label, values)
    return rules


def _layer(where: Where, label: str, table: Any) -> dict[str, Any]:
    """The keys ``table`` sets, each checked."""
    if not isinstance(table, dict):
        where.fail(f"[{label}]", "must be a table of settings")
    values = field_values(where, label, table, LimitsSettings)
    for name in _COUNTS:
        if name in values and values[name] < 0:
            where.fail(f"[{label}] {name}", "must be 0 (no limit) or more")
    return values
