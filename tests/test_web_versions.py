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
    make_version(loras, "Mara", 3, parent="v0002-00000002", evaluation=COMPARED)
    make_version(loras, "Mara", 4, parent="v0003-00000003", evaluation=FAILED)
    async with open_browser(config_path, monkeypatch) as found:
        yield found


# The evaluation as training writes it now: every figure beside the compared version's.
COMPARED = {
    "version": "v0003-00000003",
    "heldout_similarity": 0.51,
    "corrected_similarity": 0.93,
    "heldout_questions": 4,
    "corrected_questions": 12,
    "paraphrase_recall": 0.75,
    "paraphrase_questions": 36,
    "leak_rate": 0.0,
    "unrelated_prompts": 30,
    "distinct_rate": 1.0,
    "distinct_2": 0.82,
    "mean_words": 14.2,
    "drift": 0.31,
    "persona_score": 0.83,
    "persona_questions": 12,
    "against": "v0002-00000002",
    "baseline": {
        "heldout_similarity": 0.4125,
        "corrected_similarity": 0.8,
        "paraphrase_recall": 0.5,
        "leak_rate": 0.1,
        "distinct_rate": 1.0,
        "persona_score": 0.67,
    },
    "gate": {"passed": True, "failed": None},
}
# A failed gate against the base model, with figures missing, null or not numbers.
FAILED = {
    "heldout_similarity": 0.2,
    "paraphrase_recall": 0.4,
    "leak_rate": 0.12,
    "distinct_rate": None,
    "persona_score": "83%",
    "against": "base",
    "baseline": {"leak_rate": 0.0, "paraphrase_recall": None},
    "gate": {"passed": False, "failed": "leak rate 12% vs 0% (margin 2%)"},
}


def cells(html: str, version: str) -> list[str]:
    """The text of each cell of a version's row, tags removed and spaces squeezed."""
    row = re.search(rf'data-version="{version}">(.*?)</tr>', html, re.S)
    assert row, html
    found = re.findall(r"<td[^>]*>(.*?)</td>", row[1], re.S)
    return [" ".join(re.sub(r"<[^>]+>", " ", cell).split()) for cell in found]


def cell(html: str, version: str, column: str) -> str:
    """The HTML of one figure cell of a version's row, by its column name."""
    row = re.search(rf'data-version="{version}">(.*?)</tr>', html, re.S)
    assert row, html
    found = re.findall(r"<td[^>]*>(.*?)</td>", row[1], re.S)
    return found[COLUMNS.index(column)]


COLUMNS = ["version", "trained", "held-out", "paraphrase", "leak", "distinct"]
COLUMNS += ["persona", "gate", "replies", "up rate", "use"]


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


async def test_each_figure_shows_beside_the_compared_versions(browser: Browser) -> None:
    page = (await browser.get("/characters")).text
    figures = cells(page, "v0003-00000003")[2:8]
    assert figures == [
        "0.510 ▲ was 0.412 corrected 0.930 (was 0.800)",
        "75% ▲ was 50%",
        "0% ▼ was 10%",  # the leak rate went down: better
        "100% = was 100%",
        "83% ▲ was 67%",
        "✓ passed against v0002",
    ]
    assert 'class="was better"' in cell(page, "v0003-00000003", "paraphrase")
    assert 'class="was better"' in cell(page, "v0003-00000003", "leak")
    assert 'class="was same"' in cell(page, "v0003-00000003", "distinct")
    assert 'class="better">✓ passed' in cell(page, "v0003-00000003", "gate")
    assert "over 36 questions" in cell(page, "v0003-00000003", "paraphrase")  # the tooltip
    assert "distinct bigrams 82%; mean words 14.2; drift 0.310" in cell(
        page, "v0003-00000003", "distinct"
    )

    assert cells(page, "v0004-00000004")[2:8] == [
        "0.200",  # no corrected similarity, no baseline's held-out one: nothing beside it
        "40%",
        "12% ▲ was 0%",
        "–",  # null
        "–",  # not a number
        "✗ failed leak rate 12% vs 0% (margin 2%) against base",
    ]
    assert 'class="was worse"' in cell(page, "v0004-00000004", "leak")
    assert 'class="worse">✗ failed' in cell(page, "v0004-00000004", "gate")


async def test_old_and_missing_evaluations_show_what_they_have(browser: Browser) -> None:
    page = (await browser.get("/characters")).text
    # An evaluation from before paraphrases, leaks and the gate: its two similarities.
    made, similarity, *figures = cells(page, "v0002-00000002")[1:8]
    assert made == "sft, 30 examples val loss –, from v0001"
    assert similarity == "0.412 corrected 0.800" and figures == ["–"] * 5
    # No evaluation at all (charbot train without --eval): a dash in every figure.
    assert cells(page, "v0001-00000001")[1:8] == ["sft val loss 1.250"] + ["–"] * 6


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
    assert row and '<td>100%<span class="sub">1 reply</span></td>' in row[1]  # all 👍

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


async def test_a_live_canary_shows_its_posteriors_and_its_buttons_end_it(
    browser: Browser, config_path: Path
) -> None:
    from storage import canaries

    store = browser.core.store
    loras = config_path.parent / "data" / "loras"
    path = str(loras / "Mara" / "v0002-00000002")
    await canaries.start_canary(store, "Mara", "v0002-00000002", path, 0.2, None, "cli")

    page = (await browser.get("/characters")).text
    assert "Canary: v0002-00000002 for 20% of people, against base" in page
    assert page.count("<polyline") == 2  # one posterior per version
    assert "Decision: <strong>continue</strong>" in page and "0/100 ratings" in page
    for action in ("promote", "rollback", "stop"):
        assert f'name="action" value="{action}"' in page

    answer = await browser.form("/characters/canary", {"character": "mara", "action": "promote"})
    assert answer.status_code == 303
    page = (await browser.get("/characters")).text
    assert "Mara: canary promoted; everyone meets v0002-00000002" in page
    assert "Canary:" not in page
    assert in_use(page, "Mara") == "v0002-00000002"
    assert (await lora_choices.current_choices(store))["mara"].version == "v0002-00000002"
    (ended,) = await canaries.history(store, "Mara")
    assert (ended.outcome, ended.ended_by) == ("promoted", "studio")

    await browser.form("/characters/canary", {"character": "Mara", "action": "stop"})
    assert "Mara has no canary running" in (await browser.get("/characters")).text


def test_the_plotted_posterior_is_a_density_peaking_at_the_rate() -> None:
    from adapters.web.canary import POINTS, beta_density

    density = beta_density(30, 10)
    assert abs(sum(density) / POINTS - 1) < 0.01
    assert abs((density.index(max(density)) + 0.5) / POINTS - 0.75) < 0.01
