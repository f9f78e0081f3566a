"""charbot's own CPU kernels (engine/native.py, cpu_kernels.c): each against torch's
arithmetic on random data, how they are built and refused, and the lean path on them."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from bot.config import ModelSettings
from engine import LoraSpec
from tests.test_base_after_lora import OTHER, SEA, assert_peft_greedy, greedy_ids

torch = pytest.importorskip("torch")

from engine import int4, native  # noqa: E402
from engine.local_backend import LocalModel  # noqa: E402

BF16_STEP = 2**-8  # one bf16 rounding, relative


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    built = native.load(tmp_path_factory.mktemp("kernels"))
    if built is None:
        pytest.skip("charbot's CPU kernels cannot be built here (no AVX-512 BF16/VNNI or cc)")
    return built


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want).abs().max() / want.abs().max())


@pytest.mark.parametrize("rows", [1, 2, 5, 8, 11])
def test_int4_matmul_matches_its_dequantized_weight(kernels, rows) -> None:
    """Up to bf16 rounding of the result: the rows are split into two int8 parts (15 bits),
    finer than bf16. 11 rows run as two calls (8 + 3)."""
    torch.manual_seed(rows)
    weight = torch.randn(96, 192).to(torch.bfloat16)
    packed = int4.quantize(weight, kernels)
    assert isinstance(packed, native.NativeInt4)
    x = torch.randn(rows, 192).to(torch.bfloat16)
    want = x.float() @ native.unpack_int4(packed).t()
    assert relative_error(int4.linear(x, packed), want) <= 2 * BF16_STEP
    # a LoRA term added in the same call
    a, b = torch.randn(8, 192) * 0.1, torch.randn(96, 8) * 0.1
    got = packed.linear(x, native.LoraTerm(a, b.t()))
    assert relative_error(got, want + (x.float() @ a.t()) @ b.t()) <= 2 * BF16_STEP


def test_int4_layout_is_the_q4_1_grid(kernels) -> None:
    """Each weight within half a step of its group's grid, and the stored grid exact."""
    torch.manual_seed(0)
    weight = torch.randn(8, 128)
    back = native.unpack_int4(native.pack_int4(weight, kernels))
    groups = weight.view(8, 4, 32)
    step = (groups.amax(-1) - groups.amin(-1)) / 15
    error = (back - weight).abs().view(8, 4, 32).amax(-1)
    assert bool((error <= step * 0.5 * 1.01 + 1e-3).all())


@pytest.mark.parametrize("rows", [1, 3, 9])
def test_bf16_matmul_matches_torch(kernels, rows) -> None:
    torch.manual_seed(rows)
    weight = torch.randn(64, 96).to(torch.bfloat16)
    blocked = native.block_bf16(weight, kernels)
    x = torch.randn(rows, 96).to(torch.bfloat16)
    want = x.float() @ weight.float().t()
    assert relative_error(blocked.linear(x), want) <= BF16_STEP
    a, b = torch.randn(4, 96), torch.randn(64, 4)
    got = blocked.linear(x, native.LoraTerm(a, b.t()))
    assert relative_error(got, want + (x.float() @ a.t()) @ b.t()) <= BF16_STEP


def test_what_the_kernels_cannot_take_stays_on_torch(kernels) -> None:
    assert native.pack_int4(torch.randn(8, 96), kernels) is None  # in: not a multiple of 64
    assert native.pack_int4(torch.randn(6, 128), kernels) is None  # out: not of 4
    assert native.block_bf16(torch.randn(8, 64), kernels) is None  # float32
    huge = torch.randn(16, 64)
    huge[0, 0] = 1e6  # past fp16's range (the layout's scales)
    assert native.pack_int4(huge, kernels) is None
    assert isinstance(int4.quantize(huge, kernels), int4.Int4Weight)  # torch's layout


def test_norm_and_silu_compute_what_torch_does(kernels) -> None:
    """The decoder's RMSNorm (with the residual added in place) and SiLU·up, as the lean
    forward computes them in torch: the same bf16 roundings, so within one bf16 step."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    h = torch.randn(3, 64).to(torch.bfloat16)
    residual = torch.randn(3, 64).to(torch.bfloat16)
    weight = torch.randn(64).to(torch.bfloat16)
    summed = h + residual
    want = weight * F.rms_norm(summed.float(), (64,), eps=1e-5).to(torch.bfloat16)
    got = kernels.rms_norm(h, weight, 1e-5, residual)
    assert torch.equal(h, summed)  # added in place
    assert relative_error(got, want.float()) <= BF16_STEP
    gate_up = torch.randn(2, 96).to(torch.bfloat16)
    want = F.silu(gate_up[:, :48]) * gate_up[:, 48:]
    assert relative_error(kernels.silu_mul(gate_up), want.float()) <= BF16_STEP


def test_rotary_and_attention_of_one_position(kernels) -> None:
    """Rotary embedding written into a cache buffer, then attention over it, against the
    same computed with torch (queries grouped 2 per key/value head)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    batch, heads, kv_heads, dim, length = 2, 4, 2, 32, 7
    qkv = torch.randn(batch, (heads + 2 * kv_heads) * dim).to(torch.bfloat16)
    angles = torch.arange(16)[:, None] * torch.rand(dim // 2)[None]
    cos = torch.cat((angles.cos(), angles.cos()), -1).to(torch.bfloat16)
    sin = torch.cat((-angles.sin(), angles.sin()), -1).to(torch.bfloat16)
    positions = torch.tensor([[length - 1], [length - 1]])
    keys = torch.randn(batch, kv_heads, length + 3, dim).to(torch.bfloat16)  # with headroom
    values = torch.randn(batch, kv_heads, length + 3, dim).to(torch.bfloat16)
    before = keys.clone()
    q = kernels.rope_to_cache(
        qkv, (heads, kv_heads, dim), (cos, sin), positions, (keys, values), length - 1
    )
    split = qkv.view(batch, heads + 2 * kv_heads, dim)
    qk = split[:, : heads + kv_heads]
    turned = qk.unflatten(-1, (2, dim // 2)).flip(-2).flatten(-2)
    rotated = qk * cos[length - 1] + turned * sin[length - 1]
    assert torch.equal(q.view(batch, heads, dim), rotated[:, :heads])
    assert torch.equal(keys[:, :, length - 1], rotated[:, heads:])
    assert torch.equal(values[:, :, length - 1], split[:, heads + kv_heads :])
    assert torch.equal(keys[:, :, : length - 1], before[:, :, : length - 1])  # the rest kept
    grouped = q.view(batch, kv_heads, heads // kv_heads, dim)
    got = kernels.decode_attention(grouped, keys, values, dim**-0.5, length)
    want = F.scaled_dot_product_attention(
        grouped.float(), keys[:, :, :length].float(), values[:, :, :length].float()
    )
    assert relative_error(got, want.reshape(batch, -1)) <= 2 * BF16_STEP
    # row 0 left-padded by 3 positions: as if its history had begun there
    valid = torch.ones(batch, length, dtype=torch.bool)
    valid[0, :3] = False
    got = kernels.decode_attention(grouped, keys, values, dim**-0.5, length, valid)
    mask = valid[:, None, None, :]
    want = F.scaled_dot_product_attention(
        grouped.float(), keys[:, :, :length].float(), values[:, :, :length].float(), mask
    )
    assert relative_error(got, want.reshape(batch, -1)) <= 2 * BF16_STEP


def test_built_once_then_reused_and_refused_with_a_reason(tmp_path, monkeypatch, caplog):
    from engine import native_build

    if native_build.missing_cpu_features():
        pytest.skip("this CPU lacks what the kernels need")
    assert native._load(tmp_path / "a") is not None
    built = list((tmp_path / "a" / "kernels").glob("*.so"))
    assert len(built) == 1
    monkeypatch.setenv("CC", "false")  # a compiler that always fails
    assert native._load(tmp_path / "a") is not None  # the library is there: not rebuilt
    with caplog.at_level(logging.INFO, logger="engine.native_build"):
        assert native._load(tmp_path / "b") is None
    assert "compiling charbot's CPU kernels failed" in caplog.text
    assert not list((tmp_path / "b" / "kernels").glob("*.so"))  # no half-written file left
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma f16c\n")
    assert "avx512_bf16" in native_build.missing_cpu_features(cpuinfo)


@pytest.mark.parametrize("dtype", ["bfloat16", "int4"])
async def test_the_lean_path_runs_on_them(tiny_all_linear, dtype, monkeypatch) -> None:
    """bf16 (blocked copies) and 4-bit decoding on charbot's kernels, one LoRA
    added inside the calls: the LoRA row is still peft's greedy choice (bf16 tolerance, as
    for torch's kernels; the 4-bit one against its own dequantized weights in
    test_int4.py), and a base row is unchanged by it."""
    if native.load(Path("data/models")) is None:
        pytest.skip("charbot's CPU kernels cannot be built here")
    tiny = tiny_all_linear
    settings = ModelSettings(base=str(tiny["base"]), dtype=dtype, batch_wait_ms=30)
    model = LocalModel(settings, progress=False, worker="thread")
    await model.start()
    try:
        lean = model.scheduler.lean
        assert lean.kernels is not None
        assert lean.blocked if dtype == "bfloat16" else lean.native_int4
        calls = []
        original = native.Kernels._call

        def counted(function, x, weight, out_features, lora):
            calls.append(lora is not None)
            return original(function, x, weight, out_features, lora)

        monkeypatch.setattr(native.Kernels, "_call", staticmethod(counted))
        base = await greedy_ids(model, SEA, None, 16)
        assert calls and not any(calls)
        spec = LoraSpec("bram", str(tiny["lora"]))
        assert await model.load_lora("bram", str(tiny["lora"])) == "v1"
        calls.clear()
        reply = await greedy_ids(model, OTHER, spec, 16)
        assert any(calls)  # the LoRA terms went into the kernel calls
        if dtype == "bfloat16":
            assert_peft_greedy(model, tiny["base"], tiny["lora"], reply, dtype)
        assert await greedy_ids(model, SEA, None, 16) == base
    finally:
        await model.close()


def test_threads_split_the_work_and_can_change_at_any_time(kernels) -> None:
    """The same bits from any thread count, and no hang when the count changes between
    calls (workers made just before a call must still take their part)."""
    torch.manual_seed(0)
    weight = torch.randn(64, 128).to(torch.bfloat16)
    packed, blocked = native.pack_int4(weight, kernels), native.block_bf16(weight, kernels)
    x = torch.randn(3, 128).to(torch.bfloat16)
    kernels.set_threads(1)
    expected = (packed.linear(x), blocked.linear(x))
    try:
        for count in (2, 1, 3, 2, 2):
            assert kernels.set_threads(count) == count
            assert torch.equal(packed.linear(x), expected[0])
            assert torch.equal(blocked.linear(x), expected[1])
    finally:
        kernels.set_threads(torch.get_num_threads())


@pytest.fixture(scope="module")
def tiny_wide(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama whose heads are 32 wide (what the one-call layer needs) and an
    all-projection LoRA for it."""
    from tests.tiny_model import ALL_LINEAR, build_tiny_adapter, build_tiny_model

    root = tmp_path_factory.mktemp("tiny-wide")
    base = build_tiny_model(root / "base", hidden_size=128)
    lora = build_tiny_adapter(base, root / "bram" / "v1", targets=ALL_LINEAR)
    return {"base": base, "lora": lora}


@pytest.mark.parametrize("dtype", ["bfloat16", "int4"])
async def test_one_call_per_layer_decodes_as_the_separate_calls_do(tiny_wide, dtype) -> None:
    """The whole-layer call runs the same kernels in the same order: the same greedy
    tokens, base and LoRA rows, as when each step of the layer is its own call, and as
    when a base row and a LoRA row share the steps (each row's term in the calls)."""
    if native.load(Path("data/models")) is None:
        pytest.skip("charbot's CPU kernels cannot be built here")
    settings = ModelSettings(base=str(tiny_wide["base"]), dtype=dtype, batch_wait_ms=30)
    model = LocalModel(settings, progress=False, worker="thread")
    await model.start()
    try:
        lean = model.scheduler.lean
        mode = "int4" if dtype == "int4" else "blocked"
        assert await model.load_lora("bram", str(tiny_wide["lora"])) == "v1"
        spec = LoraSpec("bram", str(tiny_wide["lora"]))
        whole = [await greedy_ids(model, SEA, None, 16), await greedy_ids(model, OTHER, spec, 16)]
        assert lean.layer_calls.structs.get(mode)  # the one-call path served them
        # the two together: rows on different LoRAs, each row's LoRA term in the calls
        mixed = await asyncio.gather(
            greedy_ids(model, SEA, None, 16), greedy_ids(model, OTHER, spec, 16)
        )
        assert model.scheduler.max_rows_seen >= 2
        assert list(mixed) == whole
        lean.layer_calls.structs[mode] = None  # now each step of a layer is its own call
        apart = [await greedy_ids(model, SEA, None, 16), await greedy_ids(model, OTHER, spec, 16)]
        assert whole == apart
        assert whole[0] != whole[1]  # the LoRA changed the reply
    finally:
        await model.close()
