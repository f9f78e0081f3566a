"""The memory page over HTTP: conversations' summaries and notes about people listed (and
escaped), edited and deleted in the database, and no change without the CSRF token."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage import memory as sql
from storage.records import StoredNote
from tests.test_web import XSS
from tests.web_support import Browser, open_browser, write_config

STORY = "The traveller asked Mara about the galley."


@pytest.fixture
async def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Browser]:
    async with open_browser(write_config(tmp_path), monkeypatch) as found:
        yield found


async def remembered(browser: Browser) -> tuple[int, int, int]:
    """A web chat with a summary and a note about its person: (conversation, summary, note)."""
    done = (await browser.say("Where is the galley?"))[-1][1]
    store = browser.core.store
    (message,) = [m for m in await store.list_messages() if m.id == done["reply_id"]]
    first = min(m.id for m in await store.list_messages())
    conversation = message.conversation_id
    summary = await store.write(
        lambda conn: sql.add_summary(conn, conversation, first, message.id, STORY, "t", 1.0)
    )
    note = StoredNote(
        0,
        "Mara",
        "web",
        message.author_id or "u",
        XSS,
        "private",
        message.chat_id,
        "user",
        None,
        time.time(),
    )
    note_id = await store.write(lambda conn: sql.add_note(conn, note))
    return conversation, summary, note_id


async def test_the_page_lists_summaries_and_notes(browser: Browser) -> None:
    conversation, summary, note = await remembered(browser)
    page = await browser.get("/memory")
    assert page.status_code == 200
    assert f'id="s{summary}"' in page.text and STORY in page.text
    assert f"conversation {conversation} · web:" in page.text
    assert f'id="n{note}"' in page.text and f"#{note} · Mara about web:" in page.text
    assert "private (only in web:" in page.text
    assert "<script>alert" not in page.text and "&lt;script&gt;" in page.text  # escaped
    assert 'href="/memory" class="here">Memory</a>' in page.text  # in the navigation


async def test_editing_and_deleting_change_the_database(browser: Browser) -> None:
    conversation, summary, note = await remembered(browser)
    store = browser.core.store
    await browser.get("/memory")
    saved = await browser.form(f"/memory/note/{note}", {"text": "  Likes   tea. "})
    assert saved.status_code == 303 and saved.headers["location"] == f"/memory#n{note}"
    (stored,) = await store.read(lambda conn: sql.notes_by_id(conn, [note]))
    assert stored.text == "Likes tea."
    assert f"note #{note} saved" in (await browser.get("/memory")).text
    edited = await browser.form(f"/memory/summary/{summary}", {"text": "A new story."})
    assert edited.status_code == 303
    assert (await store.read(lambda conn: sql.latest_summary(conn, conversation))).text == (
        "A new story."
    )
    assert (await browser.form(f"/memory/note/{note}/delete", {})).status_code == 303
    assert await store.read(lambda conn: sql.notes_by_id(conn, [note])) == []
    gone = await browser.form(f"/memory/conversation/{conversation}/delete", {})
    assert gone.status_code == 303
    assert await store.read(lambda conn: sql.latest_summary(conn, conversation)) is None
    assert "summarises it again" in (await browser.get("/memory")).text
    missing = await browser.form(f"/memory/note/{note}/delete", {})
    assert missing.status_code == 404 and f"no note {note}" in missing.json()["error"]
    empty = await browser.form(f"/memory/summary/{summary}", {"text": " "})
    assert empty.status_code == 400


async def test_a_note_over_the_limit_is_refused(browser: Browser) -> None:
    _, _, note = await remembered(browser)
    await browser.get("/memory")
    response = await browser.form(f"/memory/note/{note}", {"text": "x" * 301})
    assert response.status_code == 400
    assert response.json()["error"] == "text: 301 characters; a note holds at most 300"


async def test_no_change_without_the_csrf_token(browser: Browser) -> None:
    conversation, summary, note = await remembered(browser)
    await browser.get("/memory")
    for url, data in (
        (f"/memory/note/{note}", {"text": "changed"}),
        (f"/memory/note/{note}/delete", {}),
        (f"/memory/summary/{summary}", {"text": "changed"}),
        (f"/memory/conversation/{conversation}/delete", {}),
    ):
        for token in ({}, {"csrf_token": "forged"}):
            response = await browser.client.post(url, data={**data, **token})
            assert response.status_code == 403 and "CSRF" in response.json()["error"], url
    (stored,) = await browser.core.store.read(lambda conn: sql.notes_by_id(conn, [note]))
    assert stored.text == XSS
    assert (await browser.core.store.read(lambda c: sql.latest_summary(c, conversation))).text == (
        STORY
    )
