"""Characters and their LoRA versions (/characters): the persona, every version with its
metadata, evaluation figures (each beside the compared version's), live 👍 rate, and
buttons to use or roll back a version; a live canary above them (adapters/web/canary.py).

The buttons go through the running bot's :class:`bot.loras.LoraSwitcher` — the same
persisted choice as ``charbot loras use`` and ``rollback``, applied to this process at
once and polled by every other process that serves the character."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from adapters.web.canary import end as end_canary
from adapters.web.canary import panels as canary_panels
from adapters.web.context import flash, form_csrf, guarded, render, studio_of
from adapters.web.evaluation import CORRECTED, FIGURES, HELDOUT, Evaluation, Figure
from bot.characters import Character
from bot.errors import CharbotError
from bot.loras import BASE, LoraVersion, list_versions
from engine import EngineError, lora_version
from storage import lora_choices
from storage.errors import StorageError
from storage.version_stats import VersionStats, stats_by_version

PERSONA = ("description", "personality", "scenario", "greeting", "system_prompt")


@dataclass(frozen=True)
class VersionRow:
    """One version as the page lists it."""

    version: LoraVersion
    live: VersionStats | None

    @property
    def meta(self) -> dict[str, Any]:
        return self.version.metadata

    @property
    def evaluation(self) -> Evaluation:
        return Evaluation.of(self.meta)

    @property
    def similarity(self) -> tuple[Figure, Figure]:
        """Held-out and corrected similarity (old versions' evaluations hold only these)."""
        return self.evaluation.figure(HELDOUT), self.evaluation.figure(CORRECTED)

    @property
    def figures(self) -> list[Figure]:
        """The table's figure columns after the held-out similarity, in order."""
        return [self.evaluation.figure(kind) for kind in FIGURES]

    @property
    def val_loss(self) -> Any:
        return (self.meta.get("validation") or {}).get("best_loss")


@dataclass(frozen=True)
class CharacterCard:
    """A character with its versions, newest first."""

    character: Character
    current: str | None  # the version it speaks with now (None: the bare base model)
    versions: list[VersionRow]
    base: VersionStats | None  # live stats of the bare base model
    history: list[lora_choices.Choice] = field(default_factory=list)

    @property
    def persona(self) -> list[tuple[str, str]]:
        found = [(name, getattr(self.character, name)) for name in PERSONA]
        return [(name.replace("_", " "), value) for name, value in found if value]


def _current(core: Any, character: Character) -> str | None:
    if core.loras is not None:
        return core.loras.current(character.name)  # type: ignore[no-any-return]
    return lora_version(character.lora.rstrip("/")) if character.lora else None


async def characters_page(request: Request) -> Response:
    studio = studio_of(request)
    core, store = studio.core, studio.core.store
    loras_dir = studio.config.training.loras_dir
    live = {(s.character.lower(), s.version): s for s in await stats_by_version(store)}
    cards = []
    for character in core.characters:
        key = character.name.lower()
        versions = await asyncio.to_thread(list_versions, loras_dir, character.name)
        rows = [VersionRow(v, live.get((key, v.id))) for v in reversed(versions)]
        history = await lora_choices.history(store, character.name)
        cards.append(
            CharacterCard(
                character, _current(core, character), rows, live.get((key, None)), history[:5]
            )
        )
    return render(
        request,
        "characters.html",
        cards=cards,
        switchable=core.loras is not None,
        base=BASE,
        canaries=await canary_panels(request),
    )


async def _switch(request: Request, rollback: bool) -> Response:
    form = await form_csrf(request)
    core = studio_of(request).core
    name = str(form.get("character", ""))
    if core.loras is None:
        flash(request, "this bot runs without LoRA versions; nothing was switched")
        return RedirectResponse("/characters", status_code=303)
    try:
        if rollback:
            now = await core.loras.rollback(name)
        else:
            now = await core.loras.use(name, str(form.get("version", "")), "studio")
        name = core.character(name).name
    except (CharbotError, EngineError, StorageError) as exc:
        flash(request, str(exc))
    else:
        flash(request, f"{name} now speaks with {now or 'the bare base model'}")
    return RedirectResponse("/characters", status_code=303)


async def use(request: Request) -> Response:
    return await _switch(request, rollback=False)


async def rollback(request: Request) -> Response:
    return await _switch(request, rollback=True)


ROUTES = [
    ("/characters", guarded(characters_page, admin=True), ["GET"]),
    ("/characters/use", guarded(use, admin=True), ["POST"]),
    ("/characters/rollback", guarded(rollback, admin=True), ["POST"]),
    ("/characters/canary", guarded(end_canary, admin=True), ["POST"]),
]
