"""The `charbot` command: its parser, logging, and the dispatch to each command.

The commands live beside it (``run``, ``stats_command``, ``memory_command``, ``web_command``,
``card_import``)
and in training/ (``commands``: export and data; ``commands_train``: train, eval, loras);
only the terminal chat, a few lines, is here.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import warnings

from bot.config import Config, config_path, load_config
from bot.errors import CharbotError
from charbot import card_import, memory_command, run, stats_command, web_command
from engine import BACKEND_ALIASES, BACKENDS, EngineError
from storage.errors import StorageError
from training import commands as data_commands
from training import commands_train as lora_commands


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
    stats_command.add_parser(commands, common)  # stats
    memory_command.add_parsers(commands, common)  # memory, forget-user
    lora_commands.add_commands(commands, common)  # train, eval, adapters
    web_command.add_parser(commands, common)  # web (the studio)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; 2 and one line on stderr for an error the user can fix."""
    args = build_parser().parse_args(argv)
    for name, default in (("config", None), ("backend", None), ("verbose", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    _configure_logging(args.verbose)
    if not args.verbose:
        # Libraries' notices about their own coming API changes: nothing a user can act on.
        warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        config = load_config(config_path(args.config), backend=args.backend)
        command = {
            "run": run.run_command,
            "chat": _chat,
            "stats": stats_command.stats_command,
            **memory_command.commands(),
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


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
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


async def _chat(config: Config, args: argparse.Namespace) -> int:
    from adapters.console import ConsoleAdapter
    from charbot.wiring import open_core

    async with open_core(config) as core:
        if args.character:
            core.character(args.character)  # fail fast, listing the known names
        console = ConsoleAdapter(core, user_name=config.console.user_name, character=args.character)
        await console.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
