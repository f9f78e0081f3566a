"""The lean forward's output layer on its 4-bit copy, with the likeliest tokens' logits
computed again in bf16 (engine/lean_llama.py)."""

from __future__ import annotations

import torch

from engine import int4 as int4_weights

# 4-bit output layer: this many top candidates per row get their logits again in bf16.
RESCORE = 64


def rescored_head(x: torch.Tensor, quantized, weight: torch.Tensor, k: int = RESCORE):
    """float32 logits ``[B, vocab]`` of ``x`` ``[B, hidden]`` from the 4-bit output layer
    ``quantized``, with each row's top ``k`` computed again from the bf16 ``weight``.

    The bundled model's output layer is its 8-bit embedding table: in 4 bits its logits
    were up to 4.5 off (cosine 0.998), enough to swap close candidates. The bf16 argmax was
    never below 4-bit rank 8 (engine/bench/int4_head.py), so the top 64 get bf16 logits — on
    the default model bit for bit the bf16 layer's — and greedy and top-p picks are made on
    them; the rest keep 4-bit logits, which only move the sampling distribution of flat
    rows a little (figures in docs/performance.md). For one row the layer took 5.5 ms in bf16 and
    2.5 ms this way."""
    logits = int4_weights.linear(x, quantized).float()
    top = logits.topk(min(k, logits.shape[-1]), dim=-1, sorted=False).indices  # [B, k]
    exact = torch.bmm(weight[top], x.unsqueeze(-1)).squeeze(-1)  # [B, k] in x's dtype
    return logits.scatter_(1, top, exact.float())
