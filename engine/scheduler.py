"""Continuous batching on one worker thread.

Requests from all chats queue up (bounded: :class:`Busy` when full). The worker admits
waiting requests between decode steps — a new request waits for one step, not for the
batch to finish — prefills them together, merges them into the running batch's
left-padded KV cache, and runs one forward call per step for all rows, each row on its own
LoRA (peft ``adapter_names``). Each row stops on its own EOS or token limit; a cancelled
row is dropped at the next step without disturbing the others.

Tokens go back to the event loop with one ``call_soon_threadsafe`` per step, not per row.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from engine.batch_cache import BatchKV
from engine.errors import Busy, ModelError
from engine.jobs import Job, send_to_loops
from engine.lora_registry import LoraRegistry
from engine.prefix_cache import Block, PrefixCache
from engine.scheduler_like import PrefixStats, SchedulerStats
from engine.threads import ThreadPolicy

PREFILL_TOKENS = 4096  # padded prompt tokens per prefill forward
# top-p looks at this many of the likeliest tokens first: exact whenever they hold the
# nucleus (nearly always); on a flat distribution 0.17 ms instead of 2.9 ms for sorting
# 49,152 probabilities (peaked ones sorted fast already)
NUCLEUS_CANDIDATES = 256


class Scheduler:
    """Owns the model on its own thread; :meth:`submit` and :meth:`call` are thread-safe.
    A :class:`~engine.scheduler_like.SchedulerLike`."""

    def __init__(
        self,
        registry: LoraRegistry,
        *,
        eos_ids: set[int],
        pad_id: int,
        max_positions: int,
        max_batch_size: int = 16,
        batch_wait_ms: float = 5.0,
        max_queue: int = 64,
        send: Callable[[list[tuple[Job, tuple[str, Any]]]], None] | None = None,
        threads: ThreadPolicy | None = None,
        prefixes: PrefixCache | None = None,
    ) -> None:
        """``prefixes``: keys and values of earlier prompts and replies, so a prompt that
        starts like one of them computes only the rest (None: every prompt in full)."""
        self.registry = registry
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.max_positions = max_positions
        self.max_batch_size = max(1, max_batch_size)
        self.batch_wait = batch_wait_ms / 1000
        self.max_queue = max_queue
        self._send = send or send_to_loops
        self.threads = threads  # None: leave torch's thread count alone
        self._waiting: collections.deque[Job] = collections.deque()
        self._commands: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future]]
        self._commands = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._rows: list[Job] = []
        self._kv: BatchKV | None = None
        self._thread = threading.Thread(target=self._run, name="charbot-generate", daemon=True)
        self.steps = 0  # decode steps run (for tests and benchmarks)
        self.max_rows_seen = 0
        self.row_steps = 0  # tokens decoded (prefill's first tokens not included)
        self.decode_seconds = 0.0  # time in decode steps: row_steps / this = decode tok/s
        # The lean Llama forward (engine/lean_llama.py) built at load time, if any.
        self.lean = getattr(registry.base, "_charbot_lean", None)
        self.prefixes = prefixes
        if prefixes is not None:
            # keys and values computed with a LoRA's weights die with them
            registry.on_delete.append(prefixes.drop)

    # --- called from other threads --------------------------------------------------------
    def start(self) -> None:
        """Run the worker on its own thread (see :meth:`run_forever` for the calling one)."""
        self._thread.start()

    def run_forever(self) -> None:
        """Run the worker on the calling thread until :meth:`request_stop`."""
        self._run()

    def request_stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()

    def stop(self) -> None:
        self.request_stop()
        if self._thread.is_alive():
            self._thread.join()

    def cancel(self, job: Job) -> None:
        job.cancelled = True  # the worker drops the row at its next step
        self.wake()

    def load_lora(self, name: str, path: str) -> concurrent.futures.Future:
        """Future of the version string; LoraLoadError if it does not load."""
        return self.call(lambda: self.registry.load(name, str(path)).version)

    def unload_lora(self, name: str) -> concurrent.futures.Future:
        return self.call(lambda: self.registry.unload(name))

    def current_loras(self) -> dict[str, str]:
        """name → version of the current LoRAs (a snapshot)."""
        return {c: e.version for c, e in dict(self.registry.current).items()}

    @property
    def loras_loaded(self) -> int:
        """LoRAs in memory, superseded versions still finishing replies included."""
        return len(self.registry.loaded)

    @property
    def thread_count(self) -> int | None:
        """Matmul threads in use (None: torch's own choice)."""
        return None if self.threads is None else self.threads.threads

    @property
    def thread_changes(self) -> int:
        return 0 if self.threads is None else self.threads.changes

    @property
    def active(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def prefix_stats(self) -> PrefixStats:
        return PrefixStats() if self.prefixes is None else self.prefixes.stats()

    def stats(self) -> SchedulerStats:
        """The counters now (the model process sends them with every message)."""
        return SchedulerStats(
            active=self.active,
            waiting=self.waiting,
            steps=self.steps,
            max_rows_seen=self.max_rows_seen,
            loras_loaded=self.loras_loaded,
            row_steps=self.row_steps,
            decode_seconds=self.decode_seconds,
            current_loras=self.current_loras(),
            thread_count=self.thread_count,
            thread_changes=self.thread_changes,
            prefix_stats=self.prefix_stats,
        )

    def submit(self, job: Job) -> None:
        """Queue ``job``; :class:`Busy` when ``max_queue`` requests are already waiting."""
        with self._wake:
            if self._stopping:
                raise ModelError("the model is shutting down")
            if len(self._waiting) >= self.max_queue:
                # Requests given up while waiting do not count against the bound.
                self._waiting = collections.deque(j for j in self._waiting if not j.cancelled)
            if len(self._waiting) >= self.max_queue:
                raise Busy("the model is busy; try again shortly")
            self._waiting.append(job)
            self._wake.notify()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn`` on the worker thread between steps (e.g. loading a LoRA)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._wake:
            self._commands.append((fn, future))
            self._wake.notify()
        return future

    def wake(self) -> None:
        """A job was cancelled: let an idle worker notice."""
        with self._wake:
            self._wake.notify()

    # --- the worker thread ----------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._wake:
                while not (self._stopping or self._commands or self._waiting or self._rows):
                    self._wake.wait()
                if self._stopping:
                    break
                if self._waiting and not self._rows and self.batch_wait > 0:
                    # Idle: give requests arriving together a moment to share one prefill.
                    deadline = time.monotonic() + self.batch_wait
                    while not self._stopping and len(self._waiting) < self.max_batch_size:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._wake.wait(remaining)
                commands = list(self._commands)
                self._commands.clear()
                free = self.max_batch_size - len(self._rows)
                admitted = []
                while self._waiting and len(admitted) < free:
                    job = self._waiting.popleft()
                    if not job.cancelled:
                        admitted.append(job)
            for fn, future in commands:
                self._run_command(fn, future)
            try:
                # Grad is off for this thread (not inference_mode: LoRAs loaded between
                # steps must stay ordinary tensors that peft can modify later).
                # finished rows first: their conversations go into the prefix cache
                # before a request admitted now (their next turn, perhaps) looks there
                self._drop_finished()
                if admitted:
                    self._admit(admitted)
                self._drop_finished()
                if self._rows:
                    self._step()
            except Exception as exc:
                self._fail_all(ModelError(f"generation failed: {exc}"))
        self._fail_all(ModelError("the model was shut down"), include_waiting=True)

    def _run_command(self, fn: Callable[[], Any], future: concurrent.futures.Future) -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    def _admit(self, jobs: list[Job]) -> None:
        ready = []
        for job in jobs:
            try:
                job.peft_name, job.lora_version = self.registry.acquire(job.lora)
            except Exception as exc:
                self._send([(job, ("error", exc))])
                continue
            if job.sampling.seed is not None:
                job.generator = torch.Generator().manual_seed(job.sampling.seed)
            ready.append(job)
        if not ready:
            return
        matches = {job: self._cached_prefix(job) for job in ready}

        def computed(job: Job) -> int:  # the tokens its prefill computes
            return len(job.prompt) - sum(len(block.tokens) for block in matches[job])

        # Similar lengths prefill together (less padding), in groups of bounded size so a
        # burst of long prompts neither pads wastefully nor builds huge attention masks.
        ready.sort(key=computed)
        groups: list[list[Job]] = [[]]
        for job in ready:
            if groups[-1] and (len(groups[-1]) + 1) * computed(job) > PREFILL_TOKENS:
                groups.append([])
            groups[-1].append(job)
        for index, group in enumerate(groups):
            try:
                self._prefill(group, [matches[job] for job in group])
            except Exception as exc:
                # The running batch is untouched; only these requests fail.
                failed = [job for later in groups[index:] for job in later]
                for job in failed:
                    self.registry.release(job.peft_name)
                error = ModelError(f"generation failed: {exc}")
                self._send([(job, ("error", error)) for job in failed])
                return

    def _cached_prefix(self, job: Job) -> list[Block]:
        """The cached blocks ``job``'s prompt starts with, on its LoRA (none: [])."""
        if self.prefixes is None:
            return []
        return self.prefixes.match(job.peft_name, job.prompt)

    def _prefill(self, jobs: list[Job], matches: list[list[Block]]) -> None:
        layers = len(self.registry.base.model.layers)
        kv = BatchKV(layers, len(jobs), transformers=self.registry.transformers)
        prompts = [j.prompt for j in jobs]
        if any(matches):
            assert self.prefixes is not None
            cached = [self.prefixes.gather(chain) for chain in matches]
            ids, mask, positions = kv.prefill_inputs_cached(prompts, cached, self.pad_id)
        else:
            ids, mask, positions = kv.prefill_inputs(prompts, self.pad_id)
        logits = self._call_model(jobs, ids, mask, positions, kv, prefill=True)
        for row, job in enumerate(jobs):
            self._keep_prefix(job, job.prompt, kv, row)
        if self._kv is None:
            self._kv = kv
        else:
            self._kv.merge(kv)
        self._rows.extend(jobs)
        self.max_rows_seen = max(self.max_rows_seen, len(self._rows))
        self._emit(jobs, logits)

    def _step(self) -> None:
        assert self._kv is not None
        if self.threads is not None:
            self.threads.check()  # auto: fewer threads while other processes want the cores
        started = time.perf_counter()
        ids = torch.tensor([[job.last_token] for job in self._rows], dtype=torch.long)
        mask, positions = self._kv.decode_inputs()
        logits = self._call_model(self._rows, ids, mask, positions, self._kv, prefill=False)
        self.steps += 1
        self.row_steps += len(self._rows)
        self._emit(self._rows, logits)
        self.decode_seconds += time.perf_counter() - started

    def _call_model(self, jobs, ids, mask, positions, kv: BatchKV, *, prefill: bool):
        names = [job.peft_name for job in jobs]
        model = self.registry.forward_model
        lean = self.lean
        if lean is not None and lean.usable(self.registry):
            self.registry.multi.set_rows(names)
            return lean.forward(ids, mask, positions, kv, self.registry.multi)
        with self.registry.hooks(names):
            out = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=kv.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1, :].float()

    def _emit(self, jobs: list[Job], logits: torch.Tensor) -> None:
        tokens = self._sample(jobs, logits)
        events = []
        for job, token in zip(jobs, tokens, strict=True):
            job.generated += 1
            job.last_token = token
            job.used.add(token)
            job.tokens.append(token)
            if token in self.eos_ids:
                job.cancelled = True  # finished: dropped before the next step
                events.append((job, ("done", ("stop", job.lora_version))))
                continue
            events.append((job, ("token", token)))
            if job.generated >= job.sampling.max_new_tokens or self._at_limit(job):
                job.cancelled = True
                events.append((job, ("done", ("length", job.lora_version))))
        self._send(events)

    def _at_limit(self, job: Job) -> bool:
        return len(job.prompt) + job.generated >= self.max_positions

    def _sample(self, jobs: list[Job], logits: torch.Tensor) -> list[int]:
        for row, job in enumerate(jobs):
            penalty = job.sampling.repetition_penalty
            if penalty != 1.0 and job.used:
                used = torch.tensor(sorted(job.used), dtype=torch.long)
                scores = logits[row, used]
                logits[row, used] = torch.where(scores > 0, scores / penalty, scores * penalty)
        tokens = logits.argmax(-1).tolist()  # greedy for every row; sampled rows overwrite
        for row, job in enumerate(jobs):
            s = job.sampling
            if s.temperature <= 0:
                continue
            probs = torch.softmax(logits[row] / s.temperature, dim=-1)
            ids, weights = nucleus(probs, s.top_p)
            tokens[row] = int(ids[torch.multinomial(weights, 1, generator=job.generator)])
        return tokens

    def _drop_finished(self) -> None:
        keep = [i for i, job in enumerate(self._rows) if not job.cancelled]
        if len(keep) == len(self._rows):
            return
        for row, job in enumerate(self._rows):
            if job.cancelled:
                # the conversation so far (its last token was never fed): the next turn
                # starts with it
                assert self._kv is not None
                self._keep_prefix(job, job.prompt + job.tokens[:-1], self._kv, row)
                self.registry.release(job.peft_name)
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._kv = None
            self._send([])  # idle now: lets a model process report its stats
        else:
            assert self._kv is not None
            self._kv.select(keep)

    def _keep_prefix(self, job: Job, tokens: list[int], kv: BatchKV, row: int) -> None:
        """Cache the keys and values of ``tokens``, ``row`` of ``kv``, under its LoRA."""
        if self.prefixes is None or kv.row_tokens(row) != len(tokens):
            return  # (a mismatch would mean the row is not what we think: keep nothing)
        self.prefixes.insert(job.peft_name, tokens, lambda a, b: kv.row_kv(row, a, b))

    def _fail_all(self, error: Exception, *, include_waiting: bool = False) -> None:
        jobs = list(self._rows)
        if include_waiting:
            with self._wake:
                jobs += list(self._waiting)
                self._waiting.clear()
        for job in self._rows:
            self.registry.release(job.peft_name)
        self._rows, self._kv = [], None
        self._send([(job, ("error", error)) for job in jobs])


def nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids, their probabilities) of the smallest set of likeliest tokens whose mass
    reaches ``top_p`` (always the top token); every token when ``top_p`` >= 1.

    Sorting the whole vocabulary cost up to 2.9 ms a row and step here (on flat
    distributions); the nucleus is found among the top :data:`NUCLEUS_CANDIDATES` unless
    they hold less than ``top_p`` of the mass, and only then is everything sorted."""
    if top_p >= 1.0:
        return torch.arange(probs.numel()), probs
    count = min(NUCLEUS_CANDIDATES, probs.numel())
    while True:
        top, order = probs.topk(count)  # descending
        cumulative = top.cumsum(-1)
        if count == probs.numel() or float(cumulative[-1]) >= top_p:
            keep = max(1, int(((cumulative - top) < top_p).sum()))
            return order[:keep], top[:keep]
        count = probs.numel()
