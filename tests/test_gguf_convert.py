"""Our GGUF → safetensors conversion gives what transformers' own conversion gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import ModelError

np = pytest.importorskip("numpy")
gguf = pytest.importorskip("gguf")

from engine.gguf_convert import LAYER_NAMES as LAYER  # noqa: E402
from engine.gguf_convert import TOP_NAMES as TOP  # noqa: E402
from engine.gguf_convert import convert_llama_gguf, hf_name, unpermute  # noqa: E402
from engine.gguf_lora import permute  # noqa: E402

HEADS, KV_HEADS, HIDDEN, FFN, LAYERS, VOCAB = 4, 2, 64, 96, 2, 40


def hf_weights(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    head_dim = HIDDEN // HEADS
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,),
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attn.k_proj.weight": (KV_HEADS * head_dim, HIDDEN),
            p + "self_attn.v_proj.weight": (KV_HEADS * head_dim, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": (FFN, HIDDEN),
            p + "mlp.up_proj.weight": (FFN, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, FFN),
        }
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def write_gguf(path: Path, weights: dict) -> None:
    """A tiny Llama GGUF as llama.cpp's converter writes one (f32 tensors, q/k permuted)."""
    names = {v: k for k, v in {**TOP, **LAYER}.items()}
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    for name, weight in weights.items():
        if name.endswith("q_proj.weight"):
            weight = permute(weight, HEADS)
        elif name.endswith("k_proj.weight"):
            weight = permute(weight, KV_HEADS)
        stem = name.removesuffix(".weight")
        if stem.startswith("model.layers."):
            index, part = stem.removeprefix("model.layers.").split(".", 1)
            writer.add_tensor(f"blk.{index}.{names[part]}.weight", weight)
        else:
            writer.add_tensor(f"{names[stem]}.weight", weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_names_and_rotary_rows() -> None:
    assert hf_name("blk.3.attn_q.weight") == "model.layers.3.self_attn.q_proj.weight"
    assert hf_name("output_norm.weight") == "model.norm.weight"
    with pytest.raises(ModelError, match="unexpected tensor"):
        hf_name("blk.0.ssm_conv.weight")
    weight = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    assert np.array_equal(unpermute(permute(weight, 2), 2), weight)
    assert not np.array_equal(permute(weight, 2), weight)


def test_a_tiny_gguf_round_trips(tmp_path: Path) -> None:
    weights = hf_weights()
    write_gguf(tmp_path / "tiny.gguf", weights)
    out = tmp_path / "hf"
    convert_llama_gguf(tmp_path / "tiny.gguf", out)
    from safetensors.numpy import load_file

    got = load_file(str(out / "model.safetensors"))
    assert set(got) == set(weights)
    for name, weight in weights.items():
        assert np.array_equal(got[name], weight), name
    config = json.loads((out / "config.json").read_text())
    assert config["num_key_value_heads"] == KV_HEADS and config["tie_word_embeddings"] is True
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)


def test_not_a_llama_is_refused(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(str(tmp_path / "x.gguf"), arch="mamba")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelError, match="not a Llama"):
        convert_llama_gguf(tmp_path / "x.gguf", tmp_path / "out")


@pytest.mark.integration
def test_the_bundled_model_converts_as_transformers_does(tmp_path: Path) -> None:
    """Same tensors (bit for bit) and config as ``from_pretrained(gguf_file=...)``."""
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    from engine.local_files import find_bundled_gguf

    bundled = find_bundled_gguf()
    convert_llama_gguf(bundled, tmp_path)
    ours = load_file(str(tmp_path / "model.safetensors"))
    reference = AutoModelForCausalLM.from_pretrained(bundled.parent, gguf_file=bundled.name)
    state = reference.state_dict()
    assert set(ours) | {"lm_head.weight"} == set(state)  # tied: lm_head is the embedding
    for name, tensor in ours.items():
        assert torch.equal(torch.from_numpy(tensor), state[name].float()), name
    config = json.loads((tmp_path / "config.json").read_text())
    for key, value in config.items():
        if key not in ("dtype", "architectures"):
            assert getattr(reference.config, key) == value, key
