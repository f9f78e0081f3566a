"""The openai backend against a real llama-server: the bundled model with two LoRAs.

Skipped where llama-server is not installed (``make install-llama-server``); run alone with
``make test-integration``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from bot.answering import APOLOGY
from bot.characters import Character
from bot.config import ModelSettings
from engine import GenerationRequest, Sampling
from engine.openai_backend import OpenAIModel
from tests.conftest import MakeCore
from tests.fakes import RecordingTarget
from tests.llama_server import CACHE, LlamaServer, make_loras, server_binary
from tests.test_core import inbound

pytestmark = pytest.mark.integration

CHARACTERS = (
    Character(name="Aria", description="A cheerful starship navigator.", lora=0),
    Character(name="Bram", description="A grumpy lighthouse keeper.", lora=1),
    Character(name="Pip", description="A clockwork library owl."),
)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    binary = server_binary()
    if binary is None:
        pytest.skip(
            "llama-server is not installed: make install-llama-server "
            "(builds llama.cpp once, ~25 min on 2 cores) or set LLAMA_SERVER"
        )
    from engine.local_files import convert_bundled, find_bundled_gguf

    base_dir = convert_bundled(CACHE, progress=False)
    root = tmp_path_factory.mktemp("llama")
    server = LlamaServer(binary, find_bundled_gguf(), make_loras(base_dir, root), root / "log")
    server.start()
    yield server
    server.kill()


def settings(llama: LlamaServer, **values: object) -> ModelSettings:
    defaults: dict[str, object] = {
        "backend": "openai",
        "base_url": llama.base_url,
        "model": "smollm2",
        "timeout_s": 30.0,
        "max_new_tokens": 12,
        "temperature": 0.0,
        "repetition_penalty": 1.0,
    }
    return ModelSettings(**{**defaults, **values})  # type: ignore[arg-type]


@pytest.fixture
async def model(llama: LlamaServer) -> AsyncIterator[OpenAIModel]:
    backend = OpenAIModel(settings(llama), CHARACTERS)
    await backend.start()
    yield backend
    await backend.close()


async def reply(model: OpenAIModel, character: str, text: str) -> tuple[str, object]:
    request = GenerationRequest(
        [{"role": "user", "content": text}],
        Sampling(max_new_tokens=12, temperature=0.0, top_p=1.0),
        character=character,
    )
    pieces, usage = [], None
    async for chunk in model.stream(request):
        pieces.append(chunk.text)
        usage = chunk.usage or usage
    return "".join(pieces), usage


async def test_each_character_speaks_through_its_own_adapter(model: OpenAIModel) -> None:
    question = "What do you see out of the window tonight?"
    aria, aria_usage = await reply(model, "Aria", question)
    bram, bram_usage = await reply(model, "Bram", question)
    pip, pip_usage = await reply(model, "Pip", question)
    assert len({aria, bram, pip}) == 3, (aria, bram, pip)  # each LoRA changes the answer
    assert (await reply(model, "Aria", question))[0] == aria  # and the same one repeats
    assert [u.lora_version for u in (aria_usage, bram_usage, pip_usage)] == [  # type: ignore[attr-defined]
        "lora:0",
        "lora:1",
        None,
    ]
    assert aria_usage.completion_tokens > 0 and aria_usage.prompt_tokens > 0  # type: ignore[attr-defined]
    # No tokenizer configured: the budget uses the server's own /tokenize, calibrated once.
    assert model.counter.how.startswith("calibrated on the server's /tokenize")


async def test_a_conversation_streams_within_the_prompt_budget(
    llama: LlamaServer, make_core: MakeCore
) -> None:
    from engine.local_files import convert_bundled

    tokenizer = str(convert_bundled(CACHE, progress=False))
    backend = OpenAIModel(settings(llama, tokenizer=tokenizer, context_tokens=160), CHARACTERS)
    core = await make_core(
        model=backend, characters=CHARACTERS, context_tokens=160, max_new_tokens=12
    )
    story = "The storm had been building over the grey water since noon, and the gulls"
    for turn in range(4):
        target = RecordingTarget()
        result = await core.handle(inbound(f"Bram, part {turn}: {story} " * 2), target)
        assert result is not None and result.status == "ok", result
        assert target.text.strip() and target.edits >= 2  # shown as it streamed in
    rows = [row for row in await core.store.list_messages() if row.role == "assistant"]
    assert len(rows) == 4
    for row in rows:
        assert (row.model, row.lora_version) == ("smollm2", "lora:1")  # as the server said
        # The server's own count of the prompt it received: within the budget.
        assert 0 < row.prompt_tokens <= 160, row.prompt_tokens
    assert rows[-1].prompt_tokens > rows[0].prompt_tokens  # history is there, trimmed


async def test_server_killed_mid_reply_then_back(llama: LlamaServer, make_core: MakeCore) -> None:
    # Pip tells a long story (to be cut); Aria's answer afterwards stays short.
    pip = Character(name="Pip", description="A clockwork library owl.", max_new_tokens=400)
    characters = (CHARACTERS[0], pip)
    backend = OpenAIModel(settings(llama, temperature=0.9), characters)
    core = await make_core(model=backend, characters=characters, max_new_tokens=12)
    target = RecordingTarget()
    answer = asyncio.create_task(core.handle(inbound("Pip, tell me a very long story."), target))
    for _ in range(600):  # until the reply is on screen
        if target.text.strip():
            break
        await asyncio.sleep(0.05)
    llama.kill()
    result = await asyncio.wait_for(answer, 30)
    assert result is not None and result.status == "error"
    assert target.text.strip() and target.notices == [APOLOGY]  # the partial, then sorry
    rows = await core.store.list_messages()
    assert rows[-1].status == "error" and "dropped the connection" in rows[-1].error
    llama.start()
    target = RecordingTarget()
    result = await core.handle(inbound("Aria, are you back?"), target)
    assert result is not None and result.status == "ok" and target.text.strip()


def test_the_converted_lora_computes_what_peft_computes(llama: LlamaServer) -> None:
    """engine.gguf_lora's file on llama-server gives the next-token distribution that
    transformers + peft give with the same LoRA (q/k rows permuted right: unpermuted,
    the top five share one token)."""
    import json
    import math
    import urllib.request

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.local_files import convert_bundled

    base_dir = convert_bundled(CACHE, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    question = [{"role": "user", "content": "Tell me about the sea at night."}]
    prompt = tokenizer.apply_chat_template(question, add_generation_prompt=True, tokenize=False)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, llama.loras[0].with_suffix(""))
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        probs = model(**ids).logits[0, -1].softmax(-1)
    top = probs.topk(5)
    expected = {
        tokenizer.decode([int(t)]): float(p) for p, t in zip(top.values, top.indices, strict=True)
    }
    body = {"prompt": prompt, "n_predict": 1, "n_probs": 5, "temperature": 0}
    body["lora"] = [{"id": 0, "scale": 1.0}]
    request = urllib.request.Request(
        f"http://127.0.0.1:{llama.port}/completion",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        first = json.loads(response.read())["completion_probabilities"][0]
    served = {t["token"]: math.exp(t["logprob"]) for t in first["top_logprobs"]}
    shared = expected.keys() & served.keys()
    assert len(shared) >= 4, (expected, served)
    for token in shared:  # Q4_1 base weights, int8 activations: close, not equal
        assert abs(expected[token] - served[token]) < 0.05, (expected, served)
