"""The Qwen-architecture part of benchmarks/side_by_side.py (``--qwen``): a Qwen2 model with
random weights at Qwen2.5-0.5B's shapes, on charbot's fast path against transformers'
plain ``generate``, one stream, greedy.

The model is built once (random init, seed 0, bf16) into ``data/bench/qwen2.5-0.5b-random-*``
with the bundled model's tokenizer (its ids all fit the 151936-token vocabulary) and reused.
Printed per engine: one-stream decode tok/s (best of 3) and how many of the first 32 greedy
tokens equal transformers' before the first difference, against transformers in bf16 (the
plain path) and in float32 on the same weights (compared as text: the reply's text must
start with the reference tokens' text). llama-server is not
driven here: that needs the model converted to GGUF (llama.cpp's convert_hf_to_gguf.py and
its gguf package), which this benchmark does not do.
"""

from __future__ import annotations

import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "data" / "bench" / "qwen2.5-0.5b-random-init0.1"
# Random init at transformers' 0.02 gives near-flat logits over 151936 tokens, whose argmax
# any rounding flips: 0.1 gives peaked ones, so greedy agreement says something.
INIT = 0.1
# Qwen2.5-0.5B-Instruct's config.json, the shapes that matter
SHAPES = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
    tie_word_embeddings=True,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    initializer_range=INIT,
)
TOKENS = 32


def build(directory: Path = CACHE) -> Path:
    """The random 0.5B-shaped Qwen2 checkpoint in ``directory``, made on first use."""
    if (directory / "model.safetensors").is_file():
        return directory
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from engine import bundled_base

    tokenizer = AutoTokenizer.from_pretrained(bundled_base(ROOT / "data" / "models"))
    config = Qwen2Config(
        **SHAPES,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16).eval()
    with torch.no_grad():  # Qwen2 starts its q/k/v biases at 0: random ones, as trained
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.copy_(torch.randn_like(param) * 0.1)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _prompt(directory: Path) -> tuple[list[dict[str, str]], list[int], object]:
    from transformers import AutoTokenizer

    from benchmarks.workload import QUESTIONS

    tokenizer = AutoTokenizer.from_pretrained(directory)
    messages = [{"role": "user", "content": QUESTIONS[2]}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return messages, list(ids), tokenizer


def transformers_plain(directory: Path, threads: int, dtype: str) -> dict:
    """transformers' own ``generate`` (greedy, its KV cache): tok/s and the token ids."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    _, ids, _ = _prompt(directory)
    compute = torch.float32 if dtype == "float32" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=compute).eval()
    prompt = torch.tensor([ids])
    best, out = 0.0, []
    with torch.no_grad():
        for _ in range(1 if dtype == "float32" else 3):
            start = time.perf_counter()
            generated = model.generate(
                prompt, max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False
            )
            seconds = time.perf_counter() - start
            out = generated[0, len(ids) :].tolist()
            best = max(best, len(out) / seconds)
    return {"one_stream": round(best, 1), "ids": out}


async def charbot(directory: Path, threads: int, dtype: str) -> dict:
    """charbot's local engine on the checkpoint: one-stream tok/s, the start-up path and
    the greedy reply's token ids (its text encoded again)."""
    from benchmarks.workload import one_stream
    from engine import EngineSettings, GenerationRequest, Sampling, create_model

    messages, _, _ = _prompt(directory)
    settings = EngineSettings(
        base=str(directory), cache_dir=ROOT / "data" / "models", dtype=dtype, threads=threads
    )
    model = create_model(settings, progress=False)
    await model.start()
    try:
        greedy = Sampling(max_new_tokens=TOKENS, temperature=0, repetition_penalty=1.0)
        rate, _, text = await one_stream(model, GenerationRequest(messages, greedy))
        path = getattr(model, "path", "")
    finally:
        await model.close()
    return {"one_stream": rate, "path": path, "text": text}


def same_prefix(text: str, reference: list[int], tokenizer) -> int:
    """How many of the reference's first TOKENS tokens ``text`` starts with."""
    count = 0
    for count in range(1, min(TOKENS, len(reference)) + 1):
        if not text.startswith(tokenizer.decode(reference[:count], skip_special_tokens=True)):
            return count - 1
    return count


async def run(threads: int) -> dict:
    """Every engine on the cached checkpoint; rows keyed by engine name."""
    directory = build()
    _, _, tokenizer = _prompt(directory)
    exact = transformers_plain(directory, threads, "float32")["ids"]
    plain = transformers_plain(directory, threads, "bfloat16")
    plain["text"] = tokenizer.decode(plain["ids"], skip_special_tokens=True)
    rows = {"transformers bf16 (plain path)": plain}
    rows["charbot bf16"] = await charbot(directory, threads, "bfloat16")
    rows["charbot auto (bf16 + 4-bit)"] = await charbot(directory, threads, "auto")
    plain_ids = plain["ids"]
    for row in rows.values():
        row.pop("ids", None)
        text = row.pop("text")
        row["same_as_bf16"] = same_prefix(text, plain_ids, tokenizer)
        row["same_as_float32"] = same_prefix(text, exact, tokenizer)
    return rows


def print_table(rows: dict, threads: int) -> None:
    print(f"\nQwen2 at 0.5B shapes, random weights (init {INIT}); {threads} thread(s) each")
    print(
        f"\n| engine | one stream tok/s | first {TOKENS} greedy tokens = transformers bf16's "
        "| = float32's | path |"
    )
    print("|---|---|---|---|---|")
    for engine, row in rows.items():
        print(
            f"| {engine} | {row['one_stream']} | {row['same_as_bf16']}/{TOKENS} "
            f"| {row['same_as_float32']}/{TOKENS} | {row.get('path', '')} |"
        )
