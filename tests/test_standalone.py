"""The standalone model process: a plain Llama and its LoRAs without transformers or peft.

Compared against the transformers engine on the same tiny checkpoint: the same greedy
replies for the base model, for LoRAs on every projection, for rsLoRA with per-module
alpha, and for rows on different LoRAs in one batch.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import ModelSettings
from engine import GenerationRequest, LoraSpec, Sampling
from engine.errors import LoraLoadError
from engine.standalone import find_checkpoint, unsupported

pytest.importorskip("torch")

from engine.local_backend import LocalModel

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "A longer question, with ünïcödé, so rows differ in length."}],
]


@pytest.fixture(scope="module")
def loras(tiny_all_linear, tmp_path_factory) -> dict[str, Path]:
    """The all-linear LoRA, an rsLoRA with a per-module alpha, and one that also trains the
    output layer (modules_to_save), all on the tiny base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("standalone-loras")
    base = tiny_all_linear["base"]
    made = {"all": tiny_all_linear["lora"]}
    configs = {
        "rslora": LoraConfig(
            r=4,
            lora_alpha=6,
            use_rslora=True,
            alpha_pattern={"v_proj": 20},
            target_modules=["q_proj", "v_proj", "down_proj"],
            init_lora_weights=False,
        ),
        "head": LoraConfig(
            r=4, target_modules=["q_proj"], modules_to_save=["lm_head"], init_lora_weights=False
        ),
    }
    for name, config in configs.items():
        import torch

        torch.manual_seed(7)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
        model.save_pretrained(root / name / "v1")
        made[name] = root / name / "v1"
    return made


async def replies(model: LocalModel, specs: list[LoraSpec | None]) -> list[str]:
    """Greedy replies for every prompt × spec, all submitted at once (one mixed batch)."""

    async def one(messages, spec) -> str:
        text = ""
        async for chunk in model.stream(GenerationRequest(messages, Sampling(24, 0), spec)):
            text += chunk.text
        return text

    return await asyncio.gather(*(one(p, s) for p in PROMPTS for s in specs))


async def started(base: Path, **settings) -> LocalModel:
    model = LocalModel(
        ModelSettings(base=str(base), batch_wait_ms=50, threads=1, **settings), progress=False
    )
    await model.start()
    return model


# bf16 + 4-bit on torch's kernels: charbot's round each row to int8 parts, a step function
# of the row, so the last-bit differences the two engines' prompt batches may have can
# flip a near tie on this random model (tests/test_int4.py checks those kernels against
# peft with a tolerance).
@pytest.mark.parametrize("dtype", ["float32", "auto"])
async def test_standalone_serves_like_transformers(tiny_all_linear, loras, dtype):
    specs = [
        None,
        LoraSpec("bram", str(loras["all"])),
        LoraSpec("rs", str(loras["rslora"])),
    ]
    kernels = "torch"
    reference = await started(
        tiny_all_linear["base"], dtype=dtype, engine="transformers", kernels=kernels
    )
    try:
        assert reference.scheduler.info.engine == "transformers"
        expected = await replies(reference, specs)
    finally:
        await reference.close()
    model = await started(tiny_all_linear["base"], dtype=dtype, kernels=kernels)
    try:
        assert model.scheduler.info.engine == "standalone"
        assert model.dtype == reference.dtype
        assert await replies(model, specs) == expected
        # The LoRAs changed the replies (or the comparison above would prove little).
        assert len(set(expected[:3])) == 3
        # Switching a name to a new version and unloading work as with peft.
        assert await model.load_lora("bram", str(loras["rslora"])) == "v1"
        assert model.loaded_loras() == {"bram": "v1", "rs": "v1"}
        await model.unload_lora("bram")
        assert model.loaded_loras() == {"rs": "v1"}
    finally:
        await model.close()


async def test_loras_it_cannot_serve_name_the_fix(tiny_all_linear, loras):
    head = str(loras["head"])
    model = await started(tiny_all_linear["base"], dtype="float32")
    try:
        with pytest.raises(LoraLoadError) as info:
            await model.load_lora("aria", head)
        message = str(info.value)
        assert "lm_head" in message and 'engine = "transformers"' in message
        assert "\n" not in message and head in message
        # The model keeps serving, with the LoRAs it can.
        assert await model.load_lora("bram", str(loras["all"])) == "v1"
    finally:
        await model.close()
    model = await started(tiny_all_linear["base"], dtype="float32", engine="transformers")
    try:
        assert await model.load_lora("aria", head) == "v1"
    finally:
        await model.close()


def test_the_model_process_imports_neither_transformers_nor_peft(tiny_all_linear):
    """What the start-up time rests on: load, LoRA and a decode step, no transformers."""
    script = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
import torch
from bot.config import ModelSettings
from engine.batch_cache import BatchKV
from engine.loading import build_scheduler, load_standalone
from engine.local_files import ModelSource

settings = ModelSettings(base={str(tiny_all_linear["base"])!r}, threads=1)
loaded = load_standalone(ModelSource(settings.base, "tiny"), settings)
scheduler = build_scheduler(loaded, settings)
name = scheduler.registry.load("bram", {str(tiny_all_linear["lora"])!r}).peft_name
scheduler.registry.multi.set_rows([name])
kv = BatchKV(len(loaded.model.model.layers), 1, transformers=False)
ids, mask, positions = kv.prefill_inputs([[5, 6, 7]], 0)
logits = scheduler.lean.forward(ids, mask, positions, kv, scheduler.registry.multi)
assert logits.shape == (1, loaded.model.config.vocab_size), logits.shape
print(sorted(m for m in ("transformers", "peft") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_what_goes_to_transformers():
    plain = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    assert unsupported(plain) is None
    assert unsupported({**plain, "rope_parameters": {"rope_type": "default"}}) is None
    assert unsupported({**plain, "rope_scaling": {"rope_type": "llama3"}}) is None
    assert "yarn" in unsupported({**plain, "rope_scaling": {"rope_type": "yarn"}})
    assert "mistral" in unsupported({"model_type": "mistral"})
    assert "attention_bias" in unsupported({**plain, "attention_bias": True})
    assert "gelu" in unsupported({**plain, "hidden_act": "gelu"})
    assert unsupported({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}) is None


def test_checkpoints_are_found_in_a_directory_or_the_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert find_checkpoint(str(directory)) is None  # no safetensors: transformers loads it
    (directory / "model.safetensors").write_bytes(b"")
    assert find_checkpoint(str(directory)) == directory
    # An HF id resolves to its snapshot in the local cache, never to a download.
    hub = tmp_path / "hub"
    snapshot = hub / "models--org--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (hub / "models--org--tiny" / "refs").mkdir()
    (hub / "models--org--tiny" / "refs" / "main").write_text("abc123")
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    assert find_checkpoint("org/tiny") == snapshot
    assert find_checkpoint("org/absent") is None


def test_a_model_process_stopped_before_loading_exits_cleanly():
    """The parent starts the model process before it has found the base model; when
    finding it fails, the waiting child must end at once and without a traceback."""
    from engine.worker_process import ProcessScheduler

    process = ProcessScheduler(ModelSettings(threads=1))
    process.spawn()
    process.stop()
    assert process._process.returncode == 0


async def test_a_sharded_checkpoint_loads_like_one_file(tiny_all_linear, tmp_path):
    """Checkpoints split into several safetensors files (an index names them) load too,
    and the 4-bit copies are keyed on every shard."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_all_linear["base"]).save_pretrained(
        sharded, max_shard_size="100KB"
    )
    AutoTokenizer.from_pretrained(tiny_all_linear["base"]).save_pretrained(sharded)
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    assert find_checkpoint(str(sharded)) == sharded
    specs = [None, LoraSpec("bram", str(tiny_all_linear["lora"]))]
    texts = []
    for base in (tiny_all_linear["base"], sharded):
        model = await started(base, dtype="float32", cache_dir=tmp_path / "cache")
        try:
            assert model.scheduler.info.engine == "standalone"
            texts.append(await replies(model, specs))
        finally:
            await model.close()
    assert texts[0] == texts[1]
