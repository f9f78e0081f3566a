"""What every studio route shares: the running core and settings, page rendering, the
session's checks (CSRF, admin) and one-line errors."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from adapters.web import security
from adapters.web.limits import ChatBucket, Clock, LoginThrottle, retry_after
from bot.config import Config
from bot.core import Core

TEMPLATES = Path(__file__).parent / "templates"
PLATFORM = "web"

Handler = Callable[[Request], Awaitable[Response]]
PUBLIC_CHAT_PER_MINUTE = 10  # messages per client address with [web] public_chat = true


@dataclass
class Studio:
    """The studio's dependencies, passed to every route through ``request.app.state``."""

    core: Core
    config: Config
    password: str | None  # the admin password; None: everyone is admin (loopback only)
    stopping: bool = False  # set by WebAdapter.stop_intake: new chat messages are refused
    clock: Clock = time.monotonic  # the throttles' clock (tests drive their own)
    throttle: LoginThrottle = field(init=False)  # wrong passwords, for this process's life
    chat_limit: ChatBucket = field(init=False)  # the public chat's messages per address

    def __post_init__(self) -> None:
        self.throttle = LoginThrottle(self.clock)
        self.chat_limit = ChatBucket(PUBLIC_CHAT_PER_MINUTE, self.clock)

    @property
    def public_chat(self) -> bool:
        """Whether the chat is open without the login (only meaningful with a password)."""
        return self.password is not None and self.config.web.public_chat

    @property
    def user_name(self) -> str:
        return self.config.web.user_name


def make_templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every page: user and model text is always escaped
        undefined=jinja2.StrictUndefined,
    )
    return Jinja2Templates(env=env)


def studio_of(request: Request) -> Studio:
    return request.app.state.studio  # type: ignore[no-any-return]


def is_admin(request: Request) -> bool:
    return studio_of(request).password is None or request.session.get("admin") is True


def client_address(request: Request) -> str:
    """The TCP peer's address: what the throttles count by."""
    return request.client.host if request.client else "unknown"


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    studio = studio_of(request)
    context.update(
        csrf=security.csrf_token(request),
        admin=is_admin(request),
        locked=studio.password is not None,
        public_chat=studio.public_chat,
        flash=request.session.pop("flash", None),
        path=request.url.path,
    )
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def problem(text: str, status_code: int = 400) -> JSONResponse:
    """One line saying what is wrong and how to fix it."""
    return JSONResponse({"error": text}, status_code=status_code)


def flash(request: Request, text: str) -> None:
    request.session["flash"] = text


async def form_csrf(request: Request) -> Any:
    """The posted form, or None when its CSRF token does not match the session's."""
    form = await request.form()
    given = form.get(security.CSRF_FIELD) or request.headers.get(security.CSRF_HEADER)
    return form if security.csrf_ok(request, str(given) if given else None) else None


def guarded(
    handler: Handler, *, admin: bool = False, public: bool = False, metered: bool = False
) -> Handler:
    """Wrap a route: with a password set every route needs the login, except ``public``
    ones (the chat) when ``[web] public_chat = true``; there a ``metered`` request (one that
    makes the model write, or stores text) spends one of the client address's messages per
    minute. Every state-changing request needs the session's CSRF token (header or form
    field). No route is open by omission: ``admin=True`` (the review pages) says what every
    route without ``public`` already is."""
    open_to_public = public and not admin

    async def route(request: Request) -> Response:
        changing = request.method not in ("GET", "HEAD")
        studio = studio_of(request)
        logged_in = is_admin(request)
        if not logged_in and not (open_to_public and studio.public_chat):
            if changing:
                return problem("log in first: this studio is for its admin", 403)
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        if changing and request.headers.get("content-type", "").startswith("application/json"):
            if not security.csrf_ok(request, request.headers.get(security.CSRF_HEADER)):
                return problem("missing or wrong CSRF token; reload the page and try again", 403)
        elif changing and await form_csrf(request) is None:
            return problem("missing or wrong CSRF token; reload the page and try again", 403)
        if changing and metered and not logged_in:
            wait = studio.chat_limit.take(client_address(request))
            if wait:
                refused = problem(
                    f"too many messages from your address; at most {PUBLIC_CHAT_PER_MINUTE} "
                    f"a minute, send it again in {retry_after(wait)} s",
                    429,
                )
                refused.headers["retry-after"] = retry_after(wait)
                return refused
        return await handler(request)

    return route
