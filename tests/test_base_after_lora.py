"""A row without a LoRA is untouched by LoRAs loaded for other names (issue 15).

After peft wraps a projection for the first LoRA, the base rows must still see the base
weight: before any LoRA is loaded, while one is loaded (used by another row of the same
batch, and not used at all), and after it is unloaded; on every decode path the engine has
(the lean Llama path and transformers' own forward, fp32 and bf16 with prepacked weights).
A row with a LoRA must equal peft's own reference output.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import pytest

from bot.config import ModelSettings
from engine import LoraSpec, Sampling
from tests.test_integration import CACHE
from tests.tiny_model import ALL_LINEAR

torch = pytest.importorskip("torch")

from engine.local_backend import LocalModel  # noqa: E402

SEA = ({"role": "user", "content": "Describe the sea at night."},)
OTHER = ({"role": "user", "content": "Who keeps the lighthouse?"},)
PATHS = ("lean", "plain")
DTYPES = ("float32", "bfloat16")


async def start(base: Path | str, dtype: str, path: str, **settings) -> LocalModel:
    model = LocalModel(
        ModelSettings(base=str(base), dtype=dtype, batch_wait_ms=30, **settings),
        progress=False,
        worker="thread",
    )
    await model.start()
    lean = model.scheduler.lean
    if path == "plain":
        model.scheduler.lean = None  # transformers' own forward, through peft's modules
    else:
        assert lean is not None, "the lean path should serve a Llama model"
    return model


async def greedy_ids(model, messages, lora: LoraSpec | None, n: int) -> list[int]:
    """The engine's greedy token ids, read from its scheduler (text would not round-trip:
    the tiny model's bytes need not form valid UTF-8)."""
    from engine.jobs import Job

    job = Job(
        prompt=model._encode(list(messages)),
        sampling=Sampling(n, 0.0),
        lora=lora,
        loop=asyncio.get_running_loop(),
        events=asyncio.Queue(),
    )
    model.scheduler.submit(job)
    ids = []
    while True:
        kind, value = await job.events.get()
        if kind == "token":
            ids.append(value)
        elif kind == "done":
            return ids
        else:
            raise value


# How far below peft's best logit an engine token may be: fp32 arithmetic in another order,
# or one bf16 step at the logits' magnitude (bf16 logits tie often; a tie may go either way).
TOLERANCE = {"float32": 1e-3, "bfloat16": 0.125}


@functools.cache
def _peft_net(base: Path, lora: Path, dtype: str):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
    return PeftModel.from_pretrained(net, lora).eval()


def assert_peft_greedy(model, base: Path, lora: Path, reply: list[int], dtype: str) -> None:
    """Every token of ``reply`` (to OTHER) is a greedy choice of peft's own LoRA modules:
    teacher-forced through transformers + peft, it is the argmax at each step, within
    TOLERANCE of the best logit."""
    prompt = model.tokenizer.apply_chat_template(
        list(OTHER), add_generation_prompt=True, tokenize=True, return_dict=False
    )
    with torch.no_grad():
        logits = _peft_net(base, lora, dtype)(torch.tensor([prompt + reply])).logits[0].float()
    steps = logits[len(prompt) - 1 : -1]
    gaps = steps.max(dim=-1).values - steps[torch.arange(len(reply)), torch.tensor(reply)]
    assert len(reply) > 0 and float(gaps.max()) <= TOLERANCE[dtype], gaps.tolist()


async def check_base_rows_survive(model, lora: Path, n: int) -> list[list[int]]:
    """The base row's greedy ids before, during (mixed and unmixed) and after a LoRA;
    returns the LoRA row's ids alone and in the mixed batch."""
    spec = LoraSpec("bram", str(lora))
    before = await greedy_ids(model, SEA, None, n)
    assert await model.load_lora("bram", str(lora)) == "v1"
    assert await greedy_ids(model, SEA, None, n) == before  # loaded, used by nobody
    alone = await greedy_ids(model, OTHER, spec, n)
    base_row, mixed = await asyncio.gather(
        greedy_ids(model, SEA, None, n), greedy_ids(model, OTHER, spec, n)
    )
    assert model.scheduler.max_rows_seen >= 2  # they really shared a batch
    assert base_row == before
    await model.unload_lora("bram")
    assert await greedy_ids(model, SEA, None, n) == before  # unloaded again
    return [alone, mixed]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", PATHS)
async def test_base_row_unchanged_by_another_names_lora(tiny_all_linear, dtype, path) -> None:
    tiny = tiny_all_linear
    model = await start(tiny["base"], dtype, path)
    try:
        for reply in await check_base_rows_survive(model, tiny["lora"], n=24):
            assert_peft_greedy(model, tiny["base"], tiny["lora"], reply, dtype)
    finally:
        await model.close()


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict[str, Path]:
    """The bundled default model (converted once into data/models, shared with `make run`)
    and a random LoRA on all its linear layers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.local_files import resolve_base

    base = Path(resolve_base("smollm2", CACHE, progress=False).path)
    net = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(7)
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=list(ALL_LINEAR), init_lora_weights=False
    )
    peft_model = get_peft_model(net, config)
    with torch.no_grad():  # a small random LoRA: visibly changes the reply, keeps it fluent
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.05)
    lora = tmp_path_factory.mktemp("real-lora") / "bram" / "v1"
    peft_model.save_pretrained(lora)
    return {"base": base, "lora": lora}


@pytest.mark.integration
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", PATHS)
async def test_default_model_base_row_unchanged_by_a_lora(real, dtype, path) -> None:
    model = await start(real["base"], dtype, path)
    try:
        before = await greedy_ids(model, SEA, None, 16)
        assert len(set(before)) > 3  # real words, not one token repeated ("--------")
        for reply in await check_base_rows_survive(model, real["lora"], n=16):
            assert_peft_greedy(model, real["base"], real["lora"], reply, dtype)
    finally:
        await model.close()
