"""The review queue over HTTP: filters, context as prompted, a reviewer's answer, accepting
a user's correction, other ways to ask the question, exclusions — checked in what
`charbot export --format sft` writes — and the admin login that guards it when a password
is set."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from storage.paraphrases import list_paraphrases, paraphrases_of
from tests.test_web import XSS
from tests.web_support import Browser, charbot, export_sft, open_browser, write_config

PASSWORD = "correct horse battery staple"
ADMIN_PAGES = ("/review", "/characters", "/memory", "/reports")  # every page but the chat


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
async def browser(config_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Browser]:
    async with open_browser(config_path, monkeypatch) as found:
        yield found


async def rated_reply(browser: Browser, text: str, vote: int = -1, fix: str | None = None) -> Any:
    done = (await browser.say(text))[-1][1]
    await browser.post("/api/chat/rate", {"message_id": done["id"], "value": vote})
    if fix is not None:
        await browser.post("/api/chat/correct", {"message_id": done["id"], "text": fix})
    return done


def items(html: str) -> list[str]:
    return re.findall(r'<article class="item" id="r(\d+)"', html)


async def test_the_queue_shows_thumbs_down_replies_with_their_context(browser: Browser) -> None:
    bad = await rated_reply(browser, "Where is the galley?", -1, fix="Two decks down.")
    good = await rated_reply(browser, "Thanks!", 1)
    page = await browser.get("/review")
    assert page.status_code == 200
    assert items(page.text) == [str(bad["reply_id"])]
    assert "Where is the galley?" in page.text  # the stored prompt's user turn
    assert "You said: Where is the galley?" in page.text  # the reply
    assert "Two decks down." in page.text and "👎 1" in page.text
    assert "persona as prompted" in page.text and "A starship navigator." in page.text
    every = await browser.get("/review?score=all")
    assert items(every.text) == [str(good["reply_id"]), str(bad["reply_id"])]
    assert items((await browser.get("/review?score=up")).text) == [str(good["reply_id"])]


async def test_filters_by_character_platform_version_and_date(browser: Browser) -> None:
    mara = await rated_reply(browser, "Hello Mara")
    await browser.post("/api/chat/character", {"name": "Bram"})
    bram = await rated_reply(browser, "Hello Bram")

    async def shown(query: str) -> list[str]:
        page = await browser.get("/review?" + query)
        assert page.status_code == 200, page.text
        return items(page.text)

    assert await shown("character=Bram") == [str(bram["reply_id"])]
    assert await shown("character=Mara") == [str(mara["reply_id"])]
    assert await shown("platform=web") == [str(bram["reply_id"]), str(mara["reply_id"])]
    assert await shown("platform=telegram") == []
    assert len(await shown("version=base")) == 2 and await shown("version=v0001-x") == []
    assert len(await shown("since=2000-01-01")) == 2 and await shown("until=2000-01-01") == []


async def test_bad_filters_are_one_line_on_the_page(browser: Browser) -> None:
    for query, text in (
        ("since=yesterday", "since: &#39;yesterday&#39; is not a date; write YYYY-MM-DD"),
        ("score=great", "score: &#39;great&#39;; use one of down"),
        ("page=zero", "page: must be a whole number"),
    ):
        page = await browser.get("/review?" + query)
        assert page.status_code == 400 and text in page.text, query


async def test_a_reviewers_answer_is_what_the_sft_export_trains_on(
    browser: Browser, config_path: Path
) -> None:
    done = await rated_reply(browser, "What is the jump range?", -1, fix="Far.")
    await browser.get("/review")
    response = await browser.form(
        f"/review/{done['reply_id']}/better",
        {"text": "Four light-years on a full charge.", "next": "/review?score=down"},
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/review?score=down#r{done['reply_id']}"
    (record,) = export_sft(config_path)
    assert record["completion"] == [
        {"role": "assistant", "content": "Four light-years on a full charge."}
    ]
    assert record["prompt"][-1] == {"role": "user", "content": "What is the jump range?"}
    fixes = await browser.core.store.list_corrections([done["reply_id"]])
    assert [(f.user_id, f.source, bool(f.accepted)) for f in fixes] == [
        (fixes[0].user_id, "user", False),
        ("studio", "reviewer", True),
    ]
    page = await browser.get("/review")
    assert "reply %d: your answer is stored" % done["reply_id"] in page.text  # noqa: UP031
    assert ">Four light-years on a full charge.</textarea>" in page.text  # to edit, not retype


async def test_accepting_a_users_correction_wins_over_a_newer_one(
    browser: Browser, config_path: Path
) -> None:
    done = await rated_reply(browser, "Who built the Lantern?", -1, fix="The Orrin yards.")
    await browser.form(f"/review/{done['reply_id']}/better", {"text": "Nobody knows."})
    page = await browser.get("/review")
    accept = re.search(rf'action="/review/{done["reply_id"]}/accept/(\d+)"', page.text)
    assert accept, "the user's correction has an Accept button"
    response = await browser.form(accept[0][8:-1], {})
    assert response.status_code == 303
    (record,) = export_sft(config_path)
    assert record["completion"][0]["content"] == "The Orrin yards."
    wrong = await browser.form(f"/review/{done['reply_id']}/accept/999", {})
    assert wrong.status_code == 404 and "has no correction 999" in wrong.json()["error"]


async def test_other_ways_to_ask_are_stored_shown_and_exported(
    browser: Browser, config_path: Path
) -> None:
    done = await rated_reply(browser, "What is the jump range?", -1, fix="Four light-years.")
    page = await browser.get("/review")
    assert "Other ways to ask this (one per line)" in page.text
    url = f"/review/{done['reply_id']}/paraphrases"
    wordings = "How far can we jump?\r\n\r\n  Jump range, please? \r\nHow far can we jump?"
    response = await browser.form(url, {"paraphrases": wordings, "next": "/review?score=down"})
    assert response.status_code == 303
    assert response.headers["location"] == f"/review?score=down#r{done['reply_id']}"
    stored = await list_paraphrases(browser.core.store, done["reply_id"])
    assert [(p.text, p.source, p.author) for p in stored] == [
        ("How far can we jump?", "reviewer", "studio"),
        ("Jump range, please?", "reviewer", "studio"),
    ]
    page = await browser.get("/review")
    assert "reply %d: 2 other ways to ask it stored" % done["reply_id"] in page.text  # noqa: UP031
    assert 'How far can we jump? <span class="meta">— studio (reviewer)</span>' in page.text
    again = await browser.form(url, {"paraphrases": "Jump range, please?\nAny range limit?"})
    assert again.status_code == 303
    page = await browser.get("/review")
    assert "1 other ways to ask it stored (1 stored before)" in page.text
    (record,) = export_sft(config_path)
    assert record["meta"]["paraphrases"] == [
        "Any range limit?",
        "How far can we jump?",
        "Jump range, please?",
    ]
    empty = await browser.form(url, {"paraphrases": " \n "})
    assert empty.status_code == 400 and "one per line" in empty.json()["error"]
    long = await browser.form(url, {"paraphrases": "x" * 501})
    assert long.status_code == 400 and "shorten it to 500" in long.json()["error"]
    unknown = await browser.form("/review/999/paraphrases", {"paraphrases": "x"})
    assert unknown.status_code == 404 and "no stored reply has id 999" in unknown.text
    assert len(await list_paraphrases(browser.core.store, done["reply_id"])) == 3


async def test_an_excluded_reply_leaves_the_export_until_included_again(
    browser: Browser, config_path: Path
) -> None:
    done = await rated_reply(browser, "Say something rude", -1, fix="I'd rather not.")
    assert len(export_sft(config_path)) == 1
    url = f"/review/{done['reply_id']}"
    missing = await browser.form(url + "/exclude", {"reason": " "})
    assert missing.status_code == 400 and "reason:" in missing.json()["error"]
    assert (await browser.form(url + "/exclude", {"reason": "off-topic"})).status_code == 303
    assert export_sft(config_path) == []
    page = await browser.get("/review?score=excluded")
    assert items(page.text) == [str(done["reply_id"])] and "excluded: off-topic" in page.text
    assert (await browser.form(url + "/include", {})).status_code == 303
    assert len(export_sft(config_path)) == 1
    unknown = await browser.form("/review/999/exclude", {"reason": "x"})
    assert unknown.status_code == 404 and "no stored reply has id 999" in unknown.text


async def test_review_text_is_escaped(browser: Browser) -> None:
    done = await rated_reply(browser, XSS, -1, fix=XSS)
    await browser.form(f"/review/{done['reply_id']}/paraphrases", {"paraphrases": XSS})
    page = (await browser.get("/review")).text
    assert "<script>alert" not in page and "<img src=x" not in page
    assert page.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;") >= 4


async def test_review_posts_need_the_csrf_token(browser: Browser) -> None:
    done = await rated_reply(browser, "hi")
    for action, data in (
        ("better", {"text": "x"}),
        ("paraphrases", {"paraphrases": "x"}),
        ("exclude", {"reason": "x"}),
        ("include", {}),
        ("accept/1", {}),
    ):
        for token in ({}, {"csrf_token": "forged"}):
            url = f"/review/{done['reply_id']}/{action}"
            response = await browser.client.post(url, data={**data, **token})
            assert response.status_code == 403 and "CSRF" in response.json()["error"], url
    assert await browser.core.store.list_corrections([done["reply_id"]]) == []
    assert await paraphrases_of(browser.core.store, [done["reply_id"]]) == {}


async def test_with_a_password_and_a_public_chat_review_is_for_the_admin_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config_path = write_config(tmp_path, web="public_chat = true")
    async with open_browser(config_path, monkeypatch, password=PASSWORD) as browser:
        assert (await browser.get("/")).status_code == 200  # public_chat: the chat is open
        done = await rated_reply(browser, "hello")
        for page in ADMIN_PAGES:
            response = await browser.get(page)
            assert response.status_code == 303, page
            assert response.headers["location"] == f"/login?next={page}"
        refused = await browser.form(f"/review/{done['reply_id']}/exclude", {"reason": "x"})
        assert refused.status_code == 403 and "log in first" in refused.json()["error"]
        await browser.get("/login")
        wrong = await browser.form("/login", {"password": "guess", "next": "/review"})
        assert wrong.status_code == 403 and "not the password" in wrong.text
        assert (await browser.get("/review")).status_code == 303
        right = await browser.form("/login", {"password": PASSWORD, "next": "//evil.example"})
        assert right.status_code == 303 and right.headers["location"] == "/"
        seen = ""
        for page in ("/", *ADMIN_PAGES):
            response = await browser.get(page)
            assert response.status_code == 200, page
            seen += response.text + str(response.headers)
        assert (await browser.form("/logout", {})).status_code == 303
        assert (await browser.get("/review")).status_code == 303
    assert PASSWORD not in seen
    assert PASSWORD not in caplog.text


def test_another_host_without_a_password_refuses_to_start(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = charbot(config, "web", "--host", "0.0.0.0")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "charbot: error: [web] host 0.0.0.0: serving beyond this machine needs a password; "
        'set [web] password_env = "CHARBOT_WEB_PASSWORD" and export that variable, '
        "or use 127.0.0.1"
    )
    named = write_config(tmp_path, web='password_env = "STUDIO_PW"')
    result = charbot(named, "web", "--host", "0.0.0.0", env={"STUDIO_PW": ""})
    assert result.returncode == 2 and "STUDIO_PW, but it is empty" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_the_queue_pages_newest_first(browser: Browser) -> None:
    done = [await rated_reply(browser, f"question {n}") for n in range(27)]
    first = await browser.get("/review")
    assert "27 replies, page 1 of 2" in first.text
    assert items(first.text) == [str(d["reply_id"]) for d in reversed(done)][:25]
    second = await browser.get("/review?score=down&page=2")
    assert items(second.text) == [str(done[1]["reply_id"]), str(done[0]["reply_id"])]
    assert (await browser.get("/review?page=3")).status_code == 200  # past the end: empty
