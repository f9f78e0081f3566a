"""Characters and versions over HTTP: the list with metadata and live 👍 rate, and use /
roll back through the running bot's LoRA switcher — the next reply records the version."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage import lora_choices
from tests.web_support import Browser, charbot, make_version, open_browser, write_config


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
async def browser(config_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Browser]:
    loras = config_path.parent / "data" / "loras"
    make_version(loras, "Mara", 1, validation={"best_loss": 1.25})
    make_version(
        loras,
        "Mara",
        2,
        parent="v0001-00000001",
        examples=30,
        evaluation={"heldout_similarity": 0.4125, "corrected_similarity": 0.8},
    )
    async with open_browser(config_path, monkeypatch) as found:
        yield found


def in_use(html: str, name: str) -> str:
    found = re.search(
        rf"<h2>{name} <span class=\"meta\">speaks with <strong class=\"in-use\">"
        r"([^<]+)</strong>",
        html,
    )
    assert found, html
    return found[1]


async def test_the_page_lists_versions_with_metadata_and_scores(browser: Browser) -> None:
    page = await browser.get("/characters")
    assert page.status_code == 200
    assert in_use(page.text, "Mara") == "base" and in_use(page.text, "Bram") == "base"
    assert page.text.index("v0002-00000002") < page.text.index("v0001-00000001")  # newest first
    assert "0.412" in page.text and "0.800" in page.text and "1.250" in page.text
    assert "A starship navigator." in page.text  # the persona
    assert "charbot train --character Bram" in page.text  # Bram has no versions yet


async def test_use_switches_the_running_bot_and_the_next_reply_records_it(
    browser: Browser, config_path: Path
) -> None:
    await browser.get("/characters")
    response = await browser.form("/characters/use", {"character": "Mara", "version": "v2"})
    assert response.status_code == 303 and response.headers["location"] == "/characters"
    page = await browser.get("/characters")
    assert "Mara now speaks with v0002-00000002" in page.text
    assert in_use(page.text, "Mara") == "v0002-00000002"
    choice = (await lora_choices.current_choices(browser.core.store))["mara"]
    assert (choice.version, choice.chosen_by) == ("v0002-00000002", "studio")

    done = (await browser.say("Which version are you?"))[-1][1]
    reply = await browser.core.store.get_message(done["reply_id"])
    assert reply is not None and reply.lora_version == "v0002-00000002"
    await browser.post("/api/chat/rate", {"message_id": done["id"], "value": 1})
    page = (await browser.get("/characters")).text
    row = re.search(r'data-version="v0002-00000002">(.*?)</tr>', page, re.S)
    assert row and "<td>1</td><td>100%</td>" in row[1]  # one reply, all 👍

    # The same persisted choice the CLI reads and writes.
    listing = charbot(config_path, "loras", "list", "Mara")
    assert listing.returncode == 0 and "▶ v0002-00000002" in listing.stdout


async def test_rollback_goes_back_and_bad_switches_are_one_line(browser: Browser) -> None:
    await browser.get("/characters")
    await browser.form("/characters/use", {"character": "Mara", "version": "v1"})
    await browser.form("/characters/use", {"character": "mara", "version": "v2"})
    await browser.form("/characters/rollback", {"character": "Mara"})
    page = await browser.get("/characters")
    assert "Mara now speaks with v0001-00000001" in page.text
    assert in_use(page.text, "Mara") == "v0001-00000001"
    await browser.form("/characters/rollback", {"character": "Mara"})
    assert in_use((await browser.get("/characters")).text, "Mara") == "base"
    done = (await browser.say("And now?"))[-1][1]
    assert (await browser.core.store.get_message(done["reply_id"])).lora_version is None

    for data, text in (
        ({"character": "Mara"}, "Mara: no version was chosen, so there is nothing to roll back"),
        ({"character": "Mara", "version": "v9"}, "Mara has no LoRA version &#39;v9&#39;"),
        ({"character": "Zed", "version": "v1"}, "unknown character &#39;Zed&#39;"),
    ):
        url = "/characters/rollback" if "version" not in data else "/characters/use"
        assert (await browser.form(url, data)).status_code == 303
        assert text in (await browser.get("/characters")).text, data


async def test_switching_needs_the_csrf_token(browser: Browser) -> None:
    await browser.get("/characters")
    for url in ("/characters/use", "/characters/rollback"):
        response = await browser.client.post(url, data={"character": "Mara", "version": "v2"})
        assert response.status_code == 403 and "CSRF" in response.json()["error"]
    assert await lora_choices.current_choices(browser.core.store) == {}
