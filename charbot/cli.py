"""The `charbot` command: its parser, logging, and the dispatch to each command.

The commands live beside it (``run``, ``stats_command``, ``memory_command``, ``web_command``,
``card_import``)
and in training/ (``commands``: export and data; ``commands_train``: train, eval, loras);
only the terminal chat, a few lines, is here.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import logging
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

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
        "--base",
        default=argparse.SUPPRESS,
        help="override [model] base for this run (an HF id, a directory, a .gguf file, "
        '"smollm2" or "gemma3-270m")',
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
    for name, default in (("config", None), ("backend", None), ("base", None), ("verbose", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    _configure_logging(args.verbose)
    if not args.verbose:
        # Libraries' notices about their own coming API changes: nothing a user can act on.
        warnings.filterwarnings("ignore", category=FutureWarning)
    config: Config | None = None
    try:
        config = load_config(config_path(args.config), backend=args.backend, base_model=args.base)
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
    except StorageError as exc:  # [storage]'s errors name the file, like the config's own
        where = f"{config.path}: " if config is not None else ""
        print(f"charbot: error: {where}{exc}", file=sys.stderr)
        return 2
    except (CharbotError, EngineError) as exc:
        print(f"charbot: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line here, the traceback in a file
        log = _log_traceback(config)
        print(
            f"charbot: error: {type(exc).__name__}: {exc} (unexpected; the full traceback "
            f"is in {log})",
            file=sys.stderr,
        )
        return 1


def _log_traceback(config: Config | None) -> Path:
    """Append the exception being handled, with its traceback, to charbot-errors.log in the
    config's data/ folder (else the temporary folder); its path."""
    folders = [config.path.parent / "data"] if config is not None else []
    for folder in [*folders, Path(tempfile.gettempdir())]:
        path = folder / "charbot-errors.log"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as file:
                file.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} charbot {sys.argv[1:]}\n")
                file.write(traceback.format_exc())
            return path
        except OSError:
            continue
    return Path("(nowhere: no writable folder)")


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

    if args.character:
        _check_character(config, args.character)  # before the model loads (seconds)
    async with open_core(config) as core:
        console = ConsoleAdapter(core, user_name=config.console.user_name, character=args.character)
        await console.run()
    return 0


def _check_character(config: Config, name: str) -> None:
    """Refuse a ``--character`` that is not configured, suggesting the closest name."""
    names = [c.name for c in config.characters]
    if name.lower() in (n.lower() for n in names):
        return
    by_lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    hint = f" (did you mean {by_lower[close[0]]}?)" if close else ""
    raise CharbotError(f"unknown character {name!r}{hint}; known characters: {', '.join(names)}")


if __name__ == "__main__":
    sys.exit(main())
