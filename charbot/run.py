"""``charbot run``: every enabled platform adapter in one event loop, until a signal.

Everything that can be refused (a missing token, a studio without its password on another
host, nothing to run) is refused before an adapter connects; the tokens and password are
checked before the model loads. The platform libraries are imported only for the adapters
the config enables.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from bot.config import Config, read_token
from bot.errors import CharbotError
from charbot.stopping import stop_on_signals

if TYPE_CHECKING:  # at run time, imported only where they are built
    from adapters.base import PlatformAdapter
    from adapters.console import ConsoleAdapter
    from bot.core import Core


async def run_command(config: Config, args: argparse.Namespace) -> int:
    """Start every enabled platform adapter in this one event loop; stop on a signal."""
    from charbot.wiring import open_core

    tokens = _tokens(config)
    async with open_core(config) as core:
        adapters, console = _adapters(config, core, tokens)
        stop = stop_on_signals()
        started: list[PlatformAdapter] = []
        try:
            if rule := await core.default_rule():
                print(f"charbot: {rule}", file=sys.stderr)
            for line in core.script_warnings():
                print(f"charbot: {line}", file=sys.stderr)
            await _start(adapters, console, started)
            await _until_stopped(stop, console)
        finally:
            await _stop(core, started, config.bot.shutdown_grace_s)
    return 0


def _tokens(config: Config) -> dict[str, str]:
    """The enabled platforms' tokens; refused before the model loads, as is a studio on
    another host without its password."""
    tokens = {}
    if config.discord.enabled:
        tokens["discord"] = read_token("discord", config.discord.token_env)
    if config.telegram.enabled:
        tokens["telegram"] = read_token("telegram", config.telegram.token_env)
    if config.web.enabled:
        from adapters.web.security import admin_password

        admin_password(config.web.host, config.web.password_env)
    return tokens


def _adapters(
    config: Config, core: Core, tokens: dict[str, str]
) -> tuple[list[PlatformAdapter], ConsoleAdapter | None]:
    """The adapters to start, in order, and the console among them (the terminal chat runs
    only when no platform is enabled)."""
    from adapters.console import ConsoleAdapter

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
    return adapters, console


async def _start(
    adapters: list[PlatformAdapter],
    console: ConsoleAdapter | None,
    started: list[PlatformAdapter],
) -> None:
    """Start each adapter in turn; ``started`` holds those to stop, should one fail."""
    for adapter in adapters:
        await adapter.start()
        started.append(adapter)
        if adapter is not console:  # the console shows itself
            print(f"charbot: {adapter.platform} connected", file=sys.stderr)


async def _until_stopped(stop: asyncio.Event, console: ConsoleAdapter | None) -> None:
    """Until a signal, or the console's user leaves the chat."""
    waiters = [asyncio.create_task(stop.wait())]
    if console is not None:
        waiters.append(asyncio.create_task(console.done.wait()))
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()


async def _stop(core: Core, started: list[PlatformAdapter], grace_s: float) -> None:
    """Intake first (everything received is stored), then answering (replies get [bot]
    shutdown_grace_s to finish), then the connections the replies used."""
    core.begin_stop()
    for adapter in reversed(started):
        await adapter.stop_intake()
    await core.stop(grace_s)
    for adapter in reversed(started):
        await adapter.stop()
