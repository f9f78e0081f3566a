"""The review queue (/review): rated replies with the prompt they were made from, their
votes, corrections and paraphrases. A reviewer writes a better answer, accepts a user's
correction, adds other ways to ask the question (paraphrases, which the next LoRA's
evaluation asks), or excludes the reply from training; all of it is stored where
`charbot export` reads it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from adapters.web.context import flash, form_csrf, guarded, problem, render, studio_of
from storage.errors import StorageError
from storage.feedback import Selection
from storage.paraphrases import (
    ParaphraseTooLong,
    StoredParaphrase,
    add_paraphrases,
    clean_paraphrases,
    paraphrases_of,
)
from storage.review import exclude, unexclude
from storage.studio import (
    REVIEW_SCORES,
    ReviewRow,
    accept_correction,
    corrections_of,
    review_queue,
    write_reviewed,
)

PAGE_SIZE = 25
REVIEWER = "studio"  # the author of corrections written here (source "reviewer")
LABELS = (
    "net 👎 (score < 0)",
    "any 👎",
    "net 👍",
    "with a correction",
    "excluded",
    "everything rated or corrected",
)
SCORES = dict(zip(REVIEW_SCORES, LABELS, strict=True))  # the store's list, labelled


@dataclass(frozen=True)
class Item:
    """One reply in the queue, ready for the template."""

    row: ReviewRow
    context: list[dict[str, str]]  # the stored prompt without its system message
    system: str  # the persona as it was when the reply was made
    corrections: list[Any]  # storage.studio.CorrectionEntry, oldest first
    paraphrases: list[StoredParaphrase]  # other wordings of its question, oldest first

    @property
    def prefill(self) -> str:
        """The accepted correction, to edit rather than retype."""
        accepted = [c.text for c in self.corrections if c.accepted]
        return accepted[-1] if accepted else ""


class BadFilter(ValueError):
    """A filter value that cannot be used; the message says which and how to fix it."""


def _date(name: str, value: str | None) -> float | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadFilter(f"{name}: {value!r} is not a date; write YYYY-MM-DD") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _selection(query: dict[str, str]) -> Selection:
    version = query.get("version") or None
    return Selection(
        character=query.get("character") or None,
        platform=query.get("platform") or None,
        lora_version="" if version == "base" else version,
        since=_date("since", query.get("since")),
        until=_date("until", query.get("until")),
    )


def _split_prompt(prompt_json: str) -> tuple[str, list[dict[str, str]]]:
    try:
        messages = json.loads(prompt_json)
    except ValueError:
        return "", []
    system = "\n\n".join(m.get("content", "") for m in messages if m.get("role") == "system")
    return system, [m for m in messages if m.get("role") != "system"]


async def review_page(request: Request) -> Response:
    studio = studio_of(request)
    query = {k: v.strip() for k, v in request.query_params.items()}
    score = query.get("score") or "down"
    try:
        if score not in SCORES:
            raise BadFilter(f"score: {score!r}; use one of {', '.join(SCORES)}")
        page = int(query.get("page") or 1)
        if page < 1:
            raise BadFilter("page: must be 1 or more")
        selection = _selection(query)
    except BadFilter as exc:
        return render(request, "review.html", 400, error=str(exc), **_empty(studio, query))
    except ValueError:
        message = "page: must be a whole number"
        return render(request, "review.html", 400, error=message, **_empty(studio, query))

    store = studio.core.store
    total, shown = await review_queue(
        store, selection, score, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
    )
    fixes = await corrections_of(store, [row.id for row in shown])
    wordings = await paraphrases_of(store, [row.id for row in shown])
    items = []
    for row in shown:
        system, context = _split_prompt(row.prompt_json)
        items.append(Item(row, context, system, fixes.get(row.id, []), wordings.get(row.id, [])))
    return render(
        request,
        "review.html",
        items=items,
        total=total,
        page=page,
        pages=max(1, -(-total // PAGE_SIZE)),
        error=None,
        **_choices(studio, query, score),
    )


def _choices(studio: Any, query: dict[str, str], score: str) -> dict[str, Any]:
    return {
        "query": query,
        "score": score,
        "scores": SCORES,
        "characters": [c.name for c in studio.core.characters],
        "here": "/review?" + urlencode({k: v for k, v in query.items() if k != "page" and v}),
    }


def _empty(studio: Any, query: dict[str, str]) -> dict[str, Any]:
    return {"items": [], "total": 0, "page": 1, "pages": 1, **_choices(studio, query, "down")}


def _back(form: Any, message_id: int) -> RedirectResponse:
    target = str(form.get("next") or "/review")
    if not target.startswith("/review"):  # only back into the queue, never off the site
        target = "/review"
    return RedirectResponse(f"{target}#r{message_id}", status_code=303)


async def better(request: Request) -> Response:
    form = await form_csrf(request)
    message_id = int(request.path_params["message_id"])
    text = str(form.get("text", "")).strip()
    if not text:
        return problem("text: write the better answer first")
    try:
        await write_reviewed(studio_of(request).core.store, message_id, REVIEWER, text)
    except StorageError as exc:
        return problem(str(exc), 404)
    flash(request, f"reply {message_id}: your answer is stored as its accepted correction")
    return _back(form, message_id)


async def accept(request: Request) -> Response:
    form = await form_csrf(request)
    message_id = int(request.path_params["message_id"])
    correction_id = int(request.path_params["correction_id"])
    store = studio_of(request).core.store
    if not await accept_correction(store, message_id, correction_id):
        return problem(f"reply {message_id} has no correction {correction_id}", 404)
    flash(request, f"reply {message_id}: correction {correction_id} accepted")
    return _back(form, message_id)


async def paraphrases(request: Request) -> Response:
    form = await form_csrf(request)
    message_id = int(request.path_params["message_id"])
    lines = [line for line in str(form.get("paraphrases", "")).splitlines() if line.strip()]
    if not lines:
        return problem("paraphrases: write other ways to ask the question, one per line")
    store = studio_of(request).core.store
    try:
        added = await add_paraphrases(store, message_id, lines, source="reviewer", author=REVIEWER)
    except ParaphraseTooLong as exc:
        return problem(f"paraphrases: {exc}")
    except StorageError as exc:
        return problem(str(exc), 404)
    already = len(clean_paraphrases(lines)) - added
    kept = f" ({already} stored before)" if already else ""
    flash(request, f"reply {message_id}: {added} other ways to ask it stored{kept}")
    return _back(form, message_id)


async def exclude_reply(request: Request) -> Response:
    form = await form_csrf(request)
    message_id = int(request.path_params["message_id"])
    reason = str(form.get("reason", "")).strip()
    if not reason:
        return problem("reason: say why this reply is kept out of training")
    try:
        await exclude(studio_of(request).core.store, message_id, reason[:500], REVIEWER)
    except StorageError as exc:
        return problem(str(exc), 404)
    flash(request, f"reply {message_id}: excluded from training")
    return _back(form, message_id)


async def include_reply(request: Request) -> Response:
    form = await form_csrf(request)
    message_id = int(request.path_params["message_id"])
    await unexclude(studio_of(request).core.store, message_id)
    flash(request, f"reply {message_id}: back in the training data")
    return _back(form, message_id)


ROUTES = [
    ("/review", guarded(review_page, admin=True), ["GET"]),
    ("/review/{message_id:int}/better", guarded(better, admin=True), ["POST"]),
    (
        "/review/{message_id:int}/accept/{correction_id:int}",
        guarded(accept, admin=True),
        ["POST"],
    ),
    ("/review/{message_id:int}/paraphrases", guarded(paraphrases, admin=True), ["POST"]),
    ("/review/{message_id:int}/exclude", guarded(exclude_reply, admin=True), ["POST"]),
    ("/review/{message_id:int}/include", guarded(include_reply, admin=True), ["POST"]),
]
