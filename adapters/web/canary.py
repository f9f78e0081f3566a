"""The canaries on the characters page: each live canary's versions and share, the
posterior of each version's 👍 rate as a plot, the decision by [loop]'s rule and why, and
buttons to promote, roll back or stop it.

The figures are `charbot loras compare`'s (bot.canary_admin.judge); the buttons end the
canary as `charbot loras promote|rollback|stop` do (bot.canary_admin.finish), then apply
the change to this process at once — every other process follows within its poll.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from adapters.web.context import flash, form_csrf, studio_of
from bot.canary_admin import ENDINGS, finish, judge
from bot.compare import Comparison, Tally
from bot.errors import CharbotError
from bot.loras import BASE
from storage import canaries
from storage.canaries import Canary
from storage.errors import StorageError

WIDTH, HEIGHT, POINTS = 360, 120, 160
COLOURS = {"current": "#6b7280", "candidate": "#2563eb"}


@dataclass(frozen=True)
class CanaryPanel:
    """One live canary as the page shows it."""

    canary: Canary
    comparison: Comparison
    plot: Markup  # inline SVG of both posteriors

    @property
    def current(self) -> str:
        return self.canary.baseline or BASE


async def panels(request: Request) -> dict[str, CanaryPanel]:
    """The live canaries by lower-case character name, each judged on what is stored now."""
    studio = studio_of(request)
    store, loop = studio.core.store, studio.config.loop
    found = {}
    for key, live in (await canaries.live_canaries(store)).items():
        comparison = await judge(store, live, loop)
        found[key.lower()] = CanaryPanel(live, comparison, posterior_plot(comparison))
    return found


def beta_density(up: int, down: int, points: int = POINTS) -> list[float]:
    """Beta(1 + up, 1 + down) on ``points`` evenly spaced rates in (0, 1)."""
    a, b = 1 + up, 1 + down
    norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    xs = [(i + 0.5) / points for i in range(points)]
    return [math.exp(norm + (a - 1) * math.log(x) + (b - 1) * math.log1p(-x)) for x in xs]


def posterior_plot(comparison: Comparison) -> Markup:
    """Both versions' 👍-rate posteriors on one axis, as inline SVG (no script, no file)."""
    curves = {
        "current": comparison.current_tally,
        "candidate": comparison.candidate_tally,
    }
    densities = {k: beta_density(t.up, t.down) for k, t in curves.items()}
    top = max(max(d) for d in densities.values()) or 1.0
    body = [
        f'<line x1="0" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}" stroke="#9ca3af"/>',
        *(
            f'<text x="{WIDTH * q:.0f}" y="{HEIGHT + 14}" font-size="10" '
            f'text-anchor="middle">{q:.0%}</text>'
            for q in (0, 0.25, 0.5, 0.75, 1)
        ),
    ]
    for row, (label, density) in enumerate(densities.items()):
        step = WIDTH / len(density)
        path = " ".join(
            f"{(i + 0.5) * step:.1f},{HEIGHT - HEIGHT * 0.95 * y / top:.1f}"
            for i, y in enumerate(density)
        )
        colour = COLOURS[label]
        body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        body.append(
            f'<text x="4" y="{12 + 12 * row}" font-size="10" fill="{colour}">'
            f"{label}: {_legend(curves[label])}</text>"
        )
    return Markup(
        f'<svg class="posterior" viewBox="0 -2 {WIDTH} {HEIGHT + 18}" width="{WIDTH}" '
        f'height="{HEIGHT + 20}" role="img" aria-label="posterior of each version\'s 👍 rate">'
        + "".join(body)
        + "</svg>"
    )


def _legend(tally: Tally) -> str:
    rate = f"{tally.rate:.0%}" if tally.rate is not None else "no votes"
    return f"{rate} of {tally.ratings} ({tally.people} people)"


async def end(request: Request) -> Response:
    """A button: promote, roll back or stop the character's canary."""
    form = await form_csrf(request)
    core = studio_of(request).core
    name, action = str(form.get("character", "")), str(form.get("action", ""))
    if action not in ENDINGS:
        flash(request, f"unknown canary action {action!r}; use one of {', '.join(ENDINGS)}")
        return RedirectResponse("/characters", status_code=303)
    try:
        name = core.character(name).name
        live = await finish(core.store, name, action, "studio")
        if core.loras is not None:
            await core.loras.apply()  # this process at once; the others within their poll
    except (CharbotError, StorageError) as exc:
        flash(request, str(exc))
    else:
        kept = live.version if action == "promote" else live.baseline or BASE
        flash(request, f"{name}: canary {ENDINGS[action]}; everyone meets {kept}")
    return RedirectResponse("/characters", status_code=303)
