"""A local fake Telegram Bot API server for end-to-end tests of the real python-telegram-bot.

It listens on 127.0.0.1 (a random port), answers ``POST /bot{token}/{method}`` like the real
Bot API (form-encoded parameters, ``{"ok": true, "result": ...}``), keeps the messages the bot
sent, and records every request. Tests push updates (a user's message, a button press, a
reaction) into the long-poll queue that ``getUpdates`` serves.

Like the real server it rejects what Telegram rejects, so a bug shows up as a failed call:
HTML that does not parse, text over 4096 characters, an edit that changes nothing, an
unknown method, a wrong token.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from aiohttp import web

TEXT_LIMIT = 4096
BOT_ID = 7000001
BOT_USERNAME = "charbot_test_bot"
ALLOWED_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre"}
ALLOWED_TAGS |= {"tg-spoiler", "span", "blockquote", "tg-emoji"}
_TAG = re.compile(r"</?[a-zA-Z][\w-]*(\s[^<>]*)?>")
_ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);")
MAX_POLL_WAIT = 1.0  # seconds a getUpdates call waits at most, whatever timeout it asks for


@dataclass
class Recorded:
    """One request the fake received: the Bot API method and its decoded parameters."""

    method: str
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


class TelegramApiError(Exception):
    """An error answer: ``{"ok": false, "error_code": ..., "description": ...}``."""

    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.retry_after = retry_after

    def response(self) -> web.Response:
        body: dict[str, Any] = {
            "ok": False,
            "error_code": self.code,
            "description": self.description,
        }
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return web.json_response(body, status=self.code)


class _VisibleText(HTMLParser):
    """Telegram's HTML parse mode: the visible text, or an error for what Telegram refuses."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED_TAGS:
            raise TelegramApiError(400, f"Bad Request: can't parse entities: unsupported tag {tag}")
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            raise TelegramApiError(400, f"Bad Request: can't parse entities: unexpected </{tag}>")
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def visible_text(text: str, parse_mode: str | None) -> str:
    """What a user would see of ``text`` sent with ``parse_mode`` (only HTML is supported)."""
    if parse_mode is None:
        return text
    if parse_mode != "HTML":
        raise TelegramApiError(400, f"Bad Request: the fake only speaks HTML, not {parse_mode}")
    for at in (m.start() for m in re.finditer("<", text)):
        if not _TAG.match(text, at):
            raise TelegramApiError(400, f"Bad Request: can't parse entities: bare < at {at}")
    for at in (m.start() for m in re.finditer("&", text)):
        if not _ENTITY.match(text, at):
            raise TelegramApiError(400, f"Bad Request: can't parse entities: bare & at {at}")
    parser = _VisibleText()
    parser.feed(text)
    parser.close()
    if parser.open:
        raise TelegramApiError(400, f"Bad Request: can't parse entities: <{parser.open[-1]}> open")
    return "".join(parser.parts)


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class FakeTelegram:
    """The fake server. ``await start()``, point the bot at ``base_url``, ``await close()``."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.requests: list[Recorded] = []
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}  # (chat, id) -> Message
        self.bot_user = {
            "id": BOT_ID,
            "is_bot": True,
            "first_name": "Charbot",
            "username": BOT_USERNAME,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.member_status = "member"  # what getChatMember says about any user
        self.send_delay = 0.0  # seconds sendMessage takes (a slow Bot API)
        self.edit_delay = 0.0  # seconds editMessageText takes
        self._failures: dict[str, list[TelegramApiError]] = {}
        self._updates: list[dict[str, Any]] = []
        self.confirmed = 0  # the highest update_id confirmed by a getUpdates offset
        self.update_ids: dict[int, int] = {}  # message_id -> update_id of its newest push
        self._new_update = asyncio.Event()
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(100)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- server --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        self._new_update.set()  # release a waiting getUpdates
        if self._runner is not None:
            await self._runner.cleanup()

    async def _dispatch(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return TelegramApiError(401, "Unauthorized").response()
        method = request.match_info["method"]
        params = {key: _decode(value) for key, value in (await request.post()).items()}
        self.requests.append(Recorded(method, params))
        handler = getattr(self, f"_api_{method}", None)
        try:
            if handler is None:
                raise TelegramApiError(404, "Not Found: method not found")
            failures = self._failures.get(method)
            if failures:
                raise failures.pop(0)
            result = await handler(params)
        except TelegramApiError as exc:
            return exc.response()
        return web.json_response({"ok": True, "result": result})

    # -- test controls -------------------------------------------------------------------

    def fail_next(
        self, method: str, code: int = 429, description: str = "", retry_after: int | None = None
    ) -> None:
        """Answer the next call of ``method`` with an error (a 429 flood wait by default)."""
        if code == 429 and not description:
            description = f"Too Many Requests: retry after {retry_after}"
        self._failures.setdefault(method, []).append(
            TelegramApiError(code, description, retry_after)
        )

    def push(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue a raw update (its ``update_id`` is filled in) for the next getUpdates."""
        update = {"update_id": next(self._update_ids), **update}
        if "message" in update and "message_id" in update["message"]:
            self.update_ids[update["message"]["message_id"]] = update["update_id"]
        self._updates.append(update)
        self._new_update.set()
        return update

    def user(self, user_id: int = 501, name: str = "Alice") -> dict[str, Any]:
        return {"id": user_id, "is_bot": False, "first_name": name, "language_code": "en"}

    def chat(self, chat_id: int, *, group: bool = False, forum: bool = False) -> dict[str, Any]:
        if group:
            return {"id": chat_id, "type": "supergroup", "title": "Test group", "is_forum": forum}
        return {"id": chat_id, "type": "private", "first_name": "Alice"}

    def user_says(
        self,
        text: str,
        *,
        user_id: int = 501,
        name: str = "Alice",
        chat_id: int | None = None,
        group: bool = False,
        reply_to: int | None = None,
        thread_id: int | None = None,
    ) -> dict[str, Any]:
        """A user sends ``text``; returns the Message. Commands and @mentions get entities,
        as the real server adds them; ``reply_to`` is the id of a message in that chat."""
        chat_id = chat_id if chat_id is not None else user_id
        message: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": self.chat(chat_id, group=group, forum=thread_id is not None),
            "from": self.user(user_id, name),
            "text": text,
        }
        entities = _entities(text)
        if entities:
            message["entities"] = entities
        if reply_to is not None:
            message["reply_to_message"] = self.messages[(chat_id, reply_to)]
        if thread_id is not None:
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
        self.messages[(chat_id, message["message_id"])] = message
        self.push({"message": message})
        return message

    def press(
        self, message_id: int, data: str, *, chat_id: int, user_id: int = 501
    ) -> dict[str, Any]:
        """A user presses an inline button of the bot's message ``message_id``."""
        query = {
            "id": f"cq{next(self._update_ids)}",
            "from": self.user(user_id),
            "message": self.messages[(chat_id, message_id)],
            "chat_instance": "ci-1",
            "data": data,
        }
        return self.push({"callback_query": query})

    def react(
        self,
        message_id: int,
        *,
        chat_id: int,
        new: list[str],
        old: list[str] = (),  # type: ignore[assignment]
        user_id: int = 501,
        group: bool = True,
    ) -> dict[str, Any]:
        """A user changes their reactions on ``message_id`` from ``old`` to ``new`` emoji."""
        return self.push(
            {
                "message_reaction": {
                    "chat": self.chat(chat_id, group=group),
                    "message_id": message_id,
                    "user": self.user(user_id),
                    "date": int(time.time()),
                    "old_reaction": [{"type": "emoji", "emoji": e} for e in old],
                    "new_reaction": [{"type": "emoji", "emoji": e} for e in new],
                }
            }
        )

    def calls(self, method: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method]

    def bot_messages(self, chat_id: int | None = None) -> list[dict[str, Any]]:
        """The bot's messages as they look now (after every edit), oldest first."""
        return [
            m
            for (chat, _), m in sorted(self.messages.items(), key=lambda kv: kv[0][1])
            if m["from"]["id"] == BOT_ID and (chat_id is None or chat == chat_id)
        ]

    # -- the Bot API -----------------------------------------------------------------------

    async def _api_getMe(self, params: dict[str, Any]) -> Any:
        return self.bot_user

    async def _api_deleteWebhook(self, params: dict[str, Any]) -> Any:
        return True

    async def _api_setMyCommands(self, params: dict[str, Any]) -> Any:
        return True

    async def _api_getUpdates(self, params: dict[str, Any]) -> Any:
        offset = int(params.get("offset") or 0)
        # An offset confirms every update before it: Telegram forgets them.
        self.confirmed = max(self.confirmed, offset - 1)
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        if not self._updates:
            self._new_update.clear()
            wait = min(float(params.get("timeout") or 0), MAX_POLL_WAIT)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._new_update.wait(), wait)
        return self._updates[: int(params.get("limit") or 100)]

    async def _api_sendChatAction(self, params: dict[str, Any]) -> Any:
        return True

    async def _api_answerCallbackQuery(self, params: dict[str, Any]) -> Any:
        return True

    async def _api_setMessageReaction(self, params: dict[str, Any]) -> Any:
        self._message(params)
        return True

    async def _api_getChatMember(self, params: dict[str, Any]) -> Any:
        return {"status": self.member_status, "user": self.user(int(params["user_id"]))}

    async def _api_sendMessage(self, params: dict[str, Any]) -> Any:
        if self.send_delay:
            await asyncio.sleep(self.send_delay)
        chat_id = int(params["chat_id"])
        shown = self._checked_text(params)
        message: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": self.chat(chat_id, group=chat_id < 0),
            "from": self.bot_user,
            "text": shown,
            "raw_text": params["text"],  # not in the real API: what the bot sent, for asserts
        }
        reply = params.get("reply_parameters")
        if isinstance(reply, dict) and (chat_id, reply.get("message_id")) in self.messages:
            message["reply_to_message"] = self.messages[(chat_id, reply["message_id"])]
        markup = params.get("reply_markup")
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            message["reply_markup"] = markup  # a ForceReply is not part of the Message
        if params.get("message_thread_id") is not None:
            message["message_thread_id"] = int(params["message_thread_id"])
        self.messages[(chat_id, message["message_id"])] = message
        return message

    async def _api_editMessageText(self, params: dict[str, Any]) -> Any:
        if self.edit_delay:
            await asyncio.sleep(self.edit_delay)
        message = self._message(params)
        shown = self._checked_text(params)
        markup = params.get("reply_markup")
        if shown == message["text"] and markup == message.get("reply_markup"):
            raise TelegramApiError(
                400,
                "Bad Request: message is not modified: specified new message content and reply "
                "markup are exactly the same as a current content and reply markup of the message",
            )
        message.update(text=shown, raw_text=params["text"], edit_date=int(time.time()))
        message.pop("reply_markup", None)  # an edit without a keyboard removes it
        if markup is not None:
            message["reply_markup"] = markup
        return message

    async def _api_editMessageReplyMarkup(self, params: dict[str, Any]) -> Any:
        message = self._message(params)
        markup = params.get("reply_markup")
        if markup == message.get("reply_markup"):
            raise TelegramApiError(400, "Bad Request: message is not modified")
        message["reply_markup"] = markup
        return message

    def _message(self, params: dict[str, Any]) -> dict[str, Any]:
        key = (int(params["chat_id"]), int(params["message_id"]))
        if key not in self.messages:
            raise TelegramApiError(400, "Bad Request: message to edit not found")
        return self.messages[key]

    @staticmethod
    def _checked_text(params: dict[str, Any]) -> str:
        shown = visible_text(str(params["text"]), params.get("parse_mode"))
        if not shown.strip():
            raise TelegramApiError(400, "Bad Request: message text is empty")
        if _utf16_len(shown) > TEXT_LIMIT:
            raise TelegramApiError(400, "Bad Request: message is too long")
        return shown


def _decode(value: Any) -> Any:
    """PTB sends nested objects (reply_markup, allowed_updates) as JSON strings."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _entities(text: str) -> list[dict[str, Any]]:
    """The entities the real server would attach: a leading /command and @mentions."""
    entities: list[dict[str, Any]] = []
    if text.startswith("/"):
        command = text.split(maxsplit=1)[0]
        entities.append({"type": "bot_command", "offset": 0, "length": _utf16_len(command)})
    for index, char in enumerate(text):
        if char == "@" and (index == 0 or not text[index - 1].isalnum()):
            end = index + 1
            while end < len(text) and (text[end].isalnum() or text[end] == "_"):
                end += 1
            if end - index > 1:
                entities.append(
                    {
                        "type": "mention",
                        "offset": _utf16_len(text[:index]),
                        "length": _utf16_len(text[index:end]),
                    }
                )
    return entities


def escape(text: str) -> str:
    """How the bot is expected to escape user text in HTML parse mode (for asserts)."""
    return html.escape(text, quote=False)
