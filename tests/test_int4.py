"""``[model] dtype = "int4"``: 4-bit weights for decode steps, LoRA still applied per row."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest

from bot.config import ModelSettings
from engine import LoraSpec
from tests.test_base_after_lora import OTHER, SEA, check_base_rows_survive, greedy_ids

torch = pytest.importorskip("torch")

from engine import int4  # noqa: E402
from engine.local_backend import LocalModel  # noqa: E402

pytestmark = pytest.mark.skipif(not int4.available(), reason="no CPU int4 kernel in this torch")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TOLERANCE = 0.125  # one bf16 step at the logits' magnitude (as for the bf16 path)
# charbot's kernels also round each row to int8 per 32 inputs (as llama.cpp's Q8 rows)
NATIVE_TOLERANCE = 0.25


def test_weights_on_the_q4_1_grid_come_back_exactly() -> None:
    """A scale and minimum per 32 weights (the bundled GGUF's Q4_1) comes back."""
    torch.manual_seed(0)
    codes = torch.randint(0, 16, (64, 96)).float()
    codes[:, ::32] = 0  # every group spans the whole 0..15 range, as Q4_1 blocks do
    codes[:, 1::32] = 15
    scale = torch.rand(64, 3).repeat_interleave(32, dim=1) * 0.1
    low = torch.randn(64, 3).repeat_interleave(32, dim=1) * 0.1
    grid = (codes * scale + low).to(torch.bfloat16).float()
    back = int4.dequantize(int4.quantize(grid)).float()
    # Up to bf16 rounding of each group's scale and offset: relative to the group's largest
    # weight, about what storing the weights themselves in bf16 costs.
    largest = grid.view(64, 3, 32).abs().amax(-1, keepdim=True)
    assert bool(((back - grid).view(64, 3, 32).abs() <= 2**-7 * largest).all())


def test_other_weights_are_within_half_a_step() -> None:
    torch.manual_seed(1)
    weight = torch.randn(48, 64)
    back = int4.dequantize(int4.quantize(weight)).float()
    groups = weight.view(48, 2, 32)
    step = (groups.amax(-1) - groups.amin(-1)) / 15
    error = (back - weight).abs().view(48, 2, 32).amax(-1)
    assert bool((error <= step * 0.5 + 0.02 * weight.abs().max()).all())
    x = torch.randn(5, 64).to(torch.bfloat16)
    assert torch.allclose(
        int4.linear(x, int4.quantize(weight)).float(), x.float() @ back.t(), rtol=2e-2, atol=5e-2
    )


def test_the_4bit_output_layer_rescores_its_top_candidates_in_bf16() -> None:
    """The top k of each row carry the bf16 layer's logits (so greedy and top-p picks are
    made on them); the rest the 4-bit ones."""
    from engine.rescored_head import rescored_head

    torch.manual_seed(0)
    weight = (torch.randn(512, 64) * 0.5).to(torch.bfloat16)
    x = torch.randn(3, 64).to(torch.bfloat16)
    quantized = int4.quantize(weight)
    four_bit = int4.linear(x, quantized).float()
    exact = torch.nn.functional.linear(x, weight).float()
    assert not torch.equal(four_bit.argsort(-1), exact.argsort(-1))  # 4 bits do reorder
    got = rescored_head(x, quantized, weight, k=16)
    top = four_bit.topk(16, dim=-1).indices
    assert torch.allclose(got.gather(1, top), exact.gather(1, top), atol=0.05, rtol=0.01)
    rest = torch.ones_like(got, dtype=torch.bool).scatter_(1, top, False)
    assert torch.equal(got[rest], four_bit[rest])
    assert torch.equal(got.argmax(-1), exact.argmax(-1))


def test_shapes_the_kernel_cannot_take_are_refused() -> None:
    assert int4.fits(torch.empty(64, 64)) and not int4.fits(torch.empty(64, 40))
    assert not int4.fits(torch.empty(24, 64))


@functools.cache
def _reference(base: Path, lora: Path | None, kernels=None):
    """transformers (+ peft) on the weights the int4 kernel computes with (in ``kernels``'
    layout, if given)."""
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    with torch.no_grad():
        for layer in net.model.layers:
            for name in PROJECTIONS:
                module = getattr(layer.self_attn, name, None) or getattr(layer.mlp, name)
                module.weight.copy_(int4.dequantize(int4.quantize(module.weight, kernels)))
    if lora is not None:
        from peft import PeftModel

        net = PeftModel.from_pretrained(net, lora)
    return net.eval()


def _served_kernels(model):
    """charbot's kernels if the served model's 4-bit copies are in their layout, else None."""
    from engine import native

    copy = model.scheduler.lean.layers[0][1].int4
    return copy.kernels if isinstance(copy, native.NativeInt4) else None


def assert_reference_greedy(model, base: Path, lora: Path | None, messages, reply) -> None:
    prompt = model.tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=True, tokenize=True, return_dict=False
    )
    kernels = _served_kernels(model)
    tolerance = TOLERANCE if kernels is None else NATIVE_TOLERANCE
    with torch.no_grad():
        net = _reference(base, lora, kernels)
        logits = net(torch.tensor([prompt + reply])).logits[0].float()
    steps = logits[len(prompt) - 1 : -1]
    gaps = steps.max(dim=-1).values - steps[torch.arange(len(reply)), torch.tensor(reply)]
    assert len(reply) > 0 and float(gaps.max()) <= tolerance, gaps.tolist()


@pytest.mark.parametrize("kernels", ["torch", "auto"])
async def test_int4_serves_base_and_lora_rows(tiny_all_linear, monkeypatch, kernels) -> None:
    """Every step on 4 bits (prompts too, for an exact reference): base rows are the
    dequantized model's greedy choice and unchanged by a LoRA loaded for others; a LoRA row
    is peft's choice over the same weights. On torch's kernel and on charbot's."""
    from engine import lean_llama, native

    if kernels == "auto" and native.load(Path("data/models")) is None:
        pytest.skip("charbot's CPU kernels cannot be built here (see the log line)")
    tiny = tiny_all_linear
    monkeypatch.setattr(lean_llama, "INT4_MAX_ROWS", 1 << 20)
    settings = ModelSettings(base=str(tiny["base"]), dtype="int4", batch_wait_ms=30)
    model = LocalModel(
        dataclasses.replace(settings, kernels=kernels), progress=False, worker="thread"
    )
    await model.start()
    try:
        assert model.scheduler.lean is not None and model.scheduler.lean.int4
        assert (_served_kernels(model) is not None) == (kernels == "auto")
        base_reply = await greedy_ids(model, SEA, None, 24)
        assert_reference_greedy(model, tiny["base"], None, SEA, base_reply)
        for reply in await check_base_rows_survive(model, tiny["lora"], n=24):
            assert_reference_greedy(model, tiny["base"], tiny["lora"], OTHER, reply)
    finally:
        await model.close()


async def test_int4_is_used_for_small_decode_steps_only(tiny_all_linear) -> None:
    """Default threshold: a prompt is prefilled on the bf16 weights, decoding on 4 bits; the
    reply differs from the bf16 engine's only by quantization (so it is not the same path)."""
    tiny = tiny_all_linear
    replies = {}
    for dtype in ("bfloat16", "int4"):
        model = LocalModel(
            ModelSettings(base=str(tiny["base"]), dtype=dtype), progress=False, worker="thread"
        )
        await model.start()
        try:
            replies[dtype] = await greedy_ids(model, SEA, LoraSpec("bram", str(tiny["lora"])), 24)
        finally:
            await model.close()
    assert replies["int4"][0] == replies["bfloat16"][0]  # the first token comes from prefill
    assert replies["int4"] != replies["bfloat16"]  # later ones from the 4-bit weights


async def test_int4_needs_a_llama(tmp_path) -> None:
    from engine.errors import ModelError
    from engine.loading import load_model
    from engine.local_files import ModelSource

    settings = ModelSettings(base=str(tmp_path), dtype="int4")
    with pytest.raises(ModelError, match="int4"):
        load_model(ModelSource(str(tmp_path), "x"), settings)


def test_saved_4bit_copies_are_reused_until_their_weights_change(tmp_path) -> None:
    from engine.int4_cache import Int4Store

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"first")
    torch.manual_seed(0)
    weight = torch.randn(32, 64).to(torch.bfloat16)
    first = Int4Store.for_checkpoint(tmp_path / "cache", tmp_path, [weights])
    made = first.get("layers.0.qkv", weight)
    first.save()
    again = Int4Store.for_checkpoint(tmp_path / "cache", tmp_path, [weights])
    assert again.saved  # read back, not quantized again
    reused = again.get("layers.0.qkv", weight)
    assert not again.made
    assert torch.equal(reused.packed, made.packed)
    assert torch.equal(reused.scales_zeros, made.scales_zeros)
    x = torch.randn(2, 64).to(torch.bfloat16)
    assert torch.equal(int4.linear(x, reused), int4.linear(x, made))
    weights.write_bytes(b"other weights")  # a new checkpoint in the same place
    changed = Int4Store.for_checkpoint(tmp_path / "cache", tmp_path, [weights])
    assert not changed.saved
    changed.get("layers.0.qkv", weight)
    assert changed.made
    changed.path.write_bytes(b"damaged")  # e.g. a disk that filled up: quantize again
    damaged = Int4Store.for_checkpoint(tmp_path / "cache", tmp_path, [weights])
    assert not damaged.saved
    assert torch.equal(damaged.get("layers.0.qkv", weight).packed, made.packed)


def test_copies_of_checkpoints_that_are_gone_are_pruned(tmp_path) -> None:
    from engine.int4_cache import Int4Store

    weight = torch.randn(32, 64).to(torch.bfloat16)
    stores = []
    for name in ("old", "new"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(name.encode())
        files = [tmp_path / name / "model.safetensors"]
        stores.append(Int4Store.for_checkpoint(tmp_path / "cache", tmp_path / name, files))
    old, new = stores
    old.get("head", weight)
    old.save()
    (tmp_path / "old" / "model.safetensors").unlink()  # that model was deleted
    new.get("head", weight)
    new.save()
    assert new.path.is_file() and not old.path.exists()
