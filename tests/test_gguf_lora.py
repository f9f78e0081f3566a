"""engine.gguf_lora on small synthetic adapters: names, shapes, the q/k permutation, and
one-line refusals. (That llama-server computes with the result what peft computes is in
tests/test_llama_server.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from engine.gguf_lora import convert, main

HEADS, KV_HEADS, HEAD_DIM, HIDDEN, RANK = 4, 2, 4, 16, 2


def write_adapter(tmp_path: Path, *, model_type: str = "llama", **lora: object) -> Path:
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": model_type,
                "num_attention_heads": HEADS,
                "num_key_value_heads": KV_HEADS,
            }
        )
    )
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"lora_alpha": 8, **lora}))
    prefix = "base_model.model.model.layers.0"
    rng = np.random.default_rng(0)
    tensors = {
        f"{prefix}.self_attn.q_proj.lora_A.weight": rng.normal(size=(RANK, HIDDEN)),
        f"{prefix}.self_attn.q_proj.lora_B.weight": rng.normal(size=(HEADS * HEAD_DIM, RANK)),
        f"{prefix}.self_attn.k_proj.lora_A.weight": rng.normal(size=(RANK, HIDDEN)),
        f"{prefix}.self_attn.k_proj.lora_B.weight": rng.normal(size=(KV_HEADS * HEAD_DIM, RANK)),
        f"{prefix}.mlp.down_proj.lora_A.weight": rng.normal(size=(RANK, 3 * HIDDEN)),
        f"{prefix}.mlp.down_proj.lora_B.weight": rng.normal(size=(HIDDEN, RANK)),
    }
    save_file(
        {k: v.astype(np.float32) for k, v in tensors.items()}, adapter / "adapter_model.safetensors"
    )
    return adapter


def read(path: Path) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {
        name: reader.fields[name].contents()
        for name in ("general.architecture", "general.type", "adapter.type", "adapter.lora.alpha")
    }
    return fields, {t.name: np.array(t.data) for t in reader.tensors}


def test_names_metadata_and_rotary_permutation(tmp_path: Path) -> None:
    adapter = write_adapter(tmp_path)
    out = tmp_path / "out.gguf"
    assert convert(adapter, tmp_path, out) == 3
    fields, tensors = read(out)
    assert fields == {
        "general.architecture": "llama",
        "general.type": "adapter",
        "adapter.type": "lora",
        "adapter.lora.alpha": 8.0,
    }
    assert sorted(tensors) == [
        "blk.0.attn_k.weight.lora_a",
        "blk.0.attn_k.weight.lora_b",
        "blk.0.attn_q.weight.lora_a",
        "blk.0.attn_q.weight.lora_b",
        "blk.0.ffn_down.weight.lora_a",
        "blk.0.ffn_down.weight.lora_b",
    ]
    from safetensors.numpy import load_file

    source = load_file(str(adapter / "adapter_model.safetensors"))
    q_b = source["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    # Within each head the rows go from [first half, second half] to interleaved pairs.
    head = q_b[:HEAD_DIM]
    expected = np.stack([head[: HEAD_DIM // 2], head[HEAD_DIM // 2 :]], axis=1).reshape(head.shape)
    np.testing.assert_array_equal(tensors["blk.0.attn_q.weight.lora_b"][:HEAD_DIM], expected)
    k_b = source["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"]
    assert not np.array_equal(tensors["blk.0.attn_k.weight.lora_b"], k_b)  # permuted too
    down_a = source["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"]
    np.testing.assert_array_equal(tensors["blk.0.ffn_down.weight.lora_a"], down_a)  # as is


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"model_type": "gpt2"}, "only Llama-architecture models"),
        ({"use_dora": True}, "DoRA LoRAs and LoRA biases"),
    ],
)
def test_what_cannot_be_converted_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kwargs: dict, problem: str
) -> None:
    adapter = write_adapter(tmp_path, **kwargs)
    assert main([str(adapter), str(tmp_path), str(tmp_path / "out.gguf")]) == 2
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1
