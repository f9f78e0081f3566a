"""Reports (/reports): what ``charbot eval`` and ``charbot data stats`` wrote (the same
markdown and PNG files), the feedback counts of ``charbot stats``, and a chart of each
character's 👍 rate and evaluation similarity per version, in the order they were made."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from adapters.web.context import guarded, problem, render, studio_of
from bot.loras import BASE, list_versions
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


@dataclass(frozen=True)
class Point:
    label: str  # a version id, or "base"
    created: str
    up_rate: float | None
    similarity: float | None


@dataclass(frozen=True)
class Chart:
    """One character's versions as two lines on a 0–1 scale, drawn as inline SVG."""

    character: str
    points: list[Point]
    width: int = 640
    height: int = 220
    pad: int = 44  # room for the axis labels and the last version's name

    def x(self, index: int) -> float:
        span = max(1, len(self.points) - 1)
        return self.pad + index * (self.width - 2 * self.pad) / span

    def y(self, value: float) -> float:
        return self.height - self.pad - value * (self.height - 2 * self.pad)

    def line(self, attribute: str) -> str:
        """SVG polyline points of the values that exist."""
        return " ".join(
            f"{self.x(i):.1f},{self.y(getattr(p, attribute)):.1f}"
            for i, p in enumerate(self.points)
            if getattr(p, attribute) is not None
        )

    def dots(self, attribute: str) -> list[tuple[float, float, float]]:
        return [
            (self.x(i), self.y(getattr(p, attribute)), getattr(p, attribute))
            for i, p in enumerate(self.points)
            if getattr(p, attribute) is not None
        ]


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


async def _charts(studio: Any) -> list[Chart]:
    live = {(s.character.lower(), s.version): s for s in await stats_by_version(studio.core.store)}
    charts = []
    for character in studio.core.characters:
        key = character.name.lower()
        versions = await asyncio.to_thread(
            list_versions, studio.config.training.loras_dir, character.name
        )
        base = live.get((key, None))
        points = [Point(BASE, "", base.up_rate if base else None, None)]
        for version in versions:
            stats = live.get((key, version.id))
            evaluation = version.metadata.get("evaluation") or {}
            similarity = evaluation.get("heldout_similarity")
            points.append(
                Point(
                    version.id,
                    version.created[:10],
                    stats.up_rate if stats else None,
                    float(similarity) if isinstance(similarity, int | float) else None,
                )
            )
        if len(points) > 1 or base is not None:
            charts.append(Chart(character.name, points))
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
