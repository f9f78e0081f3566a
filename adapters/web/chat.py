"""The chat page and its API: send (streamed), rate, correct, regenerate, reset, choose a
character. The web chat is a platform like the others: every message goes through the same
core methods as Telegram's, with ``platform = "web"`` and the browser session as the chat."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from adapters.web.context import PLATFORM, guarded, is_admin, problem, render, studio_of
from adapters.web.security import viewer_id
from adapters.web.target import WebTarget, new_message_id, stream_events
from bot.core import ReplyResult
from bot.errors import CharbotError
from bot.messages import Inbound
from storage.studio import current_conversation, my_votes

MAX_TEXT = 8000  # characters in one message or correction


async def chat_page(request: Request) -> Response:
    studio = studio_of(request)
    viewer = viewer_id(request)
    current = await studio.core.current_character(PLATFORM, viewer)
    lines = await current_conversation(studio.core.store, PLATFORM, viewer, viewer)
    if not lines and current.greeting:  # a new chat opens with the greeting, as elsewhere
        await studio.core.greet(
            PLATFORM, viewer, None, studio.user_name, WebTarget(), only_new=True
        )
        lines = await current_conversation(studio.core.store, PLATFORM, viewer, viewer)
    return render(
        request,
        "chat.html",
        characters=studio.core.characters,
        current=current,
        lines=lines,
    )


async def _json(request: Request) -> dict[str, Any] | Response:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        return problem("the request body is not JSON; send a JSON object")
    if not isinstance(body, dict):
        return problem("the request body must be a JSON object")
    return body


def _text(body: dict[str, Any], key: str) -> str | Response:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        return problem(f"{key}: write some text first")
    if len(value) > MAX_TEXT:
        return problem(f"{key}: {len(value)} characters is too long; keep it under {MAX_TEXT}")
    return value


def _message_id(body: dict[str, Any], key: str = "message_id") -> str | Response:
    value = body.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        return problem(f"{key}: expected the id of a message shown in this chat")
    return value


async def _json_about_message(request: Request) -> tuple[dict[str, Any], str] | Response:
    """The JSON body of a request about one shown message, and that message's id."""
    body = await _json(request)
    if isinstance(body, Response):
        return body
    message_id = _message_id(body)
    if isinstance(message_id, Response):
        return message_id
    return body, message_id


def _sse(target: WebTarget, work: Any) -> StreamingResponse:
    return StreamingResponse(
        stream_events(target, work),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


def _stopping(request: Request) -> Response | None:
    if studio_of(request).stopping:
        return problem("the bot is shutting down; send it again once it is back", 503)
    return None


async def send(request: Request) -> Response:
    if refused := _stopping(request):
        return refused
    body = await _json(request)
    if isinstance(body, Response):
        return body
    text = _text(body, "text")
    if isinstance(text, Response):
        return text
    studio, viewer = studio_of(request), viewer_id(request)
    inbound = Inbound(
        platform=PLATFORM,
        chat_id=viewer,
        message_id=new_message_id("u"),
        author_id=viewer,
        author_name=studio.user_name,
        text=text,
        private=True,  # one viewer, one chat with the bot
        exempt=is_admin(request),  # the studio's operator, as the admins on the platforms
    )
    target = WebTarget()

    async def work() -> ReplyResult | None:
        task = await studio.core.receive(inbound, target)
        return None if task is None else await task

    return _sse(target, work())


async def regenerate(request: Request) -> Response:
    """🔁: a new sibling written into the same bubble (the core's swipes, as on Telegram);
    the bubble then pages through the siblings with ◀ ▶ and the conversation goes on from
    the one shown."""
    if refused := _stopping(request):
        return refused
    parsed = await _json_about_message(request)
    if isinstance(parsed, Response):
        return parsed
    _, message_id = parsed
    studio, viewer = studio_of(request), viewer_id(request)
    core = studio.core
    if await core.reply_character(PLATFORM, viewer, message_id) is None:
        return problem("message_id: not a reply in this chat", 404)
    target = WebTarget()

    async def work() -> ReplyResult | None:
        in_place = core.swipes.in_place(target, PLATFORM, viewer, message_id)
        result = await core.regenerate(PLATFORM, viewer, message_id, in_place)
        shown = await core.swipes.regenerated(PLATFORM, viewer, message_id)
        if shown is not None:
            target.events.put_nowait(("swipe", {"index": shown.index, "count": shown.count}))
        return result

    return _sse(target, work())


async def swipe(request: Request) -> Response:
    """◀ ▶: show the sibling ``step`` places on in the bubble; votes then land on it."""
    parsed = await _json_about_message(request)
    if isinstance(parsed, Response):
        return parsed
    body, message_id = parsed
    step = body.get("step")
    if step not in (-1, 1) or isinstance(step, bool):
        return problem("step: use -1 (◀) or 1 (▶)")
    studio, viewer = studio_of(request), viewer_id(request)
    shown = await studio.core.swipes.page(PLATFORM, viewer, message_id, step)
    if shown is None:
        return problem("message_id: not a reply in this chat", 404)
    votes = await my_votes(studio.core.store, [shown.sibling.id], viewer)
    return JSONResponse(
        {
            "text": shown.sibling.text,
            "character": shown.sibling.character,
            "index": shown.index,
            "count": shown.count,
            "vote": votes.get(shown.sibling.id, 0),
        }
    )


async def rate(request: Request) -> Response:
    parsed = await _json_about_message(request)
    if isinstance(parsed, Response):
        return parsed
    body, message_id = parsed
    value = body.get("value")
    if value not in (1, -1, 0) or isinstance(value, bool):
        return problem("value: use 1 (👍), -1 (👎) or 0 (remove your vote)")
    studio, viewer = studio_of(request), viewer_id(request)
    if not await studio.core.vote(PLATFORM, viewer, message_id, viewer, value):
        return problem("message_id: not a reply in this chat", 404)
    return JSONResponse({"ok": True, "value": value})


async def correct(request: Request) -> Response:
    body = await _json(request)
    if isinstance(body, Response):
        return body
    message_id = _message_id(body)
    text = _text(body, "text")
    for checked in (message_id, text):
        if isinstance(checked, Response):
            return checked
    studio, viewer = studio_of(request), viewer_id(request)
    if not await studio.core.correct(PLATFORM, viewer, str(message_id), viewer, str(text)):
        return problem("message_id: not a reply in this chat", 404)
    return JSONResponse({"ok": True})


async def reset(request: Request) -> Response:
    studio, viewer = studio_of(request), viewer_id(request)
    await studio.core.reset(PLATFORM, viewer)
    current = await studio.core.current_character(PLATFORM, viewer)
    greeting = await _greeting(studio, viewer) if current.greeting else None
    return JSONResponse({"ok": True, "greeting": greeting})


async def choose_character(request: Request) -> Response:
    body = await _json(request)
    if isinstance(body, Response):
        return body
    name = body.get("name")
    if not isinstance(name, str):
        return problem("name: expected a character's name")
    studio, viewer = studio_of(request), viewer_id(request)
    try:
        character = await studio.core.set_character(PLATFORM, viewer, name)
    except CharbotError as exc:
        return problem(str(exc))
    greeting = await _greeting(studio, viewer) if character.greeting else None
    return JSONResponse({"character": character.name, "greeting": greeting})


async def _greeting(studio: Any, viewer: str) -> Any:
    """Show the current character's greeting in this chat; the bubble's data."""
    target = WebTarget()
    await studio.core.greet(PLATFORM, viewer, None, studio.user_name, target)
    shown = [data for event, data in _drain(target) if event == "text"]
    return shown[-1] if shown else None


def _drain(target: WebTarget) -> list[tuple[str, Any]]:
    found = []
    while not target.events.empty():
        found.append(target.events.get_nowait())
    return found


# With a password set, these are the only routes [web] public_chat = true opens; what makes
# the model write or stores text is metered per client address.
ROUTES = [
    ("/", guarded(chat_page, public=True), ["GET"]),
    ("/api/chat/send", guarded(send, public=True, metered=True), ["POST"]),
    ("/api/chat/regenerate", guarded(regenerate, public=True, metered=True), ["POST"]),
    ("/api/chat/swipe", guarded(swipe, public=True), ["POST"]),
    ("/api/chat/rate", guarded(rate, public=True), ["POST"]),
    ("/api/chat/correct", guarded(correct, public=True, metered=True), ["POST"]),
    ("/api/chat/reset", guarded(reset, public=True), ["POST"]),
    ("/api/chat/character", guarded(choose_character, public=True), ["POST"]),
]
