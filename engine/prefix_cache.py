"""Keys and values of prompts already computed, kept so a new prompt's prefill computes
only the tokens after the longest cached prefix.

A character chat repeats itself: every turn of a conversation starts with the same
persona, examples and history, and every chat of one character starts with the same
persona. The cache is a radix tree per LoRA (its peft name: unique per load, so a swapped
or reloaded LoRA never meets the keys and values of the weights before it), with one node
per block of :data:`BLOCK_TOKENS` tokens: a node holds the keys and values of its block,
computed after all the blocks on its path from the root — so two prompts share a node
exactly when they share every token up to the end of its block, and conversations of one
character share their persona's blocks.

Bounded by bytes: when an insert goes over, the least recently used leaves go first (a
leaf, so that every cached block keeps the blocks before it). Everything runs on the
scheduler's thread; nothing here locks.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.scheduler_like import PrefixStats

# Tokens per block: a partial match reuses whole blocks, so a prompt recomputes at most
# this many tokens it could have reused; smaller blocks mean more nodes (and Python
# bookkeeping) per prompt. 16 keeps a 1,500-token prompt at ~94 nodes.
BLOCK_TOKENS = 16


@dataclass(eq=False)
class Block:
    """One block of a cached prefix: its tokens and their keys and values, ``[layers, 2
    (keys, values), kv_heads, tokens, head_dim]``; ``children`` by their tokens."""

    tokens: tuple[int, ...]
    kv: torch.Tensor | None  # None only for a namespace's root
    parent: Block | None
    namespace: str
    children: dict[tuple[int, ...], Block] = field(default_factory=dict)
    serial: int = 0  # its key in the cache's LRU order

    @property
    def nbytes(self) -> int:
        return 0 if self.kv is None else self.kv.numel() * self.kv.element_size()


class PrefixCache:
    """Cached prefixes of at most ``max_bytes`` of keys and values, in blocks of
    ``block_tokens``, one tree per namespace (the LoRA a prompt runs on)."""

    def __init__(self, max_bytes: int, block_tokens: int = BLOCK_TOKENS) -> None:
        if block_tokens < 1:
            raise ValueError("block_tokens must be at least 1")
        self.max_bytes = max_bytes
        self.block_tokens = block_tokens
        self.bytes = 0
        self._roots: dict[str, Block] = {}
        # every block but the roots, least recently used first
        self._lru: collections.OrderedDict[int, Block] = collections.OrderedDict()
        self._serials = itertools.count(1)
        # counters for benchmarks and stats: prompts looked up, and their tokens reused
        self.lookups = 0
        self.hits = 0  # lookups that reused at least one block
        self.prompt_tokens = 0
        self.reused_tokens = 0
        self.evicted = 0

    @property
    def blocks(self) -> int:
        return len(self._lru)

    def stats(self) -> PrefixStats:
        return PrefixStats(
            bytes=self.bytes,
            max_bytes=self.max_bytes,
            blocks=self.blocks,
            lookups=self.lookups,
            hits=self.hits,
            prompt_tokens=self.prompt_tokens,
            reused_tokens=self.reused_tokens,
            evicted=self.evicted,
        )

    def match(self, namespace: str, tokens: list[int]) -> list[Block]:
        """The longest chain of cached blocks that ``tokens`` starts with, leaving at least
        one token to compute (its logits are the reply's first token); marked as used."""
        self.lookups += 1
        self.prompt_tokens += len(tokens)
        size = self.block_tokens
        node = self._roots.get(namespace)
        chain: list[Block] = []
        limit = (len(tokens) - 1) // size
        while node is not None and len(chain) < limit:
            start = len(chain) * size
            node = node.children.get(tuple(tokens[start : start + size]))
            if node is not None:
                chain.append(node)
        for block in chain:
            self._touch(block)
        if chain:
            self.hits += 1
            self.reused_tokens += len(chain) * size
        return chain

    def insert(
        self,
        namespace: str,
        tokens: list[int],
        kv_of: Callable[[int, int], torch.Tensor],
    ) -> int:
        """Cache every whole block of ``tokens`` not cached yet; ``kv_of(start, end)``
        gives the keys and values of ``tokens[start:end]`` (a new tensor: it is kept).
        Returns the blocks added; least recently used leaves go while over the bound."""
        if self.max_bytes <= 0:
            return 0
        root = self._roots.get(namespace)
        if root is None:
            root = self._roots[namespace] = Block((), None, None, namespace)
        size, node, added = self.block_tokens, root, 0
        for start in range(0, len(tokens) - size + 1, size):
            key = tuple(tokens[start : start + size])
            child = node.children.get(key)
            if child is None:
                child = Block(key, kv_of(start, start + size), node, namespace)
                node.children[key] = child
                self.bytes += child.nbytes
                added += 1
            self._touch(child)
            node = child
        self._evict()
        return added

    def gather(self, chain: list[Block]) -> torch.Tensor | None:
        """The keys and values of a matched chain as one tensor ``[layers, 2, kv_heads,
        tokens, head_dim]``; None for an empty chain."""
        if not chain:
            return None
        return torch.cat([block.kv for block in chain], dim=3)

    def drop(self, namespace: str) -> None:
        """Forget every block of ``namespace`` (its LoRA was unloaded or replaced)."""
        root = self._roots.pop(namespace, None)
        if root is None:
            return
        stack = list(root.children.values())
        while stack:
            block = stack.pop()
            stack.extend(block.children.values())
            self._lru.pop(block.serial, None)
            self.bytes -= block.nbytes

    def namespaces(self) -> set[str]:
        return set(self._roots)

    def _touch(self, block: Block) -> None:
        # a new serial each use: the LRU order is by last use
        self._lru.pop(block.serial, None)
        block.serial = next(self._serials)
        self._lru[block.serial] = block

    def _evict(self) -> None:
        """Least recently used leaves first, until within the bound."""
        while self.bytes > self.max_bytes and self._lru:
            # a tree always has a leaf, so there is one while any block is left
            victim = next(b for b in self._lru.values() if not b.children)
            self._remove_leaf(victim)

    def _remove_leaf(self, block: Block) -> None:
        self._lru.pop(block.serial, None)
        self.bytes -= block.nbytes
        self.evicted += 1
        parent = block.parent
        assert parent is not None
        parent.children.pop(block.tokens, None)
        if parent.kv is None and not parent.children:  # an empty namespace
            self._roots.pop(block.namespace, None)
