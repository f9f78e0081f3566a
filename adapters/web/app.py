"""The studio's ASGI app and the platform adapter that serves it with uvicorn inside the
bot's own event loop (``charbot web``, or ``[web] enabled = true`` in ``charbot run``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from adapters.base import PlatformAdapter
from adapters.web import chat, login, memory, reports, review, versions
from adapters.web.context import Studio, make_templates
from adapters.web.security import SecurityHeaders, admin_password
from adapters.web.target import WebTarget
from bot.config import Config
from bot.core import Core
from bot.errors import CharbotError

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def create_app(studio: Studio) -> Starlette:
    """The studio as an ASGI app over a started core."""
    routes = [
        Route(path, handler, methods=methods)
        for module in (chat, login, review, versions, memory, reports)
        for path, handler, methods in module.ROUTES
    ]
    routes.append(Mount("/static", app=StaticFiles(directory=STATIC), name="static"))
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders),
            # A fresh key per start: sessions end with the process, and no key is stored.
            Middleware(
                SessionMiddleware,
                secret_key=secrets.token_urlsafe(32),
                session_cookie="charbot_studio",
                same_site="strict",
                max_age=12 * 3600,
            ),
        ],
    )
    app.state.studio = studio
    app.state.templates = make_templates()
    return app


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: ``charbot`` owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or one line saying why not (a port in use, a bad address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise CharbotError(
            f"[web] cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "choose another --port or [web] port"
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _recovery_target(chat_id: str, thread_id: str | None, reply_to: str | None) -> WebTarget:
    return WebTarget()  # nobody reads its events; the store keeps the reply


class WebAdapter(PlatformAdapter):
    """Serves the studio on ``host:port`` in the running event loop."""

    platform: ClassVar[str] = "web"

    def __init__(
        self, core: Core, config: Config, *, host: str | None = None, port: int | None = None
    ) -> None:
        self.host = host or config.web.host
        self.port = config.web.port if port is None else port
        # Checked before anything listens: another address without a password stops here.
        password = admin_password(self.host, config.web.password_env)
        self.app = create_app(Studio(core, config, password))
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self) -> None:
        sock = bind(self.host, self.port)
        self.port = sock.getsockname()[1]  # port 0 asks for a free one (tests)
        settings = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,  # request lines could carry a query someone typed
            lifespan="off",
            timeout_graceful_shutdown=3,  # open reply streams end with the process
        )
        self._server = _Server(settings)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="web")
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.02)
        if self._task.done():
            self._task.result()  # raises what stopped it
        # What a previous run stored but did not answer, answered in the background. The
        # browser that asked is gone: the replies are stored and the chat page shows them
        # on its next load (an open page's stream ended with that run).
        await self.app.state.studio.core.recover(self.platform, _recovery_target)

    async def stop_intake(self) -> None:
        """Refuse new chat messages (503, "try again"); replies streaming now go on."""
        self.app.state.studio.stopping = True

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, timeout=10)
        except TimeoutError:
            self._task.cancel()
        self._server = None
