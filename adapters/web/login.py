"""Logging in as the studio's admin (only when ``[web] password_env`` is set), throttled:
after a few wrong passwords from an address (or from all of them) every try gets 429 with
``Retry-After`` for a while that grows with each further wrong one (adapters/web/limits)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from adapters.web.context import client_address, form_csrf, problem, render, studio_of
from adapters.web.limits import retry_after
from adapters.web.security import password_matches


def _safe_next(value: object) -> str:
    # Only a path of this site: "//evil.example" or "https://…" would leave it.
    text = str(value or "/")
    return text if text.startswith("/") and not text.startswith("//") else "/"


async def login_page(request: Request) -> Response:
    return render(request, "login.html", next=_safe_next(request.query_params.get("next")))


def _locked_out(request: Request, target: str, wait: float, wrong: bool) -> Response:
    response = render(
        request, "login.html", status_code=429, next=target, wrong=wrong, wait=retry_after(wait)
    )
    response.headers["retry-after"] = retry_after(wait)
    return response


async def login(request: Request) -> Response:
    form = await form_csrf(request)
    if form is None:
        return problem("missing or wrong CSRF token; reload the page and try again", 403)
    studio = studio_of(request)
    password = studio.password
    target = _safe_next(form.get("next"))
    if password is None:
        return RedirectResponse(target, status_code=303)
    address = client_address(request)
    # While locked out the password is not even compared: the answer would tell a guesser
    # whether the guess was right.
    if wait := studio.throttle.wait(address):
        return _locked_out(request, target, wait, wrong=False)
    if not password_matches(str(form.get("password", "")), password):
        if wait := studio.throttle.failed(address):
            return _locked_out(request, target, wait, wrong=True)
        return render(request, "login.html", status_code=403, next=target, wrong=True)
    studio.throttle.succeeded(address)
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
