"""The reports page over HTTP: the files charbot eval and charbot data stats wrote, served
only from their folders, the stats table, and the per-version chart."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.test_web import XSS
from tests.web_support import Browser, make_version, open_browser, write_config

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32  # the bytes are served as they are


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = write_config(tmp_path)
    data = tmp_path / "data"
    report = data / "reports" / "Mara-20261122-101500"
    report.mkdir(parents=True)
    (report / "report.md").write_text(f"# Mara v0001\n\n| q | a |\n|---|---|\n| {XSS} | x |\n")
    (report / "similarity.png").write_bytes(PNG)
    stats = data / "datasets" / "Mara"
    stats.mkdir(parents=True)
    (stats / "stats.md").write_text("# Mara dataset\n\n120 records\n")
    (stats / "stats.png").write_bytes(PNG)
    (data / "secret.md").write_text("not a report")
    make_version(data / "loras", "Mara", 1, evaluation={"heldout_similarity": 0.31})
    make_version(data / "loras", "Mara", 2, evaluation={"heldout_similarity": 0.62})
    return path


@pytest.fixture
async def browser(config_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Browser]:
    async with open_browser(config_path, monkeypatch) as found:
        yield found


async def test_reports_show_the_eval_and_dataset_files(browser: Browser) -> None:
    page = await browser.get("/reports")
    assert page.status_code == 200
    assert "Mara-20261122-101500" in page.text and "120 records" in page.text
    assert "<script>alert" not in page.text and "&lt;img src=x onerror" in page.text
    images = re.findall(r'<img class="plot" src="([^"]+)"', page.text)
    assert images == [
        "/reports/file/reports/Mara-20261122-101500/similarity.png",
        "/reports/file/datasets/Mara/stats.png",
    ]
    for url in images:
        image = await browser.get(url)
        assert image.status_code == 200 and image.content == PNG
        assert image.headers["content-type"] == "image/png"


async def test_report_files_come_only_from_the_report_folders(browser: Browser) -> None:
    await browser.get("/reports")
    for url in (
        "/reports/file/reports/../secret.md",
        "/reports/file/reports/..%2Fsecret.md",
        "/reports/file/datasets/..%2F..%2Fconfig.toml",
        "/reports/file/loras/Mara/v0001-00000001/metadata.json",
        "/reports/file/reports/Mara-20261122-101500/missing.png",
    ):
        response = await browser.get(url, follow_redirects=True)
        assert response.status_code == 404, url
        assert b"not a report" not in response.content


async def test_the_chart_has_a_point_per_version_with_ratings_and_similarity(
    browser: Browser,
) -> None:
    done = (await browser.say("hello"))[-1][1]
    await browser.post("/api/chat/rate", {"message_id": done["id"], "value": 1})
    page = (await browser.get("/reports")).text
    chart = page[page.index("<svg") : page.index("</svg>")]
    lines = re.findall(r'<polyline points="([^"]*)"', chart)
    up, similarity = ([p for p in line.split(" ") if p] for line in lines)
    assert len(up) == 1  # the base model's live 👍 rate; no version has replies yet
    assert len(similarity) == 2  # v0001 and v0002 were evaluated
    y1, y2 = (float(p.split(",")[1]) for p in similarity)
    assert y2 < y1  # 0.62 is drawn higher than 0.31
    assert "<td>Mara</td><td>1</td><td>1</td><td>1</td><td>0</td>" in page  # charbot stats
