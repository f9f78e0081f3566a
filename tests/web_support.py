"""Shared set-up of the studio tests (tests/test_web*.py): a small config on a real SQLite
file with the echo backend, a started core over it, and the CSRF token of a page."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.web.app import create_app
from adapters.web.context import Studio
from bot.config import Config, load_config
from bot.core import Core
from charbot import wiring

REPO = Path(__file__).resolve().parents[1]

CONFIG = """\
default_character = "Mara"

[model]
backend = "echo"

[storage]
url = "sqlite:///data/charbot.db"

[training]
poll_seconds = 0.2

[web]
port = 0
{web}

[[characters]]
name = "Mara"
description = "A starship navigator."
greeting = "Welcome aboard!"

[[characters]]
name = "Bram"
description = "A lighthouse keeper."
"""


def write_config(tmp_path: Path, web: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(web=web), encoding="utf-8")
    return path


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert found, "the page carries no CSRF token"
    return found[1]


def events(body: str) -> list[tuple[str, Any]]:
    """The (event, data) pairs of a server-sent event stream."""
    found = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        found.append((lines["event"], json.loads(lines["data"])))
    return found


def charbot(config: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """Run the real ``charbot`` command in a subprocess."""
    import os

    return subprocess.run(
        [sys.executable, "-m", "charbot.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})},
        cwd=REPO,
    )


def export_sft(config: Path) -> list[dict[str, Any]]:
    result = charbot(config, "export", "--format", "sft")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def make_version(loras_dir: Path, character: str, number: int, **metadata: Any) -> Path:
    """A version directory as training/versions.py publishes one (the echo backend loads
    no weights, so an adapter_config.json and metadata.json are all it needs)."""
    path = loras_dir / character / f"v{number:04d}-{number:08x}"
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    meta = {"id": path.name, "created": f"2026-11-2{number}T10:00:00", "method": "sft"}
    (path / "metadata.json").write_text(json.dumps({**meta, **metadata}))
    return path


class VersionedEcho:
    """Builds the echo backend plus LoRA versions (the echo model itself serves none):
    loading a version records its directory name, and every reply reports the version it
    was generated with, as the real backends do. A fake of our own model boundary."""

    @staticmethod
    def create() -> Any:
        from engine.echo import EchoModel
        from engine.errors import LoraLoadError

        class _Model(EchoModel):
            async def load_lora(self, character: str, path: str) -> str:
                if not (Path(path) / "adapter_config.json").is_file():
                    raise LoraLoadError(character, path, "no adapter_config.json there")
                return Path(path).name

            async def unload_lora(self, character: str) -> None:
                return None

            async def stream(self, request: Any) -> Any:
                async for chunk in super().stream(request):
                    if chunk.usage is not None and request.lora is not None:
                        chunk.usage.lora_version = Path(request.lora.path).name
                    yield chunk

        return _Model()


class Browser:
    """An httpx client on the studio app that keeps its session cookie and CSRF token."""

    def __init__(
        self, client: httpx.AsyncClient, core: Core, config: Config, app: Any = None
    ) -> None:
        self.client, self.core, self.config, self.app = client, core, config, app
        self.csrf = ""

    def elsewhere(self, address: str) -> Browser:
        """Another browser (no cookie) on the same app, connecting from ``address``; close
        its client with ``await other.client.aclose()``."""
        transport = httpx.ASGITransport(app=self.app, client=(address, 50000))
        client = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")
        return Browser(client, self.core, self.config, self.app)

    async def get(self, url: str, **kw: Any) -> httpx.Response:
        response = await self.client.get(url, **kw)
        if "csrf-token" in response.text:
            self.csrf = csrf_of(response.text)
        return response

    async def post(self, url: str, body: Any = None, **kw: Any) -> httpx.Response:
        if not self.csrf:
            await self.get("/")
        headers = {"x-csrf-token": self.csrf, **kw.pop("headers", {})}
        return await self.client.post(url, json=body or {}, headers=headers, **kw)

    async def form(self, url: str, data: dict[str, str], **kw: Any) -> httpx.Response:
        if not self.csrf:
            await self.get("/")
        return await self.client.post(url, data={"csrf_token": self.csrf, **data}, **kw)

    async def say(self, text: str, **extra: Any) -> list[tuple[str, Any]]:
        response = await self.post("/api/chat/send", {"text": text, **extra})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/event-stream")
        return events(response.text)


@contextlib.asynccontextmanager
async def open_browser(
    path: Path,
    monkeypatch: pytest.MonkeyPatch,
    password: str | None = None,
    clock: Any = None,
) -> AsyncIterator[Browser]:
    """The real wiring (charbot.wiring.open_core) with the versioned echo model, and a client
    (from 127.0.0.1). ``clock``: the throttles' monotonic clock, a callable tests advance."""
    monkeypatch.setattr(wiring, "build_model", lambda config: VersionedEcho.create())
    config = load_config(path)
    async with wiring.open_core(config) as core:
        studio = (
            Studio(core, config, password)
            if clock is None
            else Studio(core, config, password, clock=clock)
        )
        app = create_app(studio)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield Browser(client, core, config, app)
