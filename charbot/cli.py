"""The `charbot` command: run the bot, chat in a terminal, export feedback, show stats."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from bot.config import Config, config_path, load_config, read_token
from bot.errors import CharbotError
from charbot import card_import, web_command
from engine import BACKEND_ALIASES, BACKENDS, EngineError
from storage.errors import StorageError
from training import commands as data_commands
from training import commands_train as lora_commands

log = logging.getLogger("charbot")


def build_parser() -> argparse.ArgumentParser:
    # The shared options are accepted before or after the command ("charbot chat --backend
    # echo" reads naturally); SUPPRESS keeps a subcommand's default from hiding the other.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help="config file (default: $CHARBOT_CONFIG or ./config.toml)",
    )
    common.add_argument(
        "--backend",
        choices=(*BACKENDS, *BACKEND_ALIASES),
        default=argparse.SUPPRESS,
        help="override [model] backend for this run",
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
    )
    parser = argparse.ArgumentParser(
        prog="charbot",
        description="A self-hosted character bot for Discord and Telegram.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("run", parents=[common], help="start every adapter enabled in the config")
    chat = commands.add_parser(
        "chat", parents=[common], help="chat in the terminal (reads piped stdin too)"
    )
    chat.add_argument("--character", help="the character to talk to")
    card_import.add_parser(commands, common)  # characters import
    data_commands.add_parsers(commands, common)  # export, import-corrections, data
    stats = commands.add_parser(
        "stats", parents=[common], help="messages, replies, ratings and errors per character"
    )
    stats.add_argument("--by-version", action="store_true", help="per LoRA version instead")
    lora_commands.add_commands(commands, common)  # train, eval, adapters
    web_command.add_parser(commands, common)  # web (the studio)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name, default in (("config", None), ("backend", None), ("verbose", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # These log request URLs, and URLs carry secrets: a Discord webhook's token (at DEBUG),
    # the Telegram bot token (httpx, at INFO). Keep them quiet even with -v.
    for noisy, level in (
        ("discord.http", logging.INFO),
        ("discord.webhook", logging.INFO),
        ("httpx", logging.WARNING),
        ("httpcore", logging.WARNING),
    ):
        logging.getLogger(noisy).setLevel(level)
    try:
        config = load_config(config_path(args.config), backend=args.backend)
        command = {
            "run": _run,
            "chat": _chat,
            "stats": _stats,
            "characters": card_import.import_command,
            **data_commands.commands(),
            **lora_commands.COMMANDS,
            "web": web_command.web_command,
        }[args.command]
        return asyncio.run(command(config, args))
    except (CharbotError, EngineError, StorageError) as exc:
        print(f"charbot: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def _chat(config: Config, args: argparse.Namespace) -> int:
    from adapters.console import ConsoleAdapter
    from charbot.wiring import open_core

    async with open_core(config) as core:
        if args.character:
            core.character(args.character)  # fail fast, listing the known names
        console = ConsoleAdapter(core, user_name=config.console.user_name, character=args.character)
        await console.run()
    return 0


async def _run(config: Config, args: argparse.Namespace) -> int:
    """Start every enabled platform adapter in this one event loop; stop on a signal."""
    from adapters.base import PlatformAdapter
    from adapters.console import ConsoleAdapter
    from charbot.wiring import open_core

    tokens = {}
    if config.discord.enabled:
        tokens["discord"] = read_token("discord", config.discord.token_env)
    if config.telegram.enabled:
        tokens["telegram"] = read_token("telegram", config.telegram.token_env)
    if config.web.enabled:  # refused before the model loads: another host needs a password
        from adapters.web.security import admin_password

        admin_password(config.web.host, config.web.password_env)

    async with open_core(config) as core:
        adapters: list[PlatformAdapter] = []
        if "discord" in tokens:
            from adapters.discord_adapter import DiscordAdapter

            adapters.append(DiscordAdapter(config.discord, core, tokens["discord"]))
        if "telegram" in tokens:
            from adapters.telegram_adapter import TelegramAdapter

            adapters.append(TelegramAdapter(config.telegram, core, tokens["telegram"]))
        if config.web.enabled:  # the studio, served in this same loop
            from adapters.web.app import WebAdapter

            adapters.append(WebAdapter(core, config))
        console = None
        if not adapters and config.console.enabled:
            console = ConsoleAdapter(core, user_name=config.console.user_name)
            adapters.append(console)
        if not adapters:
            raise CharbotError(
                f"{config.path}: nothing to run; enable [discord], [telegram] or [console]"
            )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # not on Windows
                loop.add_signal_handler(signum, stop.set)
        started: list[PlatformAdapter] = []
        try:
            for adapter in adapters:
                await adapter.start()
                started.append(adapter)
                if adapter is not console:  # the console shows itself
                    print(f"charbot: {adapter.platform} connected", file=sys.stderr)
            waiters = [asyncio.create_task(stop.wait())]
            if console is not None:
                waiters.append(asyncio.create_task(console.done.wait()))
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
        finally:
            # Intake first (everything received is stored), then answering (replies get
            # [bot] shutdown_grace_s to finish), then the connections the replies used.
            core.begin_stop()
            for adapter in reversed(started):
                await adapter.stop_intake()
            await core.stop(config.bot.shutdown_grace_s)
            for adapter in reversed(started):
                await adapter.stop()
    return 0


async def _stats(config: Config, args: argparse.Namespace) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
