"""``charbot web``: serve the studio (adapters/web) on the core and store, until Ctrl-C.

charbot/cli.py registers it with :func:`add_parser` and runs :func:`web_command`. The web
libraries are imported only here, inside the command (the core never imports them).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bot.config import Config
from bot.errors import CharbotError
from charbot.stopping import stop_on_signals


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    web = commands.add_parser(
        "web", parents=[common], help="the studio: chat, review feedback, switch versions"
    )
    web.add_argument("--host", help="bind address (default: [web] host, 127.0.0.1)")
    web.add_argument("--port", type=int, help="port (default: [web] port)")


async def web_command(config: Config, args: argparse.Namespace) -> int:
    """Serve the studio until SIGINT/SIGTERM."""
    try:
        from adapters.web.app import WebAdapter
        from adapters.web.security import admin_password
    except ImportError as exc:
        raise CharbotError(
            f"the studio needs the web extra ({exc.name} is missing); run: pip install -e '.[web]'"
        ) from None
    from charbot.wiring import open_core

    host = args.host or config.web.host
    port = config.web.port if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise CharbotError(f"--port {port}: use a port from 1 to 65535")
    admin_password(host, config.web.password_env)  # refuse before the model loads
    async with open_core(config) as core:
        web = WebAdapter(core, config, host=host, port=port)
        await web.start()
        print(f"charbot: the studio is at {web.url} (Ctrl-C stops it)", file=sys.stderr)
        stop = stop_on_signals()
        try:
            await stop.wait()
        finally:
            await web.stop()
    return 0
