"""The openai backend against a local fake OpenAI-compatible server, through the real core."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.answering import APOLOGY
from bot.characters import Character
from bot.config import ModelSettings, load_config
from bot.errors import ConfigError
from charbot.wiring import persona_samples, served_loras
from engine import GenerationRequest, Sampling
from engine.errors import LoraLoadError, ModelError, SettingsError
from engine.openai_backend import OpenAIModel
from engine.openai_tokens import DEFAULT_TOKENS_PER_BYTE, EstimateCounter
from tests.conftest import MakeCore
from tests.fake_openai import Drop, FakeOpenAI, Garbage, Refuse, Reply, Stall, Unfinished
from tests.fakes import RecordingTarget
from tests.test_core import inbound

CHARACTERS = (
    Character(name="Aria", description="A cheerful starship navigator."),
    Character(name="Bram", description="A grumpy lighthouse keeper.", model="bram"),
    Character(name="Pip", description="A clockwork owl.", lora_id=1),
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI().start()
    yield server
    await server.stop()


def backend(fake: FakeOpenAI, characters=CHARACTERS, **settings) -> OpenAIModel:  # type: ignore[no-untyped-def]
    values = {"backend": "openai", "base_url": fake.base_url, "model": "smollm2", **settings}
    served, samples = served_loras(characters), persona_samples(characters)
    return OpenAIModel(ModelSettings(**values), served, samples, retry_within_s=3.0)


async def test_reply_streams_through_the_core_and_records_the_served_model(
    fake: FakeOpenAI, make_core: MakeCore
) -> None:
    fake.script = [Reply("Aye, the lamp is lit.")]
    core = await make_core(model=backend(fake), characters=CHARACTERS, temperature=0.3)
    target = RecordingTarget()
    result = await core.handle(inbound("Bram, is the lamp lit?"), target)
    assert result is not None and result.status == "ok" and result.character == "Bram"
    assert target.text == "Aye, the lamp is lit."
    sent = fake.requests[0]
    assert sent["model"] == "bram" and sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["temperature"] == 0.3 and sent["max_tokens"] == ModelSettings().max_new_tokens
    assert sent["messages"][-1] == {"role": "user", "content": "Bram, is the lamp lit?"}
    assert (
        sent["messages"][0]["role"] == "system" and "lighthouse" in sent["messages"][0]["content"]
    )
    _user, reply = await core.store.list_messages()
    assert (reply.model, reply.lora_version) == ("bram", "bram")
    assert (reply.prompt_tokens, reply.completion_tokens) == (11, 5)


async def test_each_character_gets_its_own_lora_form(fake: FakeOpenAI) -> None:
    model = backend(fake)
    await model.start()
    try:
        for name in ("Aria", "Bram", "Pip"):
            request = GenerationRequest([{"role": "user", "content": "hi"}], lora_name=name)
            async for _ in model.stream(request):
                pass
    finally:
        await model.close()
    aria, bram, pip = fake.requests
    # Once one character uses a llama-server LoRA id, every request names its LoRAs,
    # so none runs with the server's start-up scales.
    assert (aria["model"], aria["lora"]) == ("smollm2", [])
    assert (bram["model"], bram["lora"]) == ("bram", [])
    assert (pip["model"], pip["lora"]) == ("smollm2", [{"id": 1, "scale": 1.0}])


async def test_429_with_retry_after_is_waited_out_then_answered(
    fake: FakeOpenAI, make_core: MakeCore
) -> None:
    fake.script = [Refuse(429, retry_after="1", message="slow down"), Reply("Second time lucky.")]
    core = await make_core(model=backend(fake), characters=CHARACTERS)
    target = RecordingTarget()
    started = time.monotonic()
    result = await core.handle(inbound("hello"), target)
    assert result is not None and result.status == "ok"
    assert target.text == "Second time lucky." and not target.notices
    assert time.monotonic() - started >= 0.9  # Retry-After honoured
    assert len(fake.requests) == 2


async def test_retry_after_beyond_the_bound_fails_at_once_with_an_error_row(
    fake: FakeOpenAI, make_core: MakeCore
) -> None:
    fake.script = [Refuse(503, retry_after="120", message="loading model")]
    core = await make_core(model=backend(fake), characters=CHARACTERS)
    target = RecordingTarget()
    started = time.monotonic()
    result = await core.handle(inbound("hello"), target)
    assert time.monotonic() - started < 2
    assert result is not None and result.status == "error"
    assert target.notices == [APOLOGY]
    _user, reply = await core.store.list_messages()
    assert reply.status == "error" and "busy (503: loading model)" in reply.error
    assert len(fake.requests) == 1


async def test_connection_dropped_mid_reply_keeps_the_partial_and_apologises(
    fake: FakeOpenAI, make_core: MakeCore
) -> None:
    fake.script = [Drop("The storm is"), Reply("Recovered.")]
    core = await make_core(model=backend(fake), characters=CHARACTERS)
    target = RecordingTarget()
    result = await core.handle(inbound("Tell me a story"), target)
    assert result is not None and result.status == "error"
    assert "The storm is" in target.text  # the partial reply stays on screen
    assert target.notices == [APOLOGY]
    assert len(fake.requests) == 1  # no retry once text was shown: it would repeat it
    _user, reply = await core.store.list_messages()
    assert reply.status == "error" and "dropped the connection" in reply.error
    # The bot keeps serving.
    target = RecordingTarget()
    result = await core.handle(inbound("Again?"), target)
    assert result is not None and result.status == "ok" and target.text == "Recovered."


@pytest.mark.parametrize(
    ("action", "error"),
    [
        (Drop(""), "dropped the connection"),
        (Unfinished(""), "ended the stream before the reply was finished"),
    ],
)
async def test_a_cut_before_any_text_is_retried(
    fake: FakeOpenAI, make_core: MakeCore, action: object, error: str
) -> None:
    fake.script = [action, Reply("Fine now.")]  # type: ignore[list-item]
    core = await make_core(model=backend(fake), characters=CHARACTERS)
    target = RecordingTarget()
    result = await core.handle(inbound("hello"), target)
    assert result is not None and result.status == "ok" and target.text == "Fine now."
    assert len(fake.requests) == 2


async def test_malformed_sse_is_an_error_not_a_crash(fake: FakeOpenAI, make_core: MakeCore) -> None:
    fake.script = [Garbage("Half a")]
    core = await make_core(model=backend(fake), characters=CHARACTERS)
    target = RecordingTarget()
    result = await core.handle(inbound("hello"), target)
    assert result is not None and result.status == "error" and target.notices == [APOLOGY]
    _user, reply = await core.store.list_messages()
    assert "malformed stream" in reply.error and "502 Bad Gateway" in reply.error


async def test_a_silent_server_times_out_within_the_bound(
    fake: FakeOpenAI, make_core: MakeCore
) -> None:
    fake.script = [Stall(1), Stall(1), Stall(1)]
    core = await make_core(model=backend(fake, timeout_s=0.3), characters=CHARACTERS)
    started = time.monotonic()
    result = await core.handle(inbound("hello"), RecordingTarget())
    assert time.monotonic() - started < 4  # three tries of 0.3 s, 0.5 s and 1 s apart
    assert result is not None and result.status == "error"
    _user, reply = await core.store.list_messages()
    assert "sent nothing for 0.3 s; gave up after 3 tries" in reply.error


async def test_server_down_then_back(fake: FakeOpenAI, make_core: MakeCore) -> None:
    core = await make_core(model=backend(fake), characters=CHARACTERS)
    await fake.stop()
    result = await core.handle(inbound("anyone there?"), RecordingTarget())
    assert result is not None and result.status == "error"
    _user, reply = await core.store.list_messages()
    assert "cannot reach the model server" in reply.error
    await fake.start()  # the same port
    target = RecordingTarget()
    result = await core.handle(inbound("and now?"), target)
    assert result is not None and result.status == "ok" and target.text == fake.default


async def test_api_key_goes_only_to_the_server(
    fake: FakeOpenAI,
    make_core: MakeCore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    secret = "sk-test-4f9c2a71e0"
    monkeypatch.setenv("CHARBOT_TEST_KEY", secret)
    caplog.set_level(logging.DEBUG)
    fake.script = [Refuse(401, message="bad key"), Refuse(503, retry_after="0"), Reply("ok")]
    model = backend(fake, api_key_env="CHARBOT_TEST_KEY")
    core = await make_core(model=model, characters=CHARACTERS)
    await core.handle(inbound("one"), RecordingTarget())
    await core.handle(inbound("two"), RecordingTarget())
    assert fake.headers[0]["Authorization"] == f"Bearer {secret}"
    rows = await core.store.list_messages()
    assert "refused the API key (401)" in rows[1].error
    assert secret not in caplog.text and secret not in repr(model)
    for row in rows:
        assert secret not in f"{row}"
    for path in tmp_path.rglob("*.db*"):  # the database file itself, and its WAL
        assert secret.encode() not in path.read_bytes()


async def test_empty_api_key_variable_is_one_clear_error(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHARBOT_NO_KEY", raising=False)
    with pytest.raises(SettingsError, match="api_key_env names CHARBOT_NO_KEY, which is empty"):
        await backend(fake, api_key_env="CHARBOT_NO_KEY").start()


async def test_unknown_model_names_the_fix(fake: FakeOpenAI) -> None:
    fake.script = [Refuse(404, message="The model `bram` does not exist.")]
    model = backend(fake)
    await model.start()
    try:
        with pytest.raises(ModelError, match=r"no model 'bram'.*GET http://127\.0\.0\.1"):
            async for _ in model.stream(GenerationRequest([], lora_name="Bram")):
                pass
    finally:
        await model.close()


async def test_prompt_tokens_are_calibrated_on_the_servers_tokenizer(fake: FakeOpenAI) -> None:
    model = backend(fake)
    await model.start()
    await model.close()
    # The fake counts one token per word: far fewer per byte than the default estimate.
    assert model.counter.how.startswith("calibrated on the server's /tokenize")
    assert isinstance(model.counter, EstimateCounter)
    assert model.counter.tokens_per_byte < DEFAULT_TOKENS_PER_BYTE
    fake.tokenize = False
    model = backend(fake)
    await model.start()
    await model.close()
    assert model.counter.how == "estimated at 0.50 tokens per UTF-8 byte"


async def test_the_prompt_budget_holds_with_the_estimate(
    fake: FakeOpenAI, make_core: MakeCore
) -> None:
    fake.tokenize = False
    core = await make_core(model=backend(fake), characters=CHARACTERS, context_tokens=120)
    for index in range(8):
        await core.handle(inbound(f"message number {index} " + "word " * 30), RecordingTarget())
    last = fake.requests[-1]["messages"]
    assert EstimateCounter().count(last) <= 120
    assert len(last) < 2 * 8  # older turns were dropped
    assert last[-1]["content"].startswith("message number 7")


def test_estimate_truncates_on_character_boundaries() -> None:
    counter = EstimateCounter()
    # 8 tokens at 0.5 per byte are 16 bytes: the emoji that would be split is left out.
    assert counter.truncate("héllo wörld 🌊🌊🌊", 8) == "héllo wörld "
    assert counter.count([{"role": "user", "content": "abcd"}]) == 2 + 7 + 1


async def test_switching_a_version_loads_it_on_the_server(
    fake: FakeOpenAI, make_core: MakeCore
) -> None:
    core = await make_core(model=backend(fake), characters=CHARACTERS)
    version = await core.switch_lora("Aria", "/srv/loras/aria/v0002-ab12")
    assert version == "v0002-ab12"
    assert fake.loaded == {"aria-v0002-ab12": "/srv/loras/aria/v0002-ab12"}
    await core.handle(inbound("Aria, hello"), RecordingTarget())
    assert fake.requests[-1]["model"] == "aria-v0002-ab12"
    _user, reply = await core.store.list_messages()
    assert (reply.model, reply.lora_version) == ("aria-v0002-ab12", "v0002-ab12")
    await core.switch_lora("Aria", None)
    await core.handle(inbound("Aria, again"), RecordingTarget())
    assert fake.requests[-1]["model"] == "smollm2"


async def test_a_server_that_cannot_load_adapters_gets_the_operator_the_command(
    fake: FakeOpenAI, make_core: MakeCore
) -> None:
    fake.runtime_lora = False
    core = await make_core(model=backend(fake), characters=CHARACTERS)
    with pytest.raises(LoraLoadError) as caught:
        await core.switch_lora("Aria", "/srv/loras/aria/v3")
    message = str(caught.value)
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in message
    assert "--lora-modules aria-v3=/srv/loras/aria/v3" in message
    assert 'model = "aria-v3" for Aria' in message
    with pytest.raises(LoraLoadError, match=r"--lora-scaled pip-v3\.gguf:0"):
        await core.switch_lora("Pip", "/srv/loras/pip/v3")
    await core.handle(inbound("Aria, still there?"), RecordingTarget())
    assert fake.requests[-1]["model"] == "smollm2"  # nothing changed


async def test_a_full_queue_answers_busy(fake: FakeOpenAI, make_core: MakeCore) -> None:
    fake.script = [Reply("slow " * 5, delay=0.05) for _ in range(3)]
    model = backend(fake, max_concurrency=1, max_queue=1)
    core = await make_core(model=model, characters=CHARACTERS)
    targets = [RecordingTarget() for _ in range(3)]
    results = await asyncio.gather(
        *(core.handle(inbound("hi", chat=f"c{i}"), targets[i]) for i in range(3))
    )
    assert sorted(r.status for r in results if r is not None) == ["busy", "ok", "ok"]


def test_sampling_options_reach_the_server() -> None:
    settings = ModelSettings(backend="openai", base_url="http://127.0.0.1:9/v1", model="m")
    model = OpenAIModel(settings)
    body = model._body(
        GenerationRequest([], Sampling(seed=7, repetition_penalty=1.2)), model.route(None)
    )
    assert body["seed"] == 7 and body["repetition_penalty"] == body["repeat_penalty"] == 1.2
    assert "lora" not in body  # no character uses llama-server LoRA ids


@pytest.mark.parametrize(
    ("model_table", "problem"),
    [
        ('backend = "openai"\nmodel = "m"', '[model] base_url: backend "openai" needs'),
        ('backend = "openai"\nbase_url = "http://127.0.0.1:8000/v1"', "[model] model: backend"),
        ('backend = "openai"\nbase_url = "h"\nmodel = "m"', "[model] base_url"),
    ],
)
def test_config_names_what_the_openai_backend_lacks(
    tmp_path: Path, model_table: str, problem: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[model]\n{model_table}\n\n[[characters]]\nname = "Aria"\nlora = 0\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert problem in str(caught.value) and "\n" not in str(caught.value)


def test_config_reads_the_openai_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[model]\nbackend = "openai"\nbase_url = "http://127.0.0.1:8000/v1"\nmodel = "base"\n'
        'api_key_env = "VLLM_KEY"\ntimeout_s = 30\nmax_concurrency = 8\n\n'
        '[[characters]]\nname = "Bram"\nmodel = "bram"\n\n'
        '[[characters]]\nname = "Pip"\nlora_id = 1\n'
    )
    config = load_config(path)
    assert (config.model.base_url, config.model.model, config.model.api_key_env) == (
        "http://127.0.0.1:8000/v1",
        "base",
        "VLLM_KEY",
    )
    assert (config.model.timeout_s, config.model.max_concurrency) == (30.0, 8)
    assert [(c.model, c.lora_id) for c in config.characters] == [("bram", None), (None, 1)]
