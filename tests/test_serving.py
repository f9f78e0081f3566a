"""Serving: continuous batching with mixed LoRAs on the tiny random model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.config import ModelSettings
from engine import GenerationRequest, LoraSpec, Sampling
from engine.errors import Busy, LoraLoadError
from tests.tiny_model import build_tiny_adapter, build_tiny_model

pytest.importorskip("torch")

from engine.local_backend import LocalModel

PROMPTS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "A much longer question, with ünïcödé, to pad the batch."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}],
]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serving")
    base = build_tiny_model(root / "base")
    other = build_tiny_model(root / "other", hidden_size=32)
    return {
        "base": base,
        "a1": build_tiny_adapter(base, root / "aria" / "v1", seed=1),
        "a2": build_tiny_adapter(base, root / "aria" / "v2", seed=2),
        "b1": build_tiny_adapter(base, root / "bram" / "v1", seed=3),
        "other": build_tiny_adapter(other, root / "wrong" / "v1", seed=4),
    }


async def make_model(tiny, **settings) -> LocalModel:
    model = LocalModel(
        ModelSettings(base=str(tiny["base"]), dtype="float32", **settings),
        progress=False,
        worker="thread",  # starts in a fraction of a second; the process path is tested below
    )
    await model.start()
    return model


@pytest.fixture
async def model(tiny):
    m = await make_model(tiny, max_batch_size=8, batch_wait_ms=30)
    yield m
    await m.close()


async def reply(model, messages, lora=None, n=20, *, on_first=None):
    text, usage, first = "", None, True
    async for chunk in model.stream(GenerationRequest(messages, Sampling(n, 0), lora)):
        text += chunk.text
        usage = chunk.usage or usage
        if first and on_first is not None:
            first = False
            await on_first()
    return text, usage


async def wait_for(predicate, timeout=3.0):
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_mixed_batch_rows_equal_each_lora_alone(model, tiny):
    specs = [None, LoraSpec("aria", str(tiny["a1"])), LoraSpec("bram", str(tiny["b1"]))]
    cases = [(p, s) for p in PROMPTS for s in specs]
    solo = [await reply(model, p, s) for p, s in cases]
    assert len({text for text, _ in solo[:3]}) == 3  # the LoRAs really differ
    together = await asyncio.gather(*(reply(model, p, s) for p, s in cases))
    assert [t for t, _ in together] == [t for t, _ in solo]
    assert [u.lora_version for _, u in together] == [None, "v1", "v1"] * 3
    assert model.scheduler.max_rows_seen >= 6  # they really shared batches


async def test_requests_join_a_running_batch(model, tiny):
    spec = LoraSpec("aria", str(tiny["a1"]))
    solo_long = await reply(model, PROMPTS[1], spec, n=60)
    solo_short = [await reply(model, p, None) for p in PROMPTS]
    long_task = asyncio.create_task(reply(model, PROMPTS[1], spec, n=60))
    await wait_for(lambda: model.scheduler.steps > 5)
    shorts = await asyncio.gather(*(reply(model, p, None) for p in PROMPTS))
    assert not long_task.done()  # the short ones joined and finished while it ran
    assert await long_task == solo_long
    assert shorts == solo_short


async def test_cancelled_request_frees_its_slot(tiny):
    model = await make_model(tiny, max_batch_size=2, batch_wait_ms=0)
    try:
        solo = await reply(model, PROMPTS[0], None, n=400)
        keeper = asyncio.create_task(reply(model, PROMPTS[0], None, n=400))
        doomed = asyncio.create_task(reply(model, PROMPTS[1], None, n=900))
        await wait_for(lambda: model.scheduler.active == 2)
        third = asyncio.create_task(reply(model, PROMPTS[2], None, n=10))
        await wait_for(lambda: model.scheduler.waiting == 1)  # no free slot yet
        assert model.scheduler.active == 2
        doomed.cancel()
        _, usage = await asyncio.wait_for(third, 5)  # got the freed slot
        assert usage.completion_tokens > 0
        assert await keeper == solo
        with pytest.raises(asyncio.CancelledError):
            await doomed
    finally:
        await model.close()


async def test_full_queue_raises_busy(tiny):
    model = await make_model(tiny, max_batch_size=1, max_queue=1, batch_wait_ms=0)
    try:
        running = asyncio.create_task(reply(model, PROMPTS[0], None, n=300))
        await wait_for(lambda: model.scheduler.active == 1)
        queued = asyncio.create_task(reply(model, PROMPTS[1], None, n=5))
        await wait_for(lambda: model.scheduler.waiting == 1)
        with pytest.raises(Busy):
            await reply(model, PROMPTS[2], None)
        running.cancel()
        _, usage = await asyncio.wait_for(queued, 5)
        assert usage.completion_tokens == 5
    finally:
        await model.close()


async def test_switching_version_mid_stream_keeps_the_old_one(model, tiny):
    v1, v2 = LoraSpec("aria", str(tiny["a1"])), LoraSpec("aria", str(tiny["a2"]))
    solo_v1 = await reply(model, PROMPTS[0], v1, n=40)
    solo_v2 = await reply(model, PROMPTS[0], v2, n=40)
    assert solo_v1[0] != solo_v2[0]
    await model.load_lora("aria", str(tiny["a1"]))

    async def switch():
        assert await model.load_lora("aria", str(tiny["a2"])) == "v2"

    running = await reply(model, PROMPTS[0], v1, n=40, on_first=switch)
    assert running == solo_v1  # finished on v1
    assert model.loaded_loras() == {"aria": "v2"}
    assert await reply(model, PROMPTS[0], v2, n=40) == solo_v2
    await model.unload_lora("aria")
    assert model.loaded_loras() == {}
    # Both versions were dropped from peft once nobody used them.
    await wait_for(lambda: model.scheduler.loras_loaded == 0)


async def test_bad_loras_fail_alone(model, tiny, tmp_path):
    good = LoraSpec("bram", str(tiny["b1"]))
    solo = await reply(model, PROMPTS[0], good, n=30)
    running = asyncio.create_task(reply(model, PROMPTS[0], good, n=30))
    await wait_for(lambda: model.scheduler.active == 1)
    missing = str(tmp_path / "ghost" / "v9")
    with pytest.raises(LoraLoadError) as info:
        await reply(model, PROMPTS[1], LoraSpec("ghost", missing))
    assert "ghost" in str(info.value) and missing in str(info.value)
    with pytest.raises(LoraLoadError) as info:
        await reply(model, PROMPTS[1], LoraSpec("wrong", str(tiny["other"])))
    assert "wrong" in str(info.value) and str(tiny["other"]) in str(info.value)
    assert "another base model" in str(info.value)
    assert await running == solo
    _, usage = await reply(model, PROMPTS[2], LoraSpec("aria", str(tiny["a1"])))
    assert usage.lora_version == "v1"


async def test_model_process_serves_like_the_thread(tiny, model):
    """The default worker: the model in a child process (one start, a few seconds)."""
    spec = LoraSpec("aria", str(tiny["a1"]))
    expected = [await reply(model, p, s) for p in PROMPTS[:2] for s in (None, spec)]
    settings = ModelSettings(base=str(tiny["base"]), dtype="float32", batch_wait_ms=30, threads=1)
    child = LocalModel(settings, progress=False)
    await child.start()
    try:
        got = await asyncio.gather(*(reply(child, p, s) for p in PROMPTS[:2] for s in (None, spec)))
        assert [t for t, _ in got] == [t for t, _ in expected]
        assert [u.lora_version for _, u in got] == [None, "v1"] * 2
        assert child.scheduler.thread_count == 1  # [model] threads reached the child
        with pytest.raises(LoraLoadError) as info:
            await reply(child, PROMPTS[0], LoraSpec("wrong", str(tiny["other"])))
        assert info.value.name == "wrong" and "another base model" in str(info.value)
        with pytest.raises(LoraLoadError):
            await child.load_lora("ghost", "/nonexistent/v1")
        assert await child.load_lora("bram", str(tiny["b1"])) == "v1"
        assert child.loaded_loras() == {"aria": "v1", "bram": "v1"}
        stream = child.stream(GenerationRequest(PROMPTS[0], Sampling(900, 0)))
        async for _ in stream:
            break
        await stream.aclose()
        await wait_for(lambda: child.scheduler.active == 0 and child.scheduler.steps > 0)
        _, usage = await reply(child, PROMPTS[2], None, n=5)
        assert usage.completion_tokens == 5
    finally:
        await child.close()


async def test_prefill_in_groups_matches_solo(model, monkeypatch):
    from engine import scheduler

    solo = [await reply(model, p, None) for p in PROMPTS]
    monkeypatch.setattr(scheduler, "PREFILL_TOKENS", 40)  # every prompt its own group
    together = await asyncio.gather(*(reply(model, p, None) for p in PROMPTS))
    assert together == solo


@pytest.mark.parametrize("shape", ["peaked", "flat", "ties"])
@pytest.mark.parametrize("top_p", [0.0, 0.5, 0.9, 1.0])
def test_the_nucleus_is_the_one_a_full_sort_finds(shape, top_p):
    """top-p looks at the top NUCLEUS_CANDIDATES first; the kept tokens and their weights
    must be those of sorting the whole vocabulary (flat rows need more than that)."""
    import torch

    from engine.scheduler import NUCLEUS_CANDIDATES, nucleus

    torch.manual_seed(0)
    vocab = 4 * NUCLEUS_CANDIDATES
    logits = {
        "peaked": torch.randn(vocab) * 4,
        "flat": torch.randn(vocab) * 0.01,  # the nucleus holds most of the vocabulary
        "ties": torch.tensor([3.0] * 5 + [1.0] * (vocab - 5)),
    }[shape]
    probs = torch.softmax(logits, -1)
    ids, weights = nucleus(probs, top_p)
    ordered = probs.sort(descending=True).values
    before = ordered.cumsum(-1) - ordered
    expected = ordered[: max(1, int((before < top_p).sum()))] if top_p < 1 else ordered
    # The same probabilities are kept (among tied ones, which ids is either sort's choice),
    # and none dropped is likelier than one kept.
    assert torch.equal(weights.sort(descending=True).values, expected)
    assert torch.equal(weights, probs[ids]) and len(set(ids.tolist())) == len(ids)
    dropped = torch.ones(vocab, dtype=torch.bool)
    dropped[ids] = False
    assert not dropped.any() or float(probs[dropped].max()) <= float(weights.min())
    if shape == "flat" and 0 < top_p < 1:
        assert len(ids) > NUCLEUS_CANDIDATES  # the fallback really ran
