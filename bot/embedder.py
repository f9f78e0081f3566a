"""Sentence embeddings from all-MiniLM-L6-v2 with torch, safetensors and tokenizers only.

Why not sentence-transformers: importing it took 6.4-8.4 s on this 2-core machine (it pulls in
sklearn, scipy, transformers' modeling code and torch.distributed), so a fresh interpreter
reached its first vector after 6.7-8.6 s at 608 MB peak RSS; with this module, 1.6-1.8 s at
297 MB, nearly all of it ``import torch``. And it imports transformers: at the bot's start-up
that happened in the knowledge thread while the tokenizer thread imported transformers too,
and transformers' lazy module raced ("ImportError: cannot import name
'PreTrainedTokenizerFast' from 'transformers'"). This module never imports transformers.

It runs what sentence-transformers runs for this model, written out: a BERT encoder (word +
position + token type embeddings and LayerNorm; per layer self-attention over the unpadded
tokens, dense + residual + LayerNorm, intermediate + exact GELU, dense + residual +
LayerNorm), the mean of the token vectors under the attention mask, L2 normalisation. Texts
are tokenised with tokenizer.json, truncated at ``max_seq_length`` (256), and run longest
first in batches of up to 64 (fewer where lengths differ a lot). The vectors match
sentence-transformers' to 1e-7 (float32 rounding; tests/test_embedder.py). Any other kind of
model directory is refused with a one-line ModelError rather than embedded wrongly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from tokenizers import Tokenizer

from engine.errors import ModelError  # one line naming the directory and what is wrong

BATCH_SIZE = 64


def _json(directory: Path, name: str) -> Any:
    path = directory / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"{directory}: no {name}; not a sentence-transformers BERT model directory"
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable ({exc})") from None


def _check_pipeline(directory: Path) -> int:
    """Check that the directory is BERT -> mean pooling -> Normalize; its max_seq_length."""
    modules = _json(directory, "modules.json")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules if isinstance(m, dict)]
    if kinds != ["Transformer", "Pooling", "Normalize"]:
        raise ModelError(
            f"{directory}: modules {kinds}; only Transformer, Pooling, Normalize is supported"
        )
    pooling = _json(directory, "1_Pooling/config.json")
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
    if modes != ["pooling_mode_mean_tokens"]:
        raise ModelError(f"{directory}: pooling {modes}; only mean pooling is supported")
    settings = _json(directory, "sentence_bert_config.json")
    if settings.get("do_lower_case"):
        raise ModelError(f"{directory}: do_lower_case is set; not supported")
    if not isinstance(settings.get("max_seq_length"), int):
        raise ModelError(f"{directory}: sentence_bert_config.json has no max_seq_length")
    return settings["max_seq_length"]


class SentenceEncoder:
    """A mean-pooled, normalised BERT sentence model (all-MiniLM-L6-v2) on the CPU."""

    def __init__(self, directory: Path | str, *, batch_size: int = BATCH_SIZE) -> None:
        directory = Path(directory)
        self.max_seq_length = _check_pipeline(directory)
        config = _json(directory, "config.json")
        refused = {
            "model_type": (config.get("model_type"), "bert"),
            "hidden_act": (config.get("hidden_act"), "gelu"),
            "position_embedding_type": (
                config.get("position_embedding_type", "absolute"),
                "absolute",
            ),
        }
        for key, (found, wanted) in refused.items():
            if found != wanted:
                raise ModelError(
                    f"{directory}: config.json {key} is {found!r}; only {wanted!r} is supported"
                )
        try:
            self.dim = int(config["hidden_size"])
            self.heads = int(config["num_attention_heads"])
            self.eps = float(config["layer_norm_eps"])
            layers = int(config["num_hidden_layers"])
            positions = int(config["max_position_embeddings"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{directory}: config.json has no valid {exc}") from None
        if self.max_seq_length > positions:
            raise ModelError(f"{directory}: max_seq_length is beyond max_position_embeddings")
        self.batch_size = batch_size
        self.layers = [f"encoder.layer.{i}" for i in range(layers)]
        self.weights = _load_weights(directory, self.layers)
        if not (directory / "tokenizer.json").is_file():
            raise ModelError(f"{directory}: no tokenizer.json (the fast tokenizer's file)")
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_seq_length)  # [CLS] and [SEP] included
        self.tokenizer.no_padding()  # tokenizer.json pads to 128; batches are padded here
        self.pad_id = int(config.get("pad_token_id", 0))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors, in the order of ``texts``."""
        tokens = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        vectors = np.empty((len(tokens), self.dim), dtype=np.float32)
        # Longest first, in batches of up to 64 that end where the length halves, so padding
        # at most doubles the work (sentence-transformers pads a 256-token text and 63 of
        # 10 tokens to 16,384 tokens; here that is 256 + 630).
        order = sorted(range(len(tokens)), key=lambda i: -len(tokens[i]))
        start = 0
        while start < len(order):
            end, longest = start + 1, len(tokens[order[start]])
            while (
                end < len(order)
                and end - start < self.batch_size
                and 2 * len(tokens[order[end]]) > longest
            ):
                end += 1
            rows = order[start:end]
            vectors[rows] = self._batch([tokens[i] for i in rows])
            start = end
        return vectors

    @torch.inference_mode()
    def _batch(self, rows: list[list[int]]) -> np.ndarray:
        """Unit vectors for a batch of token id lists: padded, encoded, mean-pooled."""
        ids = torch.full((len(rows), len(rows[0])), self.pad_id)
        mask = torch.zeros(ids.shape, dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        hidden = self._forward(ids, mask)
        keep = mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1e-9)
        return F.normalize(mean, p=2, dim=-1).numpy()

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """BERT's last hidden state, (batch, tokens, dim); one sentence per row, so every
        token has token type 0."""
        w = self.weights
        batch, length = ids.shape
        x = w["embeddings.word_embeddings.weight"][ids]
        x = x + w["embeddings.token_type_embeddings.weight"][0]
        x = x + w["embeddings.position_embeddings.weight"][:length]
        x = self._norm(x, "embeddings.LayerNorm")
        keys_visible = mask[:, None, None, :]  # every query sees the unpadded keys
        for layer in self.layers:
            q, k, v = (
                self._split_heads(self._linear(x, f"{layer}.attention.self.{part}"))
                for part in ("query", "key", "value")
            )
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keys_visible)
            attended = attended.transpose(1, 2).reshape(batch, length, self.dim)
            x = self._norm(
                self._linear(attended, f"{layer}.attention.output.dense") + x,
                f"{layer}.attention.output.LayerNorm",
            )
            inner = F.gelu(self._linear(x, f"{layer}.intermediate.dense"))  # exact (erf)
            x = self._norm(
                self._linear(inner, f"{layer}.output.dense") + x, f"{layer}.output.LayerNorm"
            )
        return x

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, dim) -> (batch, heads, tokens, head_dim)."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, -1).transpose(1, 2)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.weights[f"{name}.weight"], self.weights[f"{name}.bias"])

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        w = self.weights
        return F.layer_norm(x, (self.dim,), w[f"{name}.weight"], w[f"{name}.bias"], self.eps)


_LAYER_PARTS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "attention.output.LayerNorm",
    "intermediate.dense",
    "output.dense",
    "output.LayerNorm",
)


def _load_weights(directory: Path, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """The encoder's tensors (not the unused pooler) from model.safetensors, as float32,
    named as in BertModel (a "bert." prefix, as BertFor* checkpoints have, is dropped)."""
    path = directory / "model.safetensors"
    if not path.is_file():
        raise ModelError(f"{directory}: no model.safetensors")
    wanted = [f"embeddings.{p}_embeddings.weight" for p in ("word", "position", "token_type")]
    wanted += ["embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"]
    wanted += [
        f"{layer}.{part}.{kind}"
        for layer in layers
        for part in _LAYER_PARTS
        for kind in ("weight", "bias")
    ]
    with safe_open(str(path), framework="pt") as file:
        names = set(file.keys())
        base = "bert." if f"bert.{wanted[0]}" in names else ""
        missing = [name for name in wanted if base + name not in names]
        if missing:
            raise ModelError(f"{path}: not a BERT encoder (no {base + missing[0]})")
        return {name: file.get_tensor(base + name).float() for name in wanted}
