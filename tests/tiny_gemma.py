"""A tiny randomly initialised Gemma 3, saved as a directory or written as a GGUF file the
way llama.cpp's converter writes one — so tests of the multilingual path (GGUF conversion,
Korean chats, training) run in seconds, without the real 270M model.

The vocabulary is sentencepiece-shaped like Gemma's: control tokens, the 256 byte-fallback
tokens, and the printable ASCII characters. Korean text therefore falls back to bytes
(three tokens a syllable), which also exercises the streaming decoder's handling of
incomplete UTF-8.
"""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
PAD, EOS, BOS, UNK, START, END = range(6)
# llama.cpp's token types
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6
LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN = 2, 64, 4, 2, 16, 128


def vocabulary() -> tuple[list[str], list[int]]:
    """(tokens, llama.cpp token types) of the tiny Gemma vocabulary."""
    tokens = list(SPECIALS)
    types = [CONTROL, CONTROL, CONTROL, UNKNOWN, CONTROL, CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [BYTE] * 256
    tokens += ["\u2581"] + [chr(c) for c in range(0x21, 0x7F)]
    types += [NORMAL] * (1 + 0x7F - 0x21)
    return tokens, types


def build_config(**overrides):  # -> Gemma3TextConfig
    from transformers import Gemma3TextConfig

    tokens, _ = vocabulary()
    settings = dict(
        vocab_size=len(tokens),
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=1024,
        sliding_window=512,
        rms_norm_eps=1e-6,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=BOS,
        tie_word_embeddings=True,
    )
    return Gemma3TextConfig(**(settings | overrides))


def build_model(seed: int = 0):  # -> Gemma3ForCausalLM, random weights (norms included)
    import torch
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(build_config()).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            # Gemma's norms start at zero (it multiplies by 1 + w): give them values, so a
            # lost +1/-1 in a conversion shows in the logits.
            scale = 0.1 if "norm" in name else 0.2
            param.copy_(torch.randn_like(param) * scale)
        # random weights rarely pick EOS or <end_of_turn>: replies run to their limit
        model.get_output_embeddings().weight[[EOS, END]] *= 0.0
    return model


def build_tokenizer():  # -> a transformers tokenizer with the Gemma turn template
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from engine.gguf_cache import GEMMA_TEMPLATE

    tokens, _ = vocabulary()
    vocab = {token: index for index, token in enumerate(tokens)}
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>"))
    raw.normalizer = normalizers.Replace(" ", "\u2581")
    raw.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    raw.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    raw.add_special_tokens(SPECIALS[:3] + SPECIALS[4:])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tokenizer.chat_template = GEMMA_TEMPLATE
    return tokenizer


def save_directory(directory: Path, seed: int = 0) -> Path:
    """A tiny Gemma 3 checkpoint with its tokenizer, as transformers saves one."""
    from transformers import GenerationConfig

    model = build_model(seed)
    model.generation_config = GenerationConfig(
        bos_token_id=BOS, eos_token_id=[EOS, END], pad_token_id=PAD
    )
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    return directory


def write_gguf(path: Path, model) -> Path:
    """``model`` as a float32 Gemma 3 GGUF: llama.cpp's tensor names, its +1 on the norms."""
    import gguf
    import numpy as np

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, LAYERS)
    config = model.config
    writer = gguf.GGUFWriter(str(path), arch="gemma3")
    writer.add_name("tiny-gemma3")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_sliding_window(config.sliding_window)
    tokens, types = vocabulary()
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types(types)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_pad_token_id(PAD)
    writer.add_unk_token_id(UNK)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    for name, param in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to the embedding, as in Google's files
        data = param.detach().float().numpy()
        if name.endswith("norm.weight"):
            data = data + 1.0  # llama.cpp multiplies by w; Gemma by 1 + w
        stem, _, kind = name.rpartition(".")
        writer.add_tensor(f"{names.get_name(stem)}.{kind}", np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
