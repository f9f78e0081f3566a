"""Reports (/reports): what ``charbot eval`` and ``charbot data stats`` wrote (the same
markdown and PNG files), the feedback counts of ``charbot stats``, and per character two
charts over its versions in the order they were made: 👍 rate and held-out similarity, and
the evaluation figures of metadata.json (paraphrase recall, leak rate, distinct rate,
persona score)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from adapters.web.context import guarded, problem, render, studio_of
from adapters.web.evaluation import (
    DISTINCT,
    FIGURES,
    HELDOUT,
    LEAK,
    PARAPHRASE,
    PERSONA,
    Evaluation,
)
from adapters.web.markdown import to_html
from bot.loras import BASE, LoraVersion, list_versions
from storage.feedback import character_stats
from storage.version_stats import stats_by_version

MAX_MARKDOWN = 200_000  # characters of one report shown; the file has the rest
SERVED = {".png": "image/png", ".md": "text/markdown; charset=utf-8"}


@dataclass(frozen=True)
class Report:
    """A folder of results: its markdown and plots."""

    kind: str  # "reports" (charbot eval) | "datasets" (charbot data stats)
    title: str
    markdown: str
    images: list[str]  # paths under the kind's root, for /reports/file/<kind>/<path>

    @property
    def html(self) -> Markup:
        """The markdown as HTML, raw HTML in it escaped."""
        return to_html(self.markdown)


@dataclass(frozen=True)
class Series:
    """One line of a chart: a value (0–1) or None for each of the chart's points."""

    label: str
    colour: str
    values: list[float | None]
    percent: bool = True  # dot tooltips as "83%" (else "0.470")

    def text(self, value: float) -> str:
        return f"{value * 100:.0f}%" if self.percent else f"{value:.3f}"


@dataclass(frozen=True)
class Chart:
    """One character's versions in the order they were made, as lines on a 0–1 scale,
    drawn as inline SVG."""

    character: str
    title: str
    points: list[tuple[str, str]]  # (a version id or "base", its creation date or "")
    series: list[Series]
    width: int = 440  # two side by side from a 1000 px window
    height: int = 220
    pad: int = 44  # room for the axis labels and the last version's name

    def x(self, index: int) -> float:
        span = max(1, len(self.points) - 1)
        return self.pad + index * (self.width - 2 * self.pad) / span

    def y(self, value: float) -> float:
        value = min(1.0, max(0.0, value))  # a figure off the scale is drawn at its edge
        return self.height - self.pad - value * (self.height - 2 * self.pad)

    def line(self, series: Series) -> str:
        """SVG polyline points of the values that exist."""
        return " ".join(f"{x:.1f},{y:.1f}" for x, y, _label, _value in self.dots(series))

    def dots(self, series: Series) -> list[tuple[float, float, str, float]]:
        """(x, y, version, value) of each value that exists."""
        return [
            (self.x(i), self.y(value), self.points[i][0], value)
            for i, value in enumerate(series.values)
            if value is not None
        ]

    def tick(self, value: float) -> str:
        return f"{value * 100:.0f}%" if all(s.percent for s in self.series) else f"{value:.1f}"


# The evaluation chart's lines, in the order of the Characters table's columns.
EVALUATION_COLOURS = {
    PARAPHRASE: "#7a3fb0",
    LEAK: "#c0392b",
    DISTINCT: "#1f8a8a",
    PERSONA: "#b07800",
}


def _read(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(cannot read {path.name}: {exc.strerror})"
    return text if len(text) <= MAX_MARKDOWN else text[:MAX_MARKDOWN] + "\n… (cut)"


def _collect(root: Path, kind: str, name: str) -> list[Report]:
    """Every ``root/<folder>/<name>`` with the PNGs beside it, newest first."""
    if not root.is_dir():
        return []
    found = sorted(root.glob(f"*/{name}"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [
        Report(
            kind,
            markdown.parent.name,
            _read(markdown),
            [str(png.relative_to(root)) for png in sorted(markdown.parent.glob("*.png"))],
        )
        for markdown in found
    ]


def _evaluation_chart(character: str, versions: list[LoraVersion]) -> Chart | None:
    """Paraphrase recall, leak rate, distinct rate and persona score per version; None
    when no version has any of them."""
    evaluations = [Evaluation.of(v.metadata) for v in versions]
    series = []
    for kind in FIGURES:
        values = [e.value(kind) for e in evaluations]
        if any(value is not None for value in values):
            label = kind.label if kind.higher_is_better else f"{kind.label} (lower is better)"
            series.append(Series(label, EVALUATION_COLOURS[kind], values))
    if not series:
        return None
    points = [(v.id, v.created[:10]) for v in versions]
    return Chart(character, "evaluation figures", points, series)


async def _charts(studio: Any) -> list[list[Chart]]:
    """Per character: the 👍 rate and similarity chart, then the evaluation figures'."""
    live = {(s.character.lower(), s.version): s for s in await stats_by_version(studio.core.store)}
    charts = []
    for character in studio.core.characters:
        key = character.name.lower()
        versions = await asyncio.to_thread(
            list_versions, studio.config.training.loras_dir, character.name
        )
        base = live.get((key, None))
        if not versions and base is None:
            continue
        rated = [base] + [live.get((key, v.id)) for v in versions]
        up_rates = [s.up_rate if s else None for s in rated]
        similarity = [None] + [Evaluation.of(v.metadata).value(HELDOUT) for v in versions]
        feedback = Chart(
            character.name,
            "👍 rate and similarity",
            [(BASE, "")] + [(v.id, v.created[:10]) for v in versions],
            [
                Series("👍 rate (live ratings)", "#2a7d2a", up_rates),
                Series("held-out similarity", "#2d5fc4", similarity, False),
            ],
        )
        figures = _evaluation_chart(character.name, versions)
        charts.append([feedback] + ([figures] if figures else []))
    return charts


async def reports_page(request: Request) -> Response:
    studio = studio_of(request)
    training = studio.config.training
    evaluations = await asyncio.to_thread(_collect, training.reports_dir, "reports", "report.md")
    datasets = await asyncio.to_thread(_collect, training.datasets_dir, "datasets", "stats.md")
    return render(
        request,
        "reports.html",
        charts=await _charts(studio),
        evaluations=evaluations,
        datasets=datasets,
        counts=await character_stats(studio.core.store),
    )


async def report_file(request: Request) -> Response:
    """A PNG or markdown file of a report; nothing outside the two report folders."""
    training = studio_of(request).config.training
    roots = {"reports": training.reports_dir, "datasets": training.datasets_dir}
    root = roots.get(request.path_params["kind"])
    if root is None:
        return problem("no such report folder; use reports or datasets", 404)
    root = root.resolve()
    path = (root / request.path_params["path"]).resolve()
    if not path.is_relative_to(root) or path.suffix not in SERVED or not path.is_file():
        return problem("no such report file", 404)
    return FileResponse(path, media_type=SERVED[path.suffix])


ROUTES = [
    ("/reports", guarded(reports_page, admin=True), ["GET"]),
    ("/reports/file/{kind}/{path:path}", guarded(report_file, admin=True), ["GET"]),
]
