"""The fast path's families (engine/lean_family.py): Qwen2 (q/k/v biases), Qwen3 (q/k norm)
and Llama 3.x rope scaling, each a tiny random checkpoint built here.

For each, the lean forward's logits — prefill and a few decode steps, for a batch of rows on
the base model and on two different LoRAs — are compared with transformers' (+ peft's) for
each row alone, in float32 (near exact), bf16 on torch's and on charbot's kernels (one
bf16 rounding apart), and on the 4-bit copies (their quantization apart). A family outside
the fast path falls back to transformers with the reason on the start-up line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from bot.config import ModelSettings
from engine import int4, lean_llama, native
from engine.batch_cache import BatchKV
from engine.lean_family import family_of
from engine.loading import build_scheduler, load_model, load_standalone
from engine.local_files import ModelSource
from tests.tiny_model import ALL_LINEAR, build_tiny_adapter, build_tokenizer

SIZES = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.2,
    tie_word_embeddings=True,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # short, so that these few positions already see scaled and blended frequencies
    "original_max_position_embeddings": 64,
}
PROMPTS = [[5, 9, 33, 70, 2], [8, 100, 7], [40, 41, 42, 43, 44, 45, 46]]
DECODE_STEPS = 4
TOP = 8  # 4-bit path: the logits compared per step (the reference's likeliest tokens)
# max |logit difference| / max |reference logit| against transformers in the same dtype
# (4-bit: bf16 on the dequantized weights), per path. Measured on these models: float32
# ≤ 3e-6, bf16 ≤ 0.023 on torch's kernels and ≤ 0.03 on charbot's, 4-bit ≤ 0.042; a LoRA
# moves the float32 logits by ≥ 0.66 of the scale.
TOLERANCE = {"float32": 1e-4, "bfloat16": 0.05, "int4": 0.08}


def _config(family: str):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    vocab = len(build_tokenizer())
    if family == "qwen2":
        return Qwen2Config(vocab_size=vocab, **SIZES)
    if family == "qwen3":
        return Qwen3Config(vocab_size=vocab, head_dim=32, **SIZES)
    return LlamaConfig(vocab_size=vocab, rope_parameters=LLAMA3_ROPE, **SIZES)


def build_family(directory: Path, family: str, seed: int = 0) -> Path:
    """A tiny random checkpoint of ``family`` (+ tokenizer); its biases and q/k norm
    weights random too (transformers starts them at 0 and 1, which would hide them)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(family)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.copy_(torch.randn_like(param) * 0.5)
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                param.copy_(1 + torch.randn_like(param) * 0.3)
    model.save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    return directory


@dataclass
class Checkpoint:
    base: Path
    loras: dict[str, Path]
    reference: dict[str | None, torch.Tensor]  # per LoRA (None: base) per prompt, later


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Checkpoint]:
    made = {}
    for family in ("qwen2", "qwen3", "llama3"):
        root = tmp_path_factory.mktemp(f"lean-{family}")
        base = build_family(root / "base", family)
        loras = {
            name: build_tiny_adapter(base, root / name / "v1", seed=seed, targets=ALL_LINEAR)
            for name, seed in (("aria", 1), ("bram", 2))
        }
        made[family] = Checkpoint(base, loras, {})
    return made


def _reference_logits(checkpoint: Checkpoint, lora: str | None, tokens: list[int], dtype: str):
    """transformers' (and peft's) logits at every position of ``tokens``, in ``dtype``'s
    compute dtype; for "int4" in bf16 on the weights the 4-bit copies stand for."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    compute = torch.float32 if dtype == "float32" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(checkpoint.base, dtype=compute)
    if dtype == "int4":
        kernels = native.load(Path("data/models"))
        with torch.no_grad():
            for layer in model.model.layers:
                for module in (*layer.self_attn.children(), *layer.mlp.children()):
                    if isinstance(module, torch.nn.Linear):
                        quantized = int4.quantize(module.weight, kernels)
                        module.weight.copy_(int4.dequantize(quantized))
    if lora is not None:
        model = PeftModel.from_pretrained(model, checkpoint.loras[lora])
    with torch.no_grad():
        return model.eval()(torch.tensor([tokens])).logits[0].float()


def _served(checkpoint: Checkpoint, dtype: str, kernels: str, engine: str):
    settings = ModelSettings(
        base=str(checkpoint.base), dtype=dtype, kernels=kernels, engine=engine, threads=1
    )
    source = ModelSource(str(checkpoint.base), checkpoint.base.name)
    loaded = load_standalone(source, settings) or load_model(source, settings, with_tokenizer=False)
    return loaded, build_scheduler(loaded, settings)


def _lean_steps(scheduler, rows: list[str | None], loras: dict[str, Path]):
    """The lean forward over PROMPTS, each row on its LoRA: per step, the logits [rows,
    vocab], and the tokens each row was given (its own greedy choices)."""
    registry = scheduler.registry
    names = {None: None}
    for name, path in loras.items():
        names[name] = registry.load(name, str(path)).peft_name
    registry.multi.set_rows([names[row] or "" for row in rows])
    lean = scheduler.lean
    assert lean.usable(registry)
    kv = BatchKV(len(lean.layers), len(rows), transformers=registry.transformers)
    ids, mask, positions = kv.prefill_inputs(PROMPTS, 0)
    tokens = [list(prompt) for prompt in PROMPTS]
    steps = []
    with torch.no_grad():
        logits = lean.forward(ids, mask, positions, kv, registry.multi)
        for _ in range(DECODE_STEPS):
            steps.append(logits.clone())
            chosen = logits.argmax(-1)
            for row, token in enumerate(chosen.tolist()):
                tokens[row].append(token)
            mask, positions = kv.decode_inputs()
            logits = lean.forward(chosen[:, None], mask, positions, kv, registry.multi)
        steps.append(logits.clone())
    return steps, tokens


def _worst_error(checkpoint: Checkpoint, rows, steps, tokens, dtype) -> tuple[float, float]:
    """(largest relative logit error of any step of any row, smallest relative change a
    LoRA makes to a row's reference logits). On the 4-bit path, over each step's top
    candidates only: the output layer's 4-bit logits are rescored in bf16 for those
    (engine/rescored_head.py), the rest stay 4-bit."""
    worst, lora_moves = 0.0, float("inf")
    for row, lora in enumerate(rows):
        start = len(PROMPTS[row]) - 1
        end = start + len(steps)
        want = _reference_logits(checkpoint, lora, tokens[row], dtype)[start:end]
        got = torch.stack([step[row] for step in steps])
        if dtype == "int4":
            top = want.topk(TOP, dim=-1).indices
            want, got = want.gather(1, top), got.gather(1, top)
        scale = float(want.abs().max())
        worst = max(worst, float((got - want).abs().max()) / scale)
        if lora is not None:
            plain = _reference_logits(checkpoint, None, tokens[row], "float32")[start:end]
            exact = _reference_logits(checkpoint, lora, tokens[row], "float32")[start:end]
            lora_moves = min(lora_moves, float((plain - exact).abs().max()) / scale)
    return worst, lora_moves


MODES = [
    ("float32", "torch", "auto"),
    ("bfloat16", "torch", "auto"),
    ("bfloat16", "auto", "auto"),
    ("int4", "auto", "auto"),
    ("bfloat16", "auto", "transformers"),  # the fast path over transformers' own model
]


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama3"])
@pytest.mark.parametrize(("dtype", "kernels", "engine"), MODES)
def test_the_fast_path_computes_what_transformers_does(
    checkpoints, family, dtype, kernels, engine, monkeypatch
) -> None:
    if kernels == "auto" and native.load(Path("data/models")) is None:
        pytest.skip("charbot's CPU kernels cannot be built here")
    checkpoint = checkpoints[family]
    if dtype == "int4":  # every step on the 4-bit copies, prompts too: one reference
        monkeypatch.setattr(lean_llama, "INT4_MAX_ROWS", 1 << 20)
    loaded, scheduler = _served(checkpoint, dtype, kernels, engine)
    lean = scheduler.lean
    assert lean is not None, loaded.path
    name = "llama" if family == "llama3" else family
    assert loaded.path.startswith(f"fast path: {name} (")
    assert (engine == "auto") == (type(loaded.model).__name__ == "StandaloneLlama")
    if kernels == "auto":
        assert lean.kernels is not None and (lean.native_int4 or lean.blocked)
    # rows on the base, on one LoRA and on another, in one batch; then each row alone
    for rows in ([None, "aria", "bram"], ["aria"] * 3, [None] * 3):
        steps, tokens = _lean_steps(scheduler, rows, checkpoint.loras)
        worst, lora_moves = _worst_error(checkpoint, rows, steps, tokens, dtype)
        assert worst <= TOLERANCE[dtype], (rows, worst)
        if any(rows):  # the LoRAs matter far more than the tolerance: they were applied
            assert lora_moves > 3 * TOLERANCE[dtype], lora_moves
    if kernels == "auto":  # the decode steps ran as whole layers on charbot's kernels
        assert lean.layer_calls.structs.get("int4" if dtype == "int4" else "blocked")


def test_llama3_frequencies_are_transformers_bits(checkpoints) -> None:
    """The standalone loader's Llama 3 rotary frequencies, bit for bit."""
    from transformers import AutoModelForCausalLM

    checkpoint = checkpoints["llama3"]
    loaded, _ = _served(checkpoint, "float32", "torch", "auto")
    theirs = AutoModelForCausalLM.from_pretrained(checkpoint.base).model.rotary_emb.inv_freq
    ours = loaded.model.model.rotary_emb.inv_freq
    assert torch.equal(ours, theirs)
    plain = 1.0 / (10000.0 ** (torch.arange(0, 32, 2).float() / 32))
    assert not torch.equal(ours, plain)  # scaled: the test above saw llama3 rope


def test_a_family_outside_the_fast_path_says_why(tmp_path) -> None:
    """A Gemma 3 checkpoint gets transformers, and the start-up line says which path and
    why; so do configs the families do not cover."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=len(build_tokenizer()),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        sliding_window=16,
    )
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(tmp_path)
    build_tokenizer().save_pretrained(tmp_path)
    settings = ModelSettings(base=str(tmp_path), dtype="auto", threads=1)
    source = ModelSource(str(tmp_path), "gemma")
    assert load_standalone(source, settings) is None
    loaded = load_model(source, settings, with_tokenizer=False)
    assert loaded.model._charbot_lean is None
    assert loaded.path.startswith("plain transformers path: gemma3_text not supported")
    assert "sliding-window" in loaded.path
    qwen2 = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}
    assert family_of(qwen2).qkv_bias
    assert "sliding-window" in family_of({**qwen2, "use_sliding_window": True})
    assert "yarn" in family_of({**qwen2, "rope_scaling": {"type": "yarn", "factor": 4.0}})
    assert "o_proj" in family_of({"model_type": "qwen3", "attention_bias": True})
    assert "partial rotary" in family_of({**qwen2, "partial_rotary_factor": 0.5})


async def test_the_start_up_line_names_the_path(checkpoints, caplog) -> None:
    """Through the model process, as `charbot run` starts: the logged line says which path
    the Qwen3 checkpoint got."""
    import logging

    from engine.local_backend import LocalModel
    from engine.native import load as load_kernels

    settings = ModelSettings(base=str(checkpoints["qwen3"].base), dtype="bfloat16", threads=1)
    model = LocalModel(settings, progress=False)
    with caplog.at_level(logging.INFO, logger="engine.local_backend"):
        await model.start()
    try:
        copies = "bf16" if load_kernels(settings.cache_dir) is None else "bf16, blocked copies"
        assert model.path.startswith(f"fast path: qwen3 ({copies}")
        assert model.path in caplog.text and "loaded" in caplog.text
    finally:
        await model.close()
