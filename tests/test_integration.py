"""The whole loop on the real default model: the persona reaches the prompt, a reply comes back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.characters import Character
from bot.config import ModelSettings
from bot.messages import Inbound
from tests.conftest import MakeCore
from tests.fakes import RecordingTarget

CACHE = Path(__file__).resolve().parent.parent / "data" / "models"  # shared with make run


@pytest.mark.integration
async def test_default_model_answers_in_character(make_core: MakeCore) -> None:
    from engine.local_backend import LocalModel

    settings = ModelSettings(cache_dir=CACHE, max_new_tokens=24, temperature=0.0)
    bram = Character(
        name="Bram",
        description="Bram keeps the lighthouse on Gull Rock with his cat Fathom.",
        personality="Gruff and brief.",
    )
    core = await make_core(
        model=LocalModel(settings, progress=False),
        characters=[bram],
        max_new_tokens=24,
        temperature=0.0,
    )
    target = RecordingTarget()
    msg = Inbound("test", "c1", "1", "42", "Sam", "What is the name of your cat?")
    result = await core.handle(msg, target)
    assert result is not None and result.status == "ok", result
    assert result.text.strip() and target.text == result.text
    reply = (await core.store.list_messages())[-1]
    prompt = json.loads(reply.prompt_json)
    assert prompt[0]["role"] == "system" and "Gull Rock" in prompt[0]["content"]
    assert prompt[-1] == {"role": "user", "content": "What is the name of your cat?"}
    assert reply.model and reply.prompt_tokens and 0 < reply.completion_tokens <= 24
