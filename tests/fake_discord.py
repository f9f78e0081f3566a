"""A local fake of Discord (REST + gateway) that the real discord.py client can talk to.

It implements just enough of the API for the adapter's tests: login (``/users/@me``,
``/oauth2/applications/@me``), command sync, typing, channel messages, channel webhooks and
webhook executions, interaction callbacks; and a gateway that says HELLO, acks heartbeats and
answers IDENTIFY with READY and a GUILD_CREATE per guild of the connection's shard (the
IDENTIFY ``shard`` field [id, count]: a guild belongs to shard ``(guild_id >> 22) % count``,
DMs to shard 0, as on Discord; :meth:`FakeDiscord.add_guild` adds a guild). Tests push
MESSAGE_CREATE, reaction and interaction events with :meth:`FakeDiscord.dispatch` and
friends, then assert on what the fake received (``requests``) and on the messages it holds
(``messages``, content after edits).

It never logs request bodies or headers: the IDENTIFY payload carries the bot token.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

DISCORD_EPOCH_MS = 1420070400000

# Permission bits (https://discord.com/developers/docs/topics/permissions).
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
READ_MESSAGE_HISTORY = 1 << 16
ADD_REACTIONS = 1 << 6
MANAGE_WEBHOOKS = 1 << 29
BASIC_PERMISSIONS = VIEW_CHANNEL | SEND_MESSAGES | READ_MESSAGE_HISTORY | ADD_REACTIONS

Json = dict[str, Any]
_BODY = web.RequestKey("body", object)
_PATH = web.RequestKey("path", str)


@dataclass
class Recorded:
    """One REST request the fake received."""

    method: str
    path: str  # without the /api/v10 prefix, e.g. "/channels/1/messages"
    query: dict[str, str]
    body: Any  # parsed JSON, or None
    status: int = 200
    at: float = field(default_factory=time.monotonic)


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    retry_after: float
    remaining: int = 1


@dataclass
class FakeUser:
    """A person (or bot) in the fake guild."""

    id: int
    name: str
    bot: bool = False
    roles: list[int] = field(default_factory=list)

    def payload(self) -> Json:
        return {
            "id": str(self.id),
            "username": self.name,
            "global_name": self.name,
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
        }

    def member(self) -> Json:
        return {
            "roles": [str(r) for r in self.roles],
            "joined_at": "2024-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
        }


class FakeDiscord:
    """A fake Discord on 127.0.0.1 with one guild, two text channels, a bot and some people.

    ``manage_webhooks`` decides whether the bot's role may manage webhooks (then the adapter
    should speak through webhooks) or not (plain messages with a name prefix).
    """

    API_PREFIX = "/api/v10"

    def __init__(self, token: str, *, manage_webhooks: bool = True) -> None:
        self.token = token
        self._ids = itertools.count(1)
        self.guild_id = self.snowflake()
        self.channel_id = self.snowflake()  # the main text channel
        self.other_channel_id = self.snowflake()  # a second channel, for allow-list tests
        self.bot_role_id = self.snowflake()
        self.member_role_id = self.snowflake()
        self.app_id = self.snowflake()
        self.bot = FakeUser(self.app_id, "charbot", bot=True, roles=[self.bot_role_id])
        self.alice = FakeUser(self.snowflake(), "alice", roles=[self.member_role_id])
        self.bob = FakeUser(self.snowflake(), "bob")
        self.other_bot = FakeUser(self.snowflake(), "otherbot", bot=True)
        self.manage_webhooks = manage_webhooks
        # Every guild's text channels; add_guild adds more.
        self.guild_channels: dict[int, list[tuple[int, str]]] = {
            self.guild_id: [(self.channel_id, "general"), (self.other_channel_id, "elsewhere")]
        }
        self.shards: dict[web.WebSocketResponse, tuple[int, int]] = {}  # IDENTIFY's [id, count]

        self.requests: list[Recorded] = []
        self.messages: dict[int, Json] = {}  # every message in the fake, by id, latest content
        self.webhooks: dict[int, Json] = {}
        self.commands: list[Json] = []
        self.bot_reactions: list[tuple[int, str]] = []  # (message id, emoji) the bot added
        self._interaction_channels: dict[str, str] = {}  # interaction id -> channel id
        self.identified = asyncio.Event()
        self._failures: list[_Failure] = []
        self._sockets: list[web.WebSocketResponse] = []
        self._seq = itertools.count(1)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", self.API_PREFIX + "/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        # Bind first so the port is known without reaching into the site's internals.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def close(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # -- helpers for tests ---------------------------------------------------------------

    def snowflake(self) -> int:
        """A real-looking snowflake (timestamp in the high bits), unique in this fake."""
        millis = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return (millis << 22) | (next(self._ids) & 0x3FFFFF)

    def fail_next(
        self, method: str, path_pattern: str, *, status: int = 429, retry_after: float = 0.2
    ) -> None:
        """Answer the next request matching ``method`` and ``path_pattern`` with an error
        (a 429 carries ``retry_after`` and the ``Via`` header Discord's edge adds)."""
        self._failures.append(_Failure(method, re.compile(path_pattern), status, retry_after))

    def sent(self, method: str | None = None, pattern: str = "") -> list[Recorded]:
        """Requests received, filtered by method and a regex on the path."""
        regex = re.compile(pattern)
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and regex.search(r.path)
        ]

    def bot_messages(self, channel_id: int | None = None) -> list[Json]:
        """Messages posted by the bot or its webhooks, oldest first."""
        return [
            m
            for m in self.messages.values()
            if (m.get("webhook_id") or m["author"]["id"] == str(self.bot.id))
            and (channel_id is None or m["channel_id"] == str(channel_id))
        ]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Wait until ``predicate()`` is truthy (checked whenever a request arrives)."""

        async def check() -> Any:
            async with self._changed:
                while not (result := predicate()):
                    await self._changed.wait()
                return result

        return await asyncio.wait_for(check(), timeout)

    def add_guild(self) -> tuple[int, int]:
        """Another guild, with one text channel "general"; (guild id, channel id). Its id's
        timestamp is one millisecond after the newest guild's, so with two shards it is on
        the other shard from that guild."""
        newest = max(self.guild_channels)
        guild_id = ((newest >> 22) + 1) << 22 | (next(self._ids) & 0x3FFFFF)
        channel_id = self.snowflake()
        self.guild_channels[guild_id] = [(channel_id, "general")]
        return guild_id, channel_id

    def guild_of(self, channel_id: int) -> int | None:
        """The guild a channel is in; None for a DM channel."""
        for guild_id, channels in self.guild_channels.items():
            if any(channel == channel_id for channel, _ in channels):
                return guild_id
        return None

    @staticmethod
    def shard_of(guild_id: int | None, count: int) -> int:
        """Discord's rule: a guild's events go to shard (guild_id >> 22) % count; DMs to 0."""
        return 0 if guild_id is None else (guild_id >> 22) % count

    async def dispatch(self, event: str, data: Json) -> None:
        """Send one gateway DISPATCH event to every connected client whose shard has the
        event's guild (all of them for an unsharded client; DMs to shard 0)."""
        payload = {"op": 0, "t": event, "s": next(self._seq), "d": data}
        guild = data.get("guild_id")
        for ws in list(self._sockets):
            shard, count = self.shards.get(ws, (0, 1))
            if self.shard_of(int(guild) if guild else None, count) == shard:
                await ws.send_str(json.dumps(payload))

    def message_payload(
        self,
        content: str,
        *,
        author: FakeUser,
        channel_id: int | None = None,
        mentions: list[FakeUser] = (),  # type: ignore[assignment]
        reply_to: int | None = None,
        webhook_id: int | None = None,
        mention_everyone: bool = False,
    ) -> Json:
        channel_id = channel_id or self.channel_id
        message_id = self.snowflake()
        data: Json = {
            "id": str(message_id),
            "channel_id": str(channel_id),
            "author": author.payload(),
            "content": content,
            "timestamp": datetime.now(UTC).isoformat(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": mention_everyone,
            "mentions": [u.payload() for u in mentions],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 19 if reply_to else 0,
            "flags": 0,
        }
        guild_id = self.guild_of(channel_id)
        if guild_id is not None:
            data["guild_id"] = str(guild_id)
            data["member"] = author.member()
        if webhook_id is not None:
            data["webhook_id"] = str(webhook_id)
        if reply_to is not None:
            data["message_reference"] = {
                "type": 0,
                "message_id": str(reply_to),
                "channel_id": str(channel_id),
                "guild_id": str(guild_id or self.guild_id),
            }
            if reply_to in self.messages:
                data["referenced_message"] = self.messages[reply_to]
        return data

    async def user_says(self, content: str, *, author: FakeUser | None = None, **kw: Any) -> Json:
        """A MESSAGE_CREATE from a person; returns the message payload."""
        data = self.message_payload(content, author=author or self.alice, **kw)
        self.messages[int(data["id"])] = data
        await self.dispatch("MESSAGE_CREATE", data)
        return data

    async def react(
        self, message_id: int, emoji: str, *, user: FakeUser | None = None, remove: bool = False
    ) -> None:
        """A MESSAGE_REACTION_ADD (or _REMOVE) by ``user`` on a message in the main channel."""
        user = user or self.alice
        channel_id = int(self.messages[message_id]["channel_id"])
        data: Json = {
            "user_id": str(user.id),
            "channel_id": str(channel_id),
            "message_id": str(message_id),
            "guild_id": str(self.guild_id),
            "emoji": {"id": None, "name": emoji},
            "burst": False,
            "type": 0,
        }
        if not remove:
            data["member"] = {**user.member(), "user": user.payload()}
        await self.dispatch("MESSAGE_REACTION_REMOVE" if remove else "MESSAGE_REACTION_ADD", data)

    # -- the gateway ---------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                payload = json.loads(msg.data)
                if payload["op"] == 1:
                    await ws.send_str(json.dumps({"op": 11}))
                elif payload["op"] == 2:
                    if payload["d"].get("token") != self.token:
                        await ws.close(code=4004, message=b"Authentication failed.")
                        break
                    shard = payload["d"].get("shard") or [0, 1]
                    self.shards[ws] = (int(shard[0]), int(shard[1]))
                    await self._ready(ws)
        finally:
            self._sockets.remove(ws)
            self.shards.pop(ws, None)
        return ws

    async def _ready(self, ws: web.WebSocketResponse) -> None:
        shard, count = self.shards.get(ws, (0, 1))
        guilds = [g for g in self.guild_channels if self.shard_of(g, count) == shard]
        ready = {
            "v": 10,
            "user": self.bot.payload(),
            "guilds": [{"id": str(g), "unavailable": True} for g in guilds],
            "session_id": "fake-session",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.app_id), "flags": 0},
        }
        if count > 1:
            ready["shard"] = [shard, count]
        await ws.send_str(json.dumps({"op": 0, "t": "READY", "s": next(self._seq), "d": ready}))
        for guild_id in guilds:
            created = {"op": 0, "t": "GUILD_CREATE", "s": next(self._seq)}
            await ws.send_str(json.dumps({**created, "d": self._guild(guild_id)}))
        self.identified.set()

    def _guild(self, guild_id: int) -> Json:
        bot_perms = BASIC_PERMISSIONS | (MANAGE_WEBHOOKS if self.manage_webhooks else 0)

        def role(role_id: int, name: str, perms: int) -> Json:
            return {
                "id": str(role_id),
                "name": name,
                "permissions": str(perms),
                "position": 1,
                "color": 0,
                "hoist": False,
                "managed": False,
                "mentionable": False,
                "flags": 0,
            }

        def channel(channel_id: int, name: str) -> Json:
            return {
                "id": str(channel_id),
                "type": 0,
                "name": name,
                "position": 0,
                "guild_id": str(guild_id),
                "permission_overwrites": [],
                "nsfw": False,
                "parent_id": None,
            }

        people = [self.bot, self.alice, self.bob]
        return {
            "id": str(guild_id),
            "name": "Fake Guild" if guild_id == self.guild_id else f"Fake Guild {guild_id}",
            "owner_id": str(self.bob.id),
            "unavailable": False,
            "member_count": len(people),
            "roles": [
                role(guild_id, "@everyone", VIEW_CHANNEL | SEND_MESSAGES),
                role(self.bot_role_id, "charbot", bot_perms),
                role(self.member_role_id, "member", BASIC_PERMISSIONS),
            ],
            "channels": [channel(c, name) for c, name in self.guild_channels[guild_id]],
            "members": [{**u.member(), "user": u.payload()} for u in people],
            "threads": [],
            "emojis": [],
            "stickers": [],
            "features": [],
            "voice_states": [],
            "presences": [],
        }

    # -- REST ----------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/gateway":
            return await handler(request)
        body = None
        if request.can_read_body:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        path = request.path.removeprefix(self.API_PREFIX)
        entry = Recorded(request.method, path, dict(request.query), body)
        self.requests.append(entry)
        request[_BODY] = body
        request[_PATH] = path
        try:
            for failure in self._failures:
                if failure.method == request.method and failure.pattern.search(path):
                    failure.remaining -= 1
                    if failure.remaining == 0:
                        self._failures.remove(failure)
                    entry.status = failure.status
                    return _json(
                        {"message": "You are being rate limited.", "retry_after": 0.2},
                        failure.status,
                        {"Via": "1.1 google", "Retry-After": str(failure.retry_after)},
                    )
            response = await handler(request)
            entry.status = response.status
            return response
        finally:
            async with self._changed:
                self._changed.notify_all()

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path: str = request[_PATH]
        method = request.method
        body = request[_BODY] or {}
        is_webhook_call = path.startswith(("/webhooks/", "/interactions/"))
        if not is_webhook_call and request.headers.get("Authorization") != f"Bot {self.token}":
            return _json({"message": "401: Unauthorized", "code": 0}, 401)

        for route_method, pattern, handler in self._routes():
            if route_method == method and (match := re.fullmatch(pattern, path)):
                return await handler(request, body, *match.groups())
        return _json({"message": f"Unknown route {method} {path}", "code": 0}, 404)

    def _routes(self) -> list[tuple[str, str, Callable[..., Any]]]:
        return [
            ("GET", r"/users/@me", self._me),
            ("GET", r"/oauth2/applications/@me", self._application),
            ("PUT", r"/applications/(\d+)/commands", self._sync_commands),
            ("POST", r"/channels/(\d+)/typing", self._typing),
            ("POST", r"/channels/(\d+)/messages", self._create_message),
            ("PATCH", r"/channels/(\d+)/messages/(\d+)", self._edit_message),
            ("PUT", r"/channels/(\d+)/messages/(\d+)/reactions/([^/]+)/@me", self._add_reaction),
            ("GET", r"/channels/(\d+)/messages", self._history),
            ("GET", r"/channels/(\d+)/webhooks", self._list_webhooks),
            ("POST", r"/channels/(\d+)/webhooks", self._create_webhook),
            ("POST", r"/webhooks/(\d+)/([^/]+)", self._execute_webhook),
            ("PATCH", r"/webhooks/(\d+)/([^/]+)/messages/(\d+)", self._edit_webhook_message),
            ("POST", r"/interactions/(\d+)/([^/]+)/callback", self._interaction_callback),
        ]

    async def _me(self, _request: web.Request, _body: Json) -> web.Response:
        return _json(self.bot.payload())

    async def _application(self, _request: web.Request, _body: Json) -> web.Response:
        return _json(
            {
                "id": str(self.app_id),
                "name": "charbot",
                "icon": None,
                "description": "",
                "bot_public": False,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "owner": self.bob.payload(),
                "flags": 0,
            }
        )

    async def _sync_commands(self, _request: web.Request, body: Any, app_id: str) -> web.Response:
        self.commands = [
            {
                "description": "",
                **c,
                "id": str(self.snowflake()),
                "application_id": app_id,
                "version": "1",
            }
            for c in body
        ]
        return _json(self.commands)

    async def _typing(self, _request: web.Request, _body: Json, _channel: str) -> web.Response:
        return web.Response(status=204)

    def _store_message(self, channel_id: str, body: Json, author: Json, **extra: Any) -> Json:
        message = self.message_payload("", author=FakeUser(0, ""), channel_id=int(channel_id))
        message.update(author=author, content=body.get("content") or "", **extra)
        message.pop("member", None)
        reference = body.get("message_reference")
        if reference:
            # Clients send ints; Discord answers with string snowflakes.
            message["message_reference"] = {
                k: str(v) if k.endswith("_id") else v for k, v in reference.items()
            }
            message["type"] = 19
        self.messages[int(message["id"])] = message
        return message

    async def _create_message(
        self, _request: web.Request, body: Json, channel: str
    ) -> web.Response:
        return _json(self._store_message(channel, body, self.bot.payload()))

    async def _edit_message(
        self, _request: web.Request, body: Json, _channel: str, message_id: str
    ) -> web.Response:
        message = self.messages.get(int(message_id))
        if message is None:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        if "content" in body:
            message["content"] = body["content"]
        message["edited_timestamp"] = "2024-01-01T00:00:01+00:00"
        return _json(message)

    async def _add_reaction(
        self, _request: web.Request, _body: Json, _channel: str, message_id: str, emoji: str
    ) -> web.Response:
        self.bot_reactions.append((int(message_id), emoji))
        return web.Response(status=204)

    async def _history(self, request: web.Request, _body: Json, channel: str) -> web.Response:
        found = [m for m in self.messages.values() if m["channel_id"] == channel]
        found.sort(key=lambda m: int(m["id"]), reverse=True)
        return _json(found[: int(request.query.get("limit", "50"))])

    async def _list_webhooks(
        self, _request: web.Request, _body: Json, channel: str
    ) -> web.Response:
        if not self.manage_webhooks:
            return _json({"message": "Missing Permissions", "code": 50013}, 403)
        return _json([w for w in self.webhooks.values() if w["channel_id"] == channel])

    async def _create_webhook(
        self, _request: web.Request, body: Json, channel: str
    ) -> web.Response:
        if not self.manage_webhooks:
            return _json({"message": "Missing Permissions", "code": 50013}, 403)
        webhook_id = self.snowflake()
        webhook = {
            "id": str(webhook_id),
            "type": 1,
            "channel_id": channel,
            "guild_id": str(self.guild_of(int(channel)) or self.guild_id),
            "name": body.get("name", "hook"),
            "avatar": None,
            "token": f"hooktoken{webhook_id}",
            "application_id": str(self.app_id),
            "user": self.bot.payload(),
        }
        self.webhooks[webhook_id] = webhook
        return _json(webhook)

    def _webhook(self, webhook_id: str, token: str) -> Json | None:
        webhook = self.webhooks.get(int(webhook_id))
        return webhook if webhook is not None and webhook["token"] == token else None

    async def _execute_webhook(
        self, request: web.Request, body: Json, webhook_id: str, token: str
    ) -> web.Response:
        webhook = self._webhook(webhook_id, token)
        if webhook is None:
            return _json({"message": "Unknown Webhook", "code": 10015}, 404)
        channel = request.query.get("thread_id", webhook["channel_id"])
        author = {
            "id": webhook_id,
            "username": body.get("username") or webhook["name"],
            "discriminator": "0000",
            "avatar": None,
            "bot": True,
        }
        message = self._store_message(
            channel, body, author, webhook_id=webhook_id, avatar_url=body.get("avatar_url")
        )
        if request.query.get("wait") in ("true", "1", "True"):
            return _json(message)
        return web.Response(status=204)

    async def _edit_webhook_message(
        self, _request: web.Request, body: Json, webhook_id: str, token: str, message_id: str
    ) -> web.Response:
        message = self.messages.get(int(message_id))
        if self._webhook(webhook_id, token) is None or message is None:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        if message.get("webhook_id") != webhook_id:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        if "content" in body:
            message["content"] = body["content"]
        return _json(message)

    async def _interaction_callback(
        self, _request: web.Request, body: Json, interaction_id: str, _token: str
    ) -> web.Response:
        result: Json = {"interaction": {"id": interaction_id, "type": 2}}
        if body.get("type") == 4:  # CHANNEL_MESSAGE_WITH_SOURCE
            data = body.get("data") or {}
            message = self._store_message(
                self._interaction_channels.get(interaction_id, str(self.channel_id)),
                data,
                self.bot.payload(),
                interaction_id=interaction_id,
                flags=data.get("flags", 0),
            )
            result["interaction"]["response_message_id"] = message["id"]
            result["resource"] = {"type": 4, "message": message}
        return _json(result)

    async def slash(
        self,
        name: str,
        options: list[Json] | None = None,
        *,
        user: FakeUser | None = None,
        channel_id: int | None = None,
        command_type: int = 1,
        target_id: int | None = None,
        resolved: Json | None = None,
        interaction_type: int = 2,
        data: Json | None = None,
        dm: bool = False,
    ) -> str:
        """Dispatch an INTERACTION_CREATE for an application command; returns its id.
        ``dm``: used in a DM with the bot (``channel_id`` is then the DM channel's id)."""
        user = user or self.alice
        channel_id = channel_id or self.channel_id
        interaction_id = str(self.snowflake())
        self._interaction_channels[interaction_id] = str(channel_id)
        command = next((c for c in self.commands if c["name"] == name), None)
        inner: Json = data or {
            "id": command["id"] if command else str(self.snowflake()),
            "name": name,
            "type": command_type,
            "options": options or [],
        }
        if target_id is not None:
            inner["target_id"] = str(target_id)
            inner["resolved"] = resolved or {}
        # In a DM there is no guild and no member, only the user (and context 1, BOT_DM).
        where: Json = (
            {
                "channel": {"id": str(channel_id), "type": 1, "recipients": [user.payload()]},
                "user": user.payload(),
            }
            if dm
            else {
                "guild_id": str(self.guild_id),
                "channel": {"id": str(channel_id), "type": 0, "guild_id": str(self.guild_id)},
                "member": {
                    **user.member(),
                    "user": user.payload(),
                    "permissions": str(BASIC_PERMISSIONS),
                },
            }
        )
        await self.dispatch(
            "INTERACTION_CREATE",
            {
                "id": interaction_id,
                "application_id": str(self.app_id),
                "type": interaction_type,
                "data": inner,
                "channel_id": str(channel_id),
                **where,
                "token": f"itoken{interaction_id}",
                "version": 1,
                "locale": "en-US",
                "guild_locale": "en-US",
                "app_permissions": str(BASIC_PERMISSIONS),
                "entitlements": [],
                "attachment_size_limit": 10 * 1024 * 1024,
                "authorizing_integration_owners": {},
                "context": 1 if dm else 0,
            },
        )
        return interaction_id


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py parses a body as JSON only when Content-Type is exactly "application/json".
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
