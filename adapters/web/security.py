"""Who may do what in the studio: the bind-address rule, the admin password, the session's
CSRF token, and the headers every page carries."""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bot.errors import ConfigError

CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
# Every script and style is a static file of ours: no inline code may run, so text that
# slipped past escaping still could not execute.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only reaches this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def admin_password(host: str, password_env: str | None) -> str | None:
    """The admin password from the environment, or None on a loopback address without one.

    Raises ConfigError (one line, exit 2) when another address is asked for without a
    password, or when the named variable is empty. The value never appears in a message.
    """
    if password_env:
        password = os.environ.get(password_env, "")
        if not password.strip():
            raise ConfigError(
                f"[web] password_env names {password_env}, but it is empty; "
                f"export {password_env}=<a password> before starting the studio"
            )
        return password
    if not is_loopback(host):
        raise ConfigError(
            f"[web] host {host}: serving beyond this machine needs a password; set [web] "
            'password_env = "CHARBOT_WEB_PASSWORD" and export that variable, or use 127.0.0.1'
        )
    return None


def password_matches(given: str, password: str) -> bool:
    return hmac.compare_digest(given.encode(), password.encode())


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made on first use."""
    token = request.session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return str(token)


def csrf_ok(request: Request, given: str | None) -> bool:
    expected = request.session.get("csrf")
    return bool(expected and given) and hmac.compare_digest(str(given), str(expected))


def viewer_id(request: Request) -> str:
    """A random id per browser session: the web chat's chat id and user id."""
    viewer = request.session.get("viewer")
    if not viewer:
        viewer = secrets.token_hex(8)
        request.session["viewer"] = viewer
    return str(viewer)


class SecurityHeaders:
    """Adds the content security policy and friends to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                    (b"x-frame-options", b"DENY"),
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)
