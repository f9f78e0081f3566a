"""The studio over HTTP: the chat page and its API on a real core and SQLite file (the
echo backend), driven through Starlette's real app with httpx."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from storage import swipes
from tests.web_support import REPO, Browser, charbot, events, open_browser, write_config

XSS = '<script>alert("x")</script> <img src=x onerror="alert(1)">'


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
async def browser(config_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Browser]:
    async with open_browser(config_path, monkeypatch) as found:
        yield found


async def test_chat_page_lists_the_characters(browser: Browser) -> None:
    page = await browser.get("/")
    assert page.status_code == 200
    assert '<option value="Mara" selected>' in page.text and "Bram" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert browser.csrf


async def test_a_message_streams_its_reply_and_is_stored_as_a_web_message(
    browser: Browser,
) -> None:
    found = await browser.say("Hello there, navigator")
    texts = [data["text"] for event, data in found if event == "text"]
    assert texts[-1] == "You said: Hello there, navigator"
    assert len(texts) >= 2, "the reply arrives in pieces, not at once"
    event, done = found[-1]
    assert event == "done" and done["status"] == "ok" and done["character"] == "Mara"
    rows = await browser.core.store.list_messages(platform="web")
    assert [(r.role, r.text) for r in rows] == [
        ("assistant", "Welcome aboard!"),  # the chat opened with Mara's greeting
        ("user", "Hello there, navigator"),
        ("assistant", "You said: Hello there, navigator"),
    ]
    assert rows[1].author_name == "User" and rows[2].platform_message_id == done["id"]


async def test_rate_correct_and_take_a_vote_back(browser: Browser) -> None:
    done = (await browser.say("Is it safe?"))[-1][1]
    assert (await browser.post("/api/chat/rate", {"message_id": done["id"], "value": -1})).json()
    assert await browser.post("/api/chat/correct", {"message_id": done["id"], "text": "Safe."})
    ratings = await browser.core.store.list_votes([done["reply_id"]])
    assert [r.value for r in ratings] == [-1]
    fixes = await browser.core.store.list_corrections([done["reply_id"]])
    assert [f.text for f in fixes] == ["Safe."]
    await browser.post("/api/chat/rate", {"message_id": done["id"], "value": 0})
    assert await browser.core.store.list_votes([done["reply_id"]]) == []


async def test_bad_chat_input_is_one_line_each(browser: Browser) -> None:
    cases = [
        ("/api/chat/send", {"text": "   "}, 400, "text: write some text first"),
        ("/api/chat/send", {"text": "x" * 9000}, 400, "too long"),
        ("/api/chat/rate", {"message_id": "nope", "value": 1}, 404, "not a reply in this chat"),
        ("/api/chat/rate", {"message_id": "a", "value": 5}, 400, "value: use 1"),
        ("/api/chat/correct", {"message_id": "a"}, 400, "text: write some text first"),
        ("/api/chat/regenerate", {"message_id": "nope"}, 404, "not a reply in this chat"),
        ("/api/chat/character", {"name": "Zed"}, 400, "unknown character 'Zed'"),
    ]
    for url, body, status, text in cases:
        response = await browser.post(url, body)
        assert response.status_code == status, (url, response.text)
        assert text in response.json()["error"], (url, response.text)
    response = await browser.client.post(
        "/api/chat/send",
        content=b"{not json",
        headers={"x-csrf-token": browser.csrf, "content-type": "application/json"},
    )
    assert response.status_code == 400 and "not JSON" in response.json()["error"]


async def test_every_state_changing_request_needs_the_csrf_token(browser: Browser) -> None:
    await browser.get("/")
    for url in (
        "/api/chat/send",
        "/api/chat/rate",
        "/api/chat/correct",
        "/api/chat/regenerate",
        "/api/chat/swipe",
        "/api/chat/reset",
        "/api/chat/character",
    ):
        for headers in ({}, {"x-csrf-token": "forged"}):
            response = await browser.client.post(url, json={"text": "hi"}, headers=headers)
            assert response.status_code == 403, url
            assert "CSRF" in response.json()["error"]
    rows = await browser.core.store.list_messages(platform="web")
    assert [r.text for r in rows] == ["Welcome aboard!"]  # only the page's greeting


async def test_script_and_img_onerror_are_shown_as_text(browser: Browser) -> None:
    await browser.say(XSS)
    page = (await browser.get("/")).text
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in page


async def test_regenerate_writes_a_sibling_into_the_same_bubble_and_the_shown_one_is_kept(
    browser: Browser,
) -> None:
    first = (await browser.say("Tell me a story"))[-1][1]
    found = events((await browser.post("/api/chat/regenerate", {"message_id": first["id"]})).text)
    assert ("swipe", {"index": 1, "count": 2}) in found
    second = found[-1][1]
    assert second["status"] == "ok" and second["id"] == first["id"]  # the same bubble
    store = browser.core.store
    rows = {r.id: r for r in await store.list_messages(platform="web")}
    assert rows[second["reply_id"]].regenerated_from_id == first["reply_id"]

    # ◀ shows the first take again; a vote on the bubble lands on the take shown.
    back = await browser.post("/api/chat/swipe", {"message_id": first["id"], "step": -1})
    assert back.json() == {
        "text": first["text"],
        "character": "Mara",
        "index": 0,
        "count": 2,
        "vote": 0,
    }
    await browser.post("/api/chat/rate", {"message_id": first["id"], "value": -1})
    assert [r.value for r in await store.list_votes([first["reply_id"]])] == [-1]
    assert await store.list_votes([second["reply_id"]]) == []
    page = (await browser.get("/")).text
    assert f'data-id="{first["id"]}" data-index="0" data-count="2" data-vote="-1"' in page
    bad = await browser.post("/api/chat/swipe", {"message_id": first["id"], "step": 2})
    assert bad.status_code == 400 and "step: use -1" in bad.json()["error"]

    # The conversation goes on from the take shown, and that choice is stored.
    await browser.say("And then?")
    rows = await store.list_messages(platform="web")
    asked = next(r for r in rows if r.text == "And then?")
    assert asked.parent_id == first["reply_id"]
    kept = await swipes.choices(store)
    asker = next(r for r in rows if r.role == "user")
    assert [(k, user) for k, _, user in kept] == [(first["reply_id"], asker.author_id)]


async def test_reset_starts_a_new_conversation_opened_by_the_greeting(
    browser: Browser,
) -> None:
    await browser.say("remember me")
    assert "remember me" in (await browser.get("/")).text
    reset = (await browser.post("/api/chat/reset")).json()
    assert reset["ok"] and reset["greeting"]["text"] == "Welcome aboard!"
    page = (await browser.get("/")).text
    assert "remember me" not in page and page.count("Welcome aboard!") == 1
    await browser.say("fresh start")
    rows = await browser.core.store.list_messages(platform="web")
    assert rows[0].conversation_id != rows[-1].conversation_id


async def test_choosing_a_character_greets_and_answers_as_it(browser: Browser) -> None:
    chosen = (await browser.post("/api/chat/character", {"name": "mara"})).json()
    assert chosen["character"] == "Mara" and chosen["greeting"]["text"] == "Welcome aboard!"
    assert (await browser.post("/api/chat/character", {"name": "Bram"})).json()["greeting"] is None
    done = (await browser.say("Any storms?"))[-1][1]
    assert done["character"] == "Bram"
    assert '<option value="Bram" selected>' in (await browser.get("/")).text


async def test_two_browsers_are_two_chats(config_path: Path, monkeypatch: pytest.MonkeyPatch):
    async with open_browser(config_path, monkeypatch) as one:
        await one.say("from the first browser")
        other = Browser(
            httpx.AsyncClient(transport=one.client._transport, base_url="http://127.0.0.1"),
            one.core,
            one.config,
        )
        page = await other.get("/")
        assert "from the first browser" not in page.text
        done = (await one.say("again"))[-1][1]
        response = await other.post("/api/chat/rate", {"message_id": done["id"], "value": 1})
        assert response.status_code == 404  # another chat's reply
        await other.client.aclose()


def _serve(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "charbot.cli", "--config", str(config), *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


def _get(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        return response.status, response.read().decode()


def _stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, err


def test_charbot_web_serves_the_chat_and_review_pages(tmp_path: Path) -> None:
    process = _serve(write_config(tmp_path), "web", "--port", "0")
    try:
        line = process.stderr.readline() if process.stderr else ""
        found = re.search(r"the studio is at (http://127\.0\.0\.1:\d+/)", line)
        assert found, line
        assert _get(found[1])[0] == 200
        status, review = _get(found[1] + "review")
        assert status == 200 and "Review queue" in review
    finally:
        code, err = _stop(process)
    assert code == 0, err


def test_web_enabled_runs_the_studio_inside_charbot_run(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a free port for the config
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp_path, web=f"enabled = true\nport = {port}")
    config.write_text(config.read_text().replace("port = 0\n", ""))
    process = _serve(config, "run")
    try:
        line = process.stderr.readline() if process.stderr else ""
        assert "web connected" in line, line
        status, page = _get(f"http://127.0.0.1:{port}/")
        assert status == 200 and '<option value="Mara" selected>' in page
    finally:
        code, err = _stop(process)
    assert code == 0, err


async def test_after_stop_intake_new_messages_are_refused(browser: Browser) -> None:
    from adapters.web.app import WebAdapter

    web = WebAdapter(browser.core, browser.config, port=0)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=web.app), base_url="http://127.0.0.1"
    ) as client:
        stopping = Browser(client, browser.core, browser.config)
        await stopping.say("before the stop")
        await web.stop_intake()
        response = await stopping.post("/api/chat/send", {"text": "during the stop"})
        assert response.status_code == 503 and "shutting down" in response.json()["error"]
    texts = [r.text for r in await browser.core.store.list_messages(platform="web")]
    assert "during the stop" not in texts and "before the stop" in texts


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = charbot(write_config(tmp_path), "web", "--port", str(port))
    assert result.returncode == 2
    assert result.stderr.startswith(f"charbot: error: [web] cannot listen on 127.0.0.1:{port} (")
    assert result.stderr.strip().endswith("choose another --port or [web] port")


def test_another_host_with_a_password_serves_and_asks_for_the_login(tmp_path: Path) -> None:
    config = write_config(tmp_path, web='password_env = "STUDIO_PW"')
    process = subprocess.Popen(
        [sys.executable, "-m", "charbot.cli", "--config", str(config), "web", "--host", "0.0.0.0"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env={**os.environ, "STUDIO_PW": "s3cret-for-the-test"},
    )
    try:
        line = process.stderr.readline() if process.stderr else ""
        found = re.search(r"the studio is at http://0\.0\.0\.0:(\d+)/", line)
        assert found, line
        base = f"http://127.0.0.1:{found[1]}/"
        status, page = _get(base + "login")
        assert status == 200 and "the chat, the review, characters and reports" in page
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        for path in ("", "review"):  # without public_chat the chat needs the login too
            with pytest.raises(urllib.error.HTTPError) as refused:
                opener.open(base + path, timeout=10)
            assert refused.value.code == 303
            assert refused.value.headers["location"] == f"/login?next=/{path}"
    finally:
        code, err = _stop(process)
    assert code == 0, err
    assert "s3cret-for-the-test" not in err


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


async def test_a_failing_model_is_an_apology_in_the_chat(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.answering import APOLOGY
    from tests.fakes import FakeModel

    async with open_browser(config_path, monkeypatch) as browser:
        monkeypatch.setattr(browser.core, "model", FakeModel(fail=True))
        found = await browser.say("hello?")
        assert ("notice", {"text": APOLOGY}) in found
        assert found[-1][0] == "done" and found[-1][1]["status"] == "error"
        rows = await browser.core.store.list_messages(platform="web")
        assert rows[-1].status == "error" and "told to fail" in (rows[-1].error or "")


async def test_a_restart_answers_what_the_last_run_left_and_finishes_cut_off_replies(
    browser: Browser,
) -> None:
    """A run that stopped after storing a web message, or mid-reply: the next start answers
    the message (the page shows the answer when it reloads: the browser that asked is gone)
    and stores the cut-off reply finished with "[interrupted]"."""
    import time

    from adapters.web.app import WebAdapter
    from storage.records import NewInbound, ReplyAddress

    await browser.say("first")  # the session's chat, as the page knows it
    store = browser.core.store
    viewer = (await store.list_messages(platform="web"))[0].chat_id

    async def left(text: str, link: bool) -> Any:
        return await store.store_inbound(
            NewInbound(
                platform="web",
                chat_id=viewer,
                thread_id=None,
                platform_message_id=f"u-{text}",
                author_id=viewer,
                author_name="User",
                text=text,
                reply_to_platform_id=None,
                created_at=time.time(),
                wants_answer=True,
            ),
            link_now=link,
        )

    asked = await left("tell me a story", True)
    await store.begin_reply(
        ReplyAddress(asked.conversation_id, "web", viewer, asked.message_id, "Mara"),
        text="Once upon a",
        platform_message_id="w-cut",
    )
    # sent while that reply streamed (so not yet linked), stored, never answered
    await left("are you there?", False)
    web = WebAdapter(browser.core, browser.config, port=0)
    await web.start()
    try:
        for _ in range(200):
            rows = await store.list_messages(platform="web")
            if any(r.text.endswith("are you there?") and r.role == "assistant" for r in rows):
                break
            await asyncio.sleep(0.05)
    finally:
        await web.stop()
    rows = await store.list_messages(platform="web")
    # answered once (the echo repeats the user turns since the last complete reply)
    answers = [r.text for r in rows if r.role == "assistant" and "are you there?" in r.text]
    assert len(answers) == 1 and answers[0].startswith("You said: ")
    assert "Once upon a [interrupted]" in [r.text for r in rows]
    page = (await browser.get("/")).text
    assert answers[0].split("\n")[-1] in page


async def test_a_new_chat_opens_with_the_greeting_once(browser: Browser) -> None:
    assert "Welcome aboard!" in (await browser.get("/")).text
    assert (await browser.get("/")).text.count("Welcome aboard!") == 1  # a reload: not again
    rows = await browser.core.store.list_messages(platform="web")
    assert [(r.role, r.text) for r in rows] == [("assistant", "Welcome aboard!")]
    await browser.post("/api/chat/character", {"name": "Bram"})  # Bram has no greeting
    await browser.post("/api/chat/reset")
    assert "Welcome aboard!" not in (await browser.get("/")).text
