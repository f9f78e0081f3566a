"""A charbot (peft) LoRA of a Llama-architecture model as a GGUF LoRA for llama-server.

llama-server loads LoRAs only at start (``--lora-scaled FILE:0``) and only as GGUF. This
writes the file with the ``gguf`` package that charbot already depends on, following
llama.cpp's conventions: tensor names ``blk.N.<ggml name>.weight.lora_a`` / ``.lora_b``, and
the query/key rows permuted the way llama.cpp's converter permutes the base weights for its
rotary embedding (only B has those rows). llama.cpp's own ``convert_lora_to_gguf.py`` does
the same for every architecture; this covers the Llama family, which the bundled model is.

``python -m engine.gguf_lora LORA_DIR BASE_CONFIG_DIR OUT.gguf``
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

# peft module name -> llama.cpp's tensor name inside a block
GGML_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_KEY = re.compile(r"layers\.(\d+)\.(\w+\.\w+)\.lora_([AB])\.weight$")


def permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout: each head's two halves interleaved (rows only)."""
    return (
        rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:])
        .swapaxes(1, 2)
        .reshape(rows.shape)
    )


def convert(lora_dir: Path, base_config_dir: Path, out: Path) -> int:
    """Write ``out`` from the peft adapter in ``lora_dir``; return the tensor pairs written.

    Raises ValueError naming what does not fit (an architecture, a module, DoRA, a bias).
    """
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((base_config_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise ValueError(
            f"only Llama-architecture models are converted here, not {config.get('model_type')!r}; "
            "use llama.cpp's convert_lora_to_gguf.py"
        )
    lora = json.loads((lora_dir / "adapter_config.json").read_text())
    if lora.get("use_dora") or lora.get("bias", "none") != "none":
        raise ValueError("DoRA LoRAs and LoRA biases have no GGUF form in llama.cpp")
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads")
    tensors = load_file(str(lora_dir / "adapter_model.safetensors"))
    writer = gguf.GGUFWriter(str(out), arch="llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    # llama.cpp scales by alpha / rank, as peft does (rank read from the tensors).
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(lora["lora_alpha"]))
    pairs = 0
    for key in sorted(tensors):
        found = _KEY.search(key)
        if not found:
            raise ValueError(f"{key}: not a LoRA weight of a Llama layer this converter knows")
        layer, module, half = found.groups()
        if module not in GGML_NAMES:
            raise ValueError(f"{key}: module {module} has no llama.cpp tensor name here")
        data = tensors[key].astype(np.float32)
        if half == "B" and module == "self_attn.q_proj":
            data = permute(data, heads)
        elif half == "B" and module == "self_attn.k_proj":
            data = permute(data, kv_heads or heads)
        name = f"blk.{layer}.{GGML_NAMES[module]}.weight.lora_{half.lower()}"
        writer.add_tensor(name, np.ascontiguousarray(data))
        pairs += half == "A"
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return pairs


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m engine.gguf_lora LORA_DIR BASE_CONFIG_DIR OUT.gguf")
        return 2
    try:
        pairs = convert(Path(args[0]), Path(args[1]), Path(args[2]))
    except (OSError, ValueError, KeyError) as exc:
        print(f"cannot convert {args[0]}: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args[2]}: {pairs} LoRA pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
