"""Decode weights moved onto transparent huge pages (engine/huge_pages.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from bot.config import ModelSettings  # noqa: E402
from engine import huge_pages, native  # noqa: E402

needs_huge_pages = pytest.mark.skipif(
    not huge_pages.available(), reason="no transparent huge pages on this system"
)


def mapping_of(address: int) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping that holds ``address``."""
    text = Path("/proc/self/smaps").read_text()
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", text):
        start, stop = (int(part, 16) for part in block.split(" ", 1)[0].split("-"))
        if start <= address < stop:
            fields = (line.split(":", 1) for line in block.splitlines()[1:] if ":" in line)
            return {key: value.strip() for key, value in fields}
    raise AssertionError(f"no mapping holds {address:#x}")


@needs_huge_pages
def test_settled_tensors_keep_their_values_on_one_huge_page_mapping() -> None:
    torch.manual_seed(0)
    weight = torch.randn(1000, 700).to(torch.bfloat16)
    codes = torch.randint(0, 255, (3 << 20,), dtype=torch.uint8)
    small = torch.randn(5)
    view = torch.randn(10, 10)[2:]  # part of a larger storage: left where it is
    reshaped = torch.arange(12, dtype=torch.uint8).view(3, 4)  # its _base would stay
    before = [t.clone() for t in (weight, codes, small, view)]
    view_address, reshaped_address = view.data_ptr(), reshaped.data_ptr()
    moved = huge_pages.settle([weight, codes, None, view, reshaped, weight, small])
    assert moved >= sum(t.numel() * t.element_size() for t in (weight, codes, small))
    for got, want in zip((weight, codes, small, view), before, strict=True):
        assert torch.equal(got, want)
    assert view.data_ptr() == view_address and reshaped.data_ptr() == reshaped_address
    # one mapping for all; the first on a 2 MiB boundary, each on a cache line
    storages = {t.untyped_storage().data_ptr() for t in (weight, codes, small)}
    assert len(storages) == 1
    assert weight.data_ptr() % huge_pages.HUGE_PAGE == 0
    assert codes.data_ptr() % 64 == 0 and small.data_ptr() % 64 == 0
    assert mapping_of(weight.data_ptr())["THPeligible"] == "1"  # the kernel took the advice
    weight.add_(1)  # still ordinary writable tensors
    assert torch.equal(weight, before[0] + 1)
    assert huge_pages.settle([weight, codes]) == 0  # already settled: left alone


def test_nothing_moves_where_huge_pages_are_off(tmp_path, monkeypatch, caplog) -> None:
    setting = tmp_path / "enabled"
    setting.write_text("always madvise [never]\n")
    monkeypatch.setattr(huge_pages, "SETTING", setting)
    weight = torch.randn(64, 64)
    address = weight.data_ptr()
    assert not huge_pages.available()
    with caplog.at_level("INFO", logger="engine.huge_pages"):
        assert huge_pages.settle([weight]) == 0
    assert weight.data_ptr() == address
    assert "echo madvise | sudo tee" in caplog.text  # says how to turn them on
    setting.write_text("always [madvise] never\n")
    assert huge_pages.available() == hasattr(__import__("mmap"), "MADV_HUGEPAGE")


@pytest.fixture(autouse=True)
def grad_mode_kept():  # type: ignore[no-untyped-def]
    """Loading turns autograd off for the thread that serves; tests run after these train."""
    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")  # the kernels built once for both dtypes


@needs_huge_pages
@pytest.mark.parametrize("dtype", ["bfloat16", "int4"])
def test_loading_puts_the_kernels_copies_on_huge_pages(tmp_path, cache_dir, dtype) -> None:
    """What every small step reads — the blocked or 4-bit copies — ends up on one huge-page
    mapping when the model process loads (4-bit ones also when read back from their file:
    safetensors' views would have kept the file mapped beside the moved copies)."""
    if native.load(cache_dir) is None:
        pytest.skip("charbot's CPU kernels cannot be built here")
    from engine.loading import load_standalone
    from engine.local_files import resolve_base
    from tests.tiny_model import build_tiny_model

    base = build_tiny_model(tmp_path / "base", hidden_size=128)
    settings = ModelSettings(base=str(base), dtype=dtype, cache_dir=cache_dir)
    loaded = load_standalone(resolve_base(settings.base, settings.cache_dir), settings)
    if dtype == "int4":  # again: now the copies come from the saved file, not the quantizer
        assert list((cache_dir / "int4").glob("*.safetensors"))
        del loaded
        loaded = load_standalone(resolve_base(settings.base, settings.cache_dir), settings)
    lean = loaded.model._charbot_lean
    copies = lean._all_copies()
    assert copies and all(isinstance(c, (native.NativeInt4, native.BlockedBf16)) for c in copies)
    tensors = [c.blob if isinstance(c, native.NativeInt4) else c.blocks for c in copies]
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1
    assert loaded.step_bytes == sum(t.numel() for t in tensors) * tensors[0].element_size()
    assert mapping_of(tensors[0].data_ptr())["THPeligible"] == "1"
    # the greedy tests in test_native.py and test_int4.py decode on these moved copies


@needs_huge_pages
def test_moving_after_steps_ran_keeps_the_one_call_layers_right(tmp_path, cache_dir) -> None:
    """The one-call layer descriptions hold the copies' addresses; moving the copies after
    a step made them must not leave them pointing at freed memory."""
    kernels = native.load(cache_dir)
    if kernels is None:
        pytest.skip("charbot's CPU kernels cannot be built here")
    import json

    from engine import standalone
    from engine.batch_cache import BatchKV
    from engine.lean_llama import LeanLlama
    from engine.multi_lora import MultiLora
    from tests.tiny_model import build_tiny_model

    base = build_tiny_model(tmp_path / "base", hidden_size=128)
    config = json.loads((base / "config.json").read_text())
    with torch.no_grad():
        model = standalone.load(base, config, torch.bfloat16)
        lean = LeanLlama.build(model, kernels=kernels)

        def step() -> torch.Tensor:
            kv = BatchKV(len(lean.layers), 1, transformers=False)
            ids, mask, positions = kv.prefill_inputs([[5, 6, 7, 8, 9]], 0)
            lean.forward(ids, mask, positions, kv, MultiLora())
            mask, positions = kv.decode_inputs()
            return lean.forward(torch.tensor([[10]]), mask, positions, kv, MultiLora())

        before = step()
        assert lean.layer_calls.structs.get("blocked")  # the one-call path ran
        assert lean.to_huge_pages() > 0
        assert torch.equal(step(), before)
