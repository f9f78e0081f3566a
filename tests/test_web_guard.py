"""The studio guarded when it is exposed: the login throttle (per client address and
overall, 429 with Retry-After, a growing capped lockout, driven by an injected clock), every
route behind the login when a password is set, and ``[web] public_chat = true`` opening only
the chat, metered per client address."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from starlette.routing import Route

from adapters.web import limits
from tests.web_support import Browser, open_browser, write_config

PASSWORD = "correct horse battery staple"
# Open to anyone even with a password: logging in, logging out, and the CSS/JS (a Mount).
OPEN_ROUTES = {("/login", "GET"), ("/login", "POST"), ("/logout", "POST")}
CHAT_ROUTES = {
    ("/", "GET"),
    ("/api/chat/send", "POST"),
    ("/api/chat/regenerate", "POST"),
    ("/api/chat/swipe", "POST"),
    ("/api/chat/rate", "POST"),
    ("/api/chat/correct", "POST"),
    ("/api/chat/reset", "POST"),
    ("/api/chat/character", "POST"),
}


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def log_in(browser: Browser, password: str) -> tuple[int, str | None, str]:
    if not browser.csrf:
        await browser.get("/login")
    response = await browser.form("/login", {"password": password, "next": "/review"})
    return response.status_code, response.headers.get("retry-after"), response.text


async def test_wrong_passwords_lock_the_address_out_with_a_growing_capped_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    config = write_config(tmp_path, web='password_env = "STUDIO_PW"')
    async with open_browser(config, monkeypatch, password=PASSWORD, clock=clock) as browser:
        for _ in range(limits.FREE_TRIES - 1):
            status, retry, page = await log_in(browser, "guess")
            assert (status, retry) == (403, None) and "not the password" in page
        status, retry, page = await log_in(browser, "guess")
        assert (status, retry) == (429, "10") and "try again in 10 seconds" in page
        # Locked: even the right password is not compared (the answer would tell).
        clock.advance(9)
        assert (await log_in(browser, PASSWORD))[:2] == (429, "1")
        # Reconnecting without the cookie changes nothing: the state is the server's.
        fresh = browser.elsewhere("127.0.0.1")
        assert (await log_in(fresh, PASSWORD))[:2] == (429, "1")
        await fresh.client.aclose()
        # Each further wrong password after a window doubles the wait, up to the cap.
        waits = []
        for _ in range(8):
            clock.advance(limits.LONGEST_WAIT)
            waits.append((await log_in(browser, "guess"))[1])
        assert waits == ["20", "40", "80", "160", "320", "640", "900", "900"]
        assert (await browser.get("/review")).status_code == 303
        clock.advance(limits.LONGEST_WAIT)
        status, _, _ = await log_in(browser, PASSWORD)  # after the window: it works
        assert status == 303
        assert (await browser.get("/review")).status_code == 200
    lockouts = [r.getMessage() for r in caplog.records if r.name == "adapters.web.limits"]
    assert len(lockouts) == 9  # one line per lockout
    assert lockouts[0] == (
        "studio login: 5 wrong passwords from 127.0.0.1; its logins are refused for 10 s"
    )
    assert PASSWORD not in caplog.text and "guess" not in caplog.text


async def test_many_addresses_together_lock_every_login_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    config = write_config(tmp_path, web='password_env = "STUDIO_PW"')
    async with open_browser(config, monkeypatch, password=PASSWORD, clock=clock) as browser:
        statuses = []
        for n in range(limits.FREE_TRIES_OVERALL):
            # Fewer wrong tries per address than would lock that address out.
            guesser = browser.elsewhere(f"10.0.{n // (limits.FREE_TRIES - 1)}.1")
            statuses.append((await log_in(guesser, f"guess {n}"))[:2])
            await guesser.client.aclose()
        assert statuses[:-1] == [(403, None)] * (limits.FREE_TRIES_OVERALL - 1)
        assert statuses[-1] == (429, "10")
        assert (await log_in(browser, PASSWORD))[:2] == (429, "10")  # the admin waits too
        clock.advance(10)
        assert (await log_in(browser, PASSWORD))[0] == 303
    assert "wrong passwords from all addresses; every login is refused for 10 s" in caplog.text


def _path(route: Route) -> str:
    return re.sub(r"{[^}]+}", "1", route.path)


async def _anonymous(browser: Browser) -> dict[tuple[str, str], int]:
    """Every route of the app, asked by a browser that never logged in: its status."""
    found: dict[tuple[str, str], int] = {}
    await browser.get("/login")  # a CSRF token, so only the login can be the reason
    for route in browser.app.routes:
        if not isinstance(route, Route):
            continue  # /static: the studio's CSS and JS
        for method in sorted((route.methods or set()) - {"HEAD"}):
            if (route.path, method) in OPEN_ROUTES:
                continue
            if method == "GET":
                response = await browser.get(_path(route))
                refused = response.status_code == 303 and response.headers["location"].startswith(
                    "/login?next="
                )
            else:
                response = await browser.post(_path(route), {})
                refused = response.status_code == 403 and "log in first" in response.text
            found[(route.path, method)] = 0 if refused else response.status_code
    return found


async def test_with_a_password_every_route_refuses_an_anonymous_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, web='password_env = "STUDIO_PW"')
    async with open_browser(config, monkeypatch, password=PASSWORD) as browser:
        answered = await _anonymous(browser)
        assert set(answered) >= CHAT_ROUTES and ("/review", "GET") in answered
        assert {route for route, status in answered.items() if status} == set()
        assert await browser.core.store.list_messages(platform="web") == []
        login = (await browser.get("/login")).text
        assert "the chat, the review, characters and reports pages" in login


async def test_public_chat_opens_only_the_chat_routes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, web='password_env = "STUDIO_PW"\npublic_chat = true')
    async with open_browser(config, monkeypatch, password=PASSWORD) as browser:
        answered = await _anonymous(browser)
        assert {route for route, status in answered.items() if status} == CHAT_ROUTES
        assert "The chat is open" in (await browser.get("/login")).text


async def test_the_public_chat_is_metered_per_address_and_not_for_the_admin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    config = write_config(tmp_path, web='password_env = "STUDIO_PW"\npublic_chat = true')
    async with open_browser(config, monkeypatch, password=PASSWORD, clock=clock) as browser:
        for n in range(10):
            await browser.say(f"message {n}")
        refused = await browser.post("/api/chat/send", {"text": "one too many"})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "6"
        assert "at most 10 a minute" in refused.json()["error"]
        # Votes and swipes cost nothing; another address has its own bucket.
        assert (await browser.post("/api/chat/reset")).status_code == 200
        other = browser.elsewhere("192.0.2.7")
        await other.say("hello from elsewhere")
        await other.client.aclose()
        clock.advance(6)
        await browser.say("one more after a while")
        assert (await browser.post("/api/chat/send", {"text": "x"})).status_code == 429
        assert (await log_in(browser, PASSWORD))[0] == 303
        for n in range(12):
            await browser.say(f"admin {n}")  # logged in: no meter
        stored = await browser.core.store.list_messages(platform="web")
    assert "one too many" not in {row.text for row in stored}
