"""``charbot stats``: messages, replies, ratings and errors per character, and what went
unanswered; ``--by-version`` hands over to the per-LoRA-version table (training/)."""

from __future__ import annotations

import argparse
from typing import Any

from bot.config import Config
from training import commands_train as lora_commands


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """``stats [--by-version]`` under ``commands`` (the CLI's subparsers)."""
    stats = commands.add_parser(
        "stats", parents=[common], help="messages, replies, ratings and errors per character"
    )
    stats.add_argument("--by-version", action="store_true", help="per LoRA version instead")


async def stats_command(config: Config, args: argparse.Namespace) -> int:
    """Print the per-character table, then the unanswered counts."""
    if args.by_version:
        return await lora_commands.stats_by_version_command(config, args)
    from storage.feedback import character_stats
    from storage.store import open_store
    from storage.unfinished import intake_counts

    async with open_store(config.storage) as store:
        stats = await character_stats(store)
        intake = await intake_counts(store)
    columns = ("messages", "replies", "up", "down", "corrections", "errors")
    headers = ("character", "messages", "replies", "👍", "👎", "corrections", "errors")
    width = max([len(h) for h in headers[:1]] + [len(str(n)) for n in stats])
    print(f"{headers[0]:<{width}}  " + "  ".join(f"{h:>11}" for h in headers[1:]))
    for name, row in stats.items():
        print(f"{name!s:<{width}}  " + "  ".join(f"{row[c]:>11}" for c in columns))
    # Messages not answered because they waited too long across a restart, and replies cut
    # off by a stop, are counted rather than forgotten.
    print(
        f"unanswered: {intake['skipped']} skipped (older than [bot] answer_backlog_minutes "
        f"at a restart), {intake['pending']} pending; {intake['interrupted']} replies interrupted"
    )
    return 0
