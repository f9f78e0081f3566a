"""Memory (/memory): each conversation's current summary and what the characters know about
people (their notes), each to edit or delete. The same SQL as ``charbot memory``
(storage.memory); a running bot reads summaries and notes per reply, so a change here
enters the next reply in every process on the database."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from adapters.web.context import flash, form_csrf, guarded, problem, render, studio_of
from storage import memory as sql


async def memory_page(request: Request) -> Response:
    store = studio_of(request).core.store

    def read(conn):  # type: ignore[no-untyped-def]
        return sql.current_summaries(conn), sql.list_notes(conn)

    summaries, notes = await store.read(read)
    return render(request, "memory.html", summaries=summaries, notes=notes)


def _back(anchor: str) -> RedirectResponse:
    return RedirectResponse(f"/memory#{anchor}", status_code=303)


async def edit_summary(request: Request) -> Response:
    form = await form_csrf(request)
    summary_id = int(request.path_params["summary_id"])
    text = str(form.get("text", "")).strip()
    if not text:
        return problem("text: write the summary, or delete it to have the bot write it again")
    store = studio_of(request).core.store
    if not await store.write(lambda conn: sql.set_summary_text(conn, summary_id, text)):
        return problem(f"there is no summary {summary_id}; reload the page", 404)
    flash(request, f"summary {summary_id}: your text is the story so far")
    return _back(f"s{summary_id}")


async def delete_summary(request: Request) -> Response:
    await form_csrf(request)
    conversation_id = int(request.path_params["conversation_id"])
    store = studio_of(request).core.store
    removed = await store.write(lambda conn: sql.delete_summaries(conn, conversation_id))
    if not removed:
        return problem(f"conversation {conversation_id} has no summary; reload the page", 404)
    flash(
        request,
        f"conversation {conversation_id}: summary deleted; the bot summarises it again from "
        "its start",
    )
    return _back("summaries")


async def edit_note(request: Request) -> Response:
    form = await form_csrf(request)
    note_id = int(request.path_params["note_id"])
    text = " ".join(str(form.get("text", "")).split())
    limit = studio_of(request).config.memory.note_chars
    if not text:
        return problem("text: write the note, or delete it")
    if len(text) > limit:
        return problem(f"text: {len(text)} characters; a note holds at most {limit}")
    store = studio_of(request).core.store
    if not await store.write(lambda conn: sql.set_note_text(conn, note_id, text)):
        return problem(f"there is no note {note_id}; reload the page", 404)
    flash(request, f"note #{note_id} saved")
    return _back(f"n{note_id}")


async def delete_note(request: Request) -> Response:
    await form_csrf(request)
    note_id = int(request.path_params["note_id"])
    store = studio_of(request).core.store
    if not await store.write(lambda conn: sql.delete_notes(conn, [note_id])):
        return problem(f"there is no note {note_id}; reload the page", 404)
    flash(request, f"note #{note_id} deleted")
    return _back("notes")


ROUTES = [
    ("/memory", guarded(memory_page, admin=True), ["GET"]),
    ("/memory/summary/{summary_id:int}", guarded(edit_summary, admin=True), ["POST"]),
    (
        "/memory/conversation/{conversation_id:int}/delete",
        guarded(delete_summary, admin=True),
        ["POST"],
    ),
    ("/memory/note/{note_id:int}", guarded(edit_note, admin=True), ["POST"]),
    ("/memory/note/{note_id:int}/delete", guarded(delete_note, admin=True), ["POST"]),
]
