"""Logging in as the studio's admin (only when ``[web] password_env`` is set)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from adapters.web.context import form_csrf, problem, render, studio_of
from adapters.web.security import password_matches


def _safe_next(value: object) -> str:
    # Only a path of this site: "//evil.example" or "https://…" would leave it.
    text = str(value or "/")
    return text if text.startswith("/") and not text.startswith("//") else "/"


async def login_page(request: Request) -> Response:
    return render(request, "login.html", next=_safe_next(request.query_params.get("next")))


async def login(request: Request) -> Response:
    form = await form_csrf(request)
    if form is None:
        return problem("missing or wrong CSRF token; reload the page and try again", 403)
    password = studio_of(request).password
    target = _safe_next(form.get("next"))
    if password is None:
        return RedirectResponse(target, status_code=303)
    if not password_matches(str(form.get("password", "")), password):
        return render(request, "login.html", status_code=403, next=target, wrong=True)
    request.session["admin"] = True
    return RedirectResponse(target, status_code=303)


async def logout(request: Request) -> Response:
    if await form_csrf(request) is None:
        return problem("missing or wrong CSRF token; reload the page and try again", 403)
    request.session.pop("admin", None)
    return RedirectResponse("/", status_code=303)


ROUTES = [
    ("/login", login_page, ["GET"]),
    ("/login", login, ["POST"]),
    ("/logout", logout, ["POST"]),
]
