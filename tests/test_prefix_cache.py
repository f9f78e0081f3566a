"""The prefix KV cache (engine/prefix_cache.py): a prompt that starts like an earlier one
computes only the rest, with the same logits; LoRAs keep their own blocks and a swapped
one is never reused; the byte bound holds; conversations of one persona share its blocks.

On a tiny random Llama built in the test, through the engine's own loading and scheduler.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from bot.config import ModelSettings
from engine.base import BASE_LORA, LoraSpec, Sampling
from engine.jobs import Job
from tests.tiny_model import ALL_LINEAR, build_tiny_adapter, build_tiny_model

torch = pytest.importorskip("torch")

from engine.batch_cache import BatchKV  # noqa: E402
from engine.loading import build_scheduler, load_model, load_standalone  # noqa: E402
from engine.local_files import resolve_base  # noqa: E402
from engine.prefix_cache import PrefixCache  # noqa: E402

BLOCK = 4  # small blocks: short test prompts still span several
PERSONA = list(range(10, 42))  # 32 tokens every prompt of the "character" starts with


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("prefix") / "base")


@pytest.fixture(scope="module")
def loras(tiny: Path, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("prefix-loras")
    return (
        build_tiny_adapter(tiny, root / "aria" / "v1", seed=1, targets=ALL_LINEAR),
        build_tiny_adapter(tiny, root / "aria" / "v2", seed=2, targets=ALL_LINEAR),
    )


def scheduler_for(tiny: Path, tmp_path: Path, dtype: str, *, standalone: bool = True, mb=64):
    """An unstarted Scheduler over the tiny model, as the engine builds it."""
    settings = ModelSettings(
        base=str(tiny), dtype=dtype, cache_dir=tmp_path / "cache", threads=1, kv_cache_mb=mb
    )
    source = resolve_base(settings.base, settings.cache_dir)
    loaded = load_standalone(source, settings) if standalone else None
    loaded = loaded or load_model(source, settings)
    scheduler = build_scheduler(loaded, settings)
    if scheduler.prefixes is not None:
        scheduler.prefixes.block_tokens = BLOCK
    return scheduler


def forward(scheduler, names: list[str], prompts: list[list[int]], cached=None):
    """The scheduler's own prefill forward: logits of each row's last token and the cache."""
    layers = len(scheduler.registry.base.model.layers)
    kv = BatchKV(layers, len(prompts), transformers=scheduler.registry.transformers)
    if cached is None:
        ids, mask, pos = kv.prefill_inputs(prompts, scheduler.pad_id)
    else:
        ids, mask, pos = kv.prefill_inputs_cached(prompts, cached, scheduler.pad_id)
    jobs = [Job([], Sampling(), None, peft_name=name) for name in names]
    with torch.no_grad():
        return scheduler._call_model(jobs, ids, mask, pos, kv, prefill=True), kv


def peft_names(scheduler, loras) -> list[str]:
    return [scheduler.registry.acquire(LoraSpec(f"c{i}", str(p)))[0] for i, p in enumerate(loras)]


DTYPES = ["float32", "bfloat16", "int4"]
# bf16 logits of the tiny model are ±30: a recomputed prefix rounds differently here and
# there (other matmul shapes), so bf16 and 4-bit compare within a few hundredths of that
TOLERANCE = {"float32": 1e-4, "bfloat16": 0.35, "int4": 0.35}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", ["base", "lora", "mixed"])
def test_cached_prefix_gives_the_logits_of_a_full_prefill(tiny, loras, tmp_path, dtype, rows):
    if dtype == "int4":
        from engine.int4 import available

        if not available():
            pytest.skip("this torch build has no CPU int4 kernel")
    scheduler = scheduler_for(tiny, tmp_path, dtype)
    names = {
        "base": [BASE_LORA] * 3,
        "lora": peft_names(scheduler, loras[:1]) * 3,
        "mixed": [*peft_names(scheduler, loras), BASE_LORA],
    }[rows]
    # three rows: a long new part, a one-token new part (the decode-sized call), and a
    # row whose cache is shorter than the others'
    prompts = [[*PERSONA, 50, 51, 52, 53, 54, 55, 56], [*PERSONA, 60], [*PERSONA[:9], 70, 71]]
    known = [len(PERSONA), len(PERSONA), 8]
    want, _ = forward(scheduler, names, prompts)
    # the prefixes' keys and values from prefills of their own, as the cache keeps them
    cached = []
    for name, prompt, n in zip(names, prompts, known, strict=True):
        _, kv = forward(scheduler, [name], [prompt[:n]])
        cached.append(kv.row_kv(0, 0, n))
    got, kv = forward(scheduler, names, prompts, cached)
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= TOLERANCE[dtype] * max(1.0, scale / 30)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    # and the batch cache after it holds each row's whole prompt, ready for decoding
    assert [kv.row_tokens(row) for row in range(3)] == [len(p) for p in prompts]
    assert kv.positions.tolist() == [len(p) for p in prompts]


def test_cached_prefix_on_transformers_forward(tiny, loras, tmp_path):
    """The transformers + peft path (other models, other LoRA kinds) takes the cache too."""
    scheduler = scheduler_for(tiny, tmp_path, "float32", standalone=False)
    scheduler.lean = None  # the transformers forward, not the lean one
    names = [*peft_names(scheduler, loras[:1]), BASE_LORA]
    prompts = [[*PERSONA, 50, 51, 52], [*PERSONA, 60]]
    want, _ = forward(scheduler, names, prompts)
    cached = []
    for name in names:
        _, kv = forward(scheduler, [name], [PERSONA])
        cached.append(kv.row_kv(0, 0, len(PERSONA)))
    got, _ = forward(scheduler, names, prompts, cached)
    assert float((got - want).abs().max()) <= 1e-4


class Collector:
    """The scheduler's ``send``: every job's events, and a wait for a job to finish."""

    def __init__(self) -> None:
        self.events: dict[int, list] = {}
        self.finished = threading.Condition()

    def __call__(self, events) -> None:
        with self.finished:
            for job, event in events:
                self.events.setdefault(job.id, []).append(event)
            self.finished.notify_all()

    def run(self, scheduler, job: Job) -> list[int]:
        """Submit ``job`` and return its tokens once it is done (fails on an error)."""
        scheduler.submit(job)
        with self.finished:
            done = self.finished.wait_for(lambda: self._ended(job.id), timeout=60)
        assert done, "the job did not finish"
        events = self.events[job.id]
        assert all(kind != "error" for kind, _ in events), events
        return [value for kind, value in events if kind == "token"]

    def _ended(self, job_id: int) -> bool:
        return any(kind in ("done", "error") for kind, _ in self.events.get(job_id, []))


GREEDY = Sampling(max_new_tokens=10, temperature=0)


def running(tiny, tmp_path, dtype="float32", mb=64):
    scheduler = scheduler_for(tiny, tmp_path, dtype, mb=mb)
    collector = Collector()
    scheduler._send = collector
    scheduler.start()
    return scheduler, collector


def test_continued_conversation_reuses_prompt_and_reply(tiny, tmp_path):
    scheduler, collector = running(tiny, tmp_path)
    plain, plain_collector = running(tiny, tmp_path / "plain", mb=0)
    try:
        first = [*PERSONA, 80, 81, 82]
        reply = collector.run(scheduler, Job(first, GREEDY, None, id=1))
        # the next turn: the earlier prompt, the reply, a new message
        second = first + reply + [90, 91, 92]
        before = scheduler.prefix_stats
        again = collector.run(scheduler, Job(second, GREEDY, None, id=2))
        after = scheduler.prefix_stats
        reused = after.reused_tokens - before.reused_tokens
        # every whole block of the first prompt and the reply fed back (all but its last
        # token) came from the cache
        assert reused == (len(first) + len(reply) - 1) // BLOCK * BLOCK
        assert after.hits == before.hits + 1
        # and the reply is the one an uncached engine gives
        assert again == plain_collector.run(plain, Job(second, GREEDY, None, id=2))
        assert plain.prefix_stats.lookups == 0
    finally:
        scheduler.stop()
        plain.stop()


def test_two_conversations_share_the_personas_blocks(tiny, tmp_path):
    scheduler, collector = running(tiny, tmp_path)
    try:
        collector.run(scheduler, Job([*PERSONA, 80, 81], GREEDY, None, id=1))
        blocks = scheduler.prefixes.blocks
        before = scheduler.prefix_stats
        collector.run(scheduler, Job([*PERSONA, 85, 86, 87, 88, 89], GREEDY, None, id=2))
        after = scheduler.prefix_stats
        assert after.reused_tokens - before.reused_tokens == len(PERSONA)
        # the second chat added only blocks past the persona: its own words and reply
        second_own = (5 + GREEDY.max_new_tokens - 1) // BLOCK
        assert scheduler.prefixes.blocks - blocks <= second_own + 1
    finally:
        scheduler.stop()


def test_a_swapped_lora_never_meets_the_old_versions_blocks(tiny, loras, tmp_path):
    scheduler, collector = running(tiny, tmp_path)
    v1, v2 = loras
    try:
        scheduler.load_lora("aria", str(v1)).result(timeout=60)
        prompt = [*PERSONA, 80, 81]
        spec1 = LoraSpec("aria", str(v1))
        collector.run(scheduler, Job(prompt, GREEDY, spec1, id=1))
        old = {n for n in scheduler.prefixes.namespaces() if n != BASE_LORA}
        assert len(old) == 1
        hits = scheduler.prefix_stats.hits
        # the same prompt on the base model: its own tree, no hit
        collector.run(scheduler, Job(prompt, GREEDY, None, id=2))
        assert scheduler.prefix_stats.hits == hits
        scheduler.load_lora("aria", str(v2)).result(timeout=60)
        assert not old & scheduler.prefixes.namespaces()  # v1's blocks went with v1
        collector.run(scheduler, Job(prompt, GREEDY, LoraSpec("aria", str(v2)), id=3))
        assert scheduler.prefix_stats.hits == hits
        # v2 itself is cached now: asked again, it hits
        collector.run(scheduler, Job(prompt, GREEDY, LoraSpec("aria", str(v2)), id=4))
        assert scheduler.prefix_stats.hits == hits + 1
    finally:
        scheduler.stop()


def fake_kv(start: int, end: int) -> torch.Tensor:
    """Keys and values of a model with 2 layers, 1 head of size 8: 2·2·8·2 = 64 bytes a
    token in bf16."""
    return torch.full((2, 2, 1, end - start, 8), float(start), dtype=torch.bfloat16)


def test_eviction_keeps_the_cache_under_its_bound():
    block_bytes = BLOCK * 64
    cache = PrefixCache(max_bytes=10 * block_bytes, block_tokens=BLOCK)
    for chat in range(20):
        tokens = PERSONA[:8] + [1000 + chat] * 12  # 2 shared blocks, 3 of its own
        cache.insert(BASE_LORA, tokens, fake_kv)
        assert cache.bytes <= cache.max_bytes
        assert cache.bytes == sum(b.nbytes for b in cache._lru.values())
    assert cache.evicted > 0
    # the persona's blocks, used by every chat, stayed; the oldest chats' went
    assert len(cache.match(BASE_LORA, PERSONA[:8] + [1019] * 12 + [5])) == 5
    assert len(cache.match(BASE_LORA, PERSONA[:8] + [1000] * 12 + [5])) == 2


def test_eviction_takes_leaves_least_recently_used_first():
    cache = PrefixCache(max_bytes=4 * BLOCK * 64, block_tokens=BLOCK)
    a, b = [1] * 8, [2] * 8
    cache.insert(BASE_LORA, a, fake_kv)
    cache.insert(BASE_LORA, b, fake_kv)
    cache.match(BASE_LORA, [*a, 0])  # a is used again: b is the older one now
    cache.insert(BASE_LORA, [3] * 4, fake_kv)
    assert len(cache.match(BASE_LORA, [*a, 0])) == 2
    assert len(cache.match(BASE_LORA, [*b, 0])) == 1  # its leaf went, its first block stays


def test_match_leaves_a_token_to_compute_and_gathers_in_order():
    cache = PrefixCache(max_bytes=1 << 20, block_tokens=BLOCK)
    tokens = list(range(12))
    cache.insert("x", tokens, fake_kv)
    assert len(cache.match("x", tokens)) == 2  # 12 tokens: 8 from the cache, 4 computed
    chain = cache.match("x", [*tokens, 99])
    assert len(chain) == 3
    kv = cache.gather(chain)
    assert kv.shape == (2, 2, 1, 12, 8)
    assert kv[0, 0, 0, :, 0].tolist() == [0.0] * 4 + [4.0] * 4 + [8.0] * 4
    assert cache.match("y", [*tokens, 99]) == []  # another namespace
    cache.drop("x")
    assert cache.bytes == 0 and cache.blocks == 0


def test_kv_cache_mb_must_not_be_negative(tmp_path):
    from bot.config import ConfigError, load_config

    path = tmp_path / "config.toml"
    path.write_text("[model]\nkv_cache_mb = -1\n")
    with pytest.raises(ConfigError, match=r"\[model\] kv_cache_mb: must not be negative"):
        load_config(path)
