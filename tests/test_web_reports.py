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
    table = f"| q | a |\n|---|---|\n| {XSS} | x |\n"
    (report / "report.md").write_text(f"# Mara v0001\n\n{table}\n[evil](javascript:alert(1))\n")
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
    # The markdown is shown as HTML: a heading and a table, not "# Mara v0001" and pipes.
    assert "<h1>Mara v0001</h1>" in page.text and "<th>q</th>" in page.text
    assert "| q | a |" not in page.text
    assert 'href="javascript:' not in page.text  # an unsafe link stays text
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
    start = page.index('<svg class="chart"')
    chart = page[start : page.index("</svg>", start)]
    lines = re.findall(r'<polyline points="([^"]*)"', chart)
    up, similarity = ([p for p in line.split(" ") if p] for line in lines)
    assert len(up) == 1  # the base model's live 👍 rate; no version has replies yet
    assert len(similarity) == 2  # v0001 and v0002 were evaluated
    y1, y2 = (float(p.split(",")[1]) for p in similarity)
    assert y2 < y1  # 0.62 is drawn higher than 0.31
    assert "<td>Mara</td><td>1</td><td>1</td><td>1</td><td>0</td>" in page  # charbot stats


def charts_of(page: str) -> list[str]:
    """The SVG of each chart on the page, in order."""
    return re.findall(r'<svg class="chart".*?</svg>', page, re.S)


async def test_the_evaluation_chart_draws_each_figure_per_version(browser: Browser) -> None:
    # v0001 and v0002 hold only similarities (old evaluations): no figures to chart yet.
    page = (await browser.get("/reports")).text
    assert len(charts_of(page)) == 1
    assert "No evaluation figures in the versions' metadata yet." in page

    loras = browser.config.training.loras_dir
    make_version(
        loras,
        "Mara",
        3,
        evaluation={
            "heldout_similarity": 0.5,
            "paraphrase_recall": 0.5,
            "leak_rate": 0.1,
            "distinct_rate": 0.9,
            "persona_score": 0.67,
        },
    )
    make_version(
        loras,
        "Mara",
        4,
        evaluation={
            "paraphrase_recall": 0.75,
            "leak_rate": 0.0,
            "distinct_rate": None,  # null: no dot, the line goes on past it
            "persona_score": 0.83,
            "baseline": {"paraphrase_recall": 0.5},
        },
    )
    page = (await browser.get("/reports")).text
    feedback, figures = charts_of(page)
    assert "No evaluation figures" not in page
    assert "v0003-00000003: held-out similarity 0.500" in feedback
    lines = re.findall(r'<polyline points="([^"]*)"', figures)
    paraphrase, leak, distinct, persona = ([p for p in line.split(" ") if p] for line in lines)
    assert (len(paraphrase), len(leak), len(distinct), len(persona)) == (2, 2, 1, 2)
    xs = [float(point.split(",")[0]) for point in paraphrase]
    assert xs[0] < xs[1]  # one point per version, in the order they were made
    (y_first, y_second) = (float(point.split(",")[1]) for point in paraphrase)
    assert y_second < y_first  # 75% is drawn above 50%
    titles = re.findall(r"<title>([^<]+)</title>", figures)
    assert titles == [
        "v0003-00000003: paraphrase recall 50%",
        "v0004-00000004: paraphrase recall 75%",
        "v0003-00000003: leak rate (lower is better) 10%",
        "v0004-00000004: leak rate (lower is better) 0%",
        "v0003-00000003: distinct rate 90%",
        "v0003-00000003: persona score 67%",
        "v0004-00000004: persona score 83%",
    ]
    assert "v0001 11-21" in figures and "v0004 11-24" in figures  # every version is on the axis
