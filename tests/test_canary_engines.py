"""A canary on real backends: the local engine batches the candidate's rows with the current
version's (per-row LoRA), an OpenAI-compatible server is asked per request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.canary import CanaryRoute, meets_candidate
from bot.characters import Character
from bot.config import ModelSettings
from bot.messages import Inbound
from tests.fakes import RecordingTarget
from tests.tiny_model import build_tiny_adapter, build_tiny_model

PEOPLE = [f"user{i}" for i in range(8)]


def _inbound(user: str) -> Inbound:
    return Inbound(
        platform="test",
        chat_id=f"chat-{user}",
        message_id=f"m-{user}",
        author_id=user,
        author_name=user,
        text="Aria, hello there",
        addressed=True,
    )


async def _ask_everyone(core) -> dict[str, str | None]:  # type: ignore[no-untyped-def]
    await asyncio.gather(*(core.handle(_inbound(p), RecordingTarget()) for p in PEOPLE))
    replies = [m for m in await core.store.list_messages() if m.role == "assistant"]
    return {m.chat_id.removeprefix("chat-"): m.lora_version for m in replies}


def _expected(share: float) -> dict[str, str]:
    return {p: "v2" if meets_candidate("test", p, "Aria", share) else "v1" for p in PEOPLE}


async def test_the_local_engine_batches_the_candidate_with_the_current(
    make_core, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    from engine.local_backend import LocalModel

    base = build_tiny_model(tmp_path / "base")
    v1 = build_tiny_adapter(base, tmp_path / "aria" / "v1", seed=1)
    v2 = build_tiny_adapter(base, tmp_path / "aria" / "v2", seed=2)
    model = LocalModel(
        ModelSettings(base=str(base), dtype="float32", max_batch_size=8, batch_wait_ms=50),
        progress=False,
        worker="thread",
    )
    await model.start()
    try:
        aria = Character(name="Aria", description="A navigator.", lora=str(v1))
        core = await make_core(model=model, characters=[aria], max_new_tokens=8)
        await core.start_canary(CanaryRoute("Aria", "v2", str(v2), 0.5, 1))
        got = await _ask_everyone(core)
        assert got == _expected(0.5) and set(got.values()) == {"v1", "v2"}
        assert model.scheduler.max_rows_seen >= 2  # rows of both versions shared batches
        await core.stop_canary("Aria")
        assert set(model.loaded_loras()) == {"Aria"}
    finally:
        await model.close()


async def test_a_server_is_asked_for_the_candidate_per_request(make_core, tmp_path: Path) -> None:
    from engine.openai_backend import OpenAIModel
    from tests.fake_openai import FakeOpenAI

    v1, v2 = tmp_path / "aria" / "v1", tmp_path / "aria" / "v2"
    for path in (v1, v2):
        path.mkdir(parents=True)
    server = await FakeOpenAI().start()
    settings = ModelSettings(backend="openai", base_url=server.base_url, model="base-model")
    model = OpenAIModel(settings, retry_within_s=3.0)
    try:
        core = await make_core(model=model, characters=[Character(name="Aria")])
        await core.switch_lora("Aria", str(v1))
        await core.start_canary(CanaryRoute("Aria", "v2", str(v2), 0.5, 1))
        assert server.loaded == {"aria-v1": str(v1), "aria-canary-v2": str(v2)}
        got = await _ask_everyone(core)
        assert got == _expected(0.5)
        # One request per person, each asking for the served name of their side's version.
        assert sorted(r["model"] for r in server.requests) == sorted(
            "aria-canary-v2" if v == "v2" else "aria-v1" for v in got.values()
        )
    finally:
        await model.close()
        await server.stop()
