"""Running the model in its own process, on that process's main thread.

Why: on this CPU, oneDNN's bf16 matmuls called from a secondary thread ran ~2× slower
than from a main thread (measured: 62 µs vs 119 µs for one decode-sized Linear; a whole
decode step 27 ms vs 38 ms), and a bot's main thread belongs to its event loop. So the
scheduler runs as the main thread of a child process; the parent keeps the tokenizer
(prompt encoding, streaming decode, token counting) and talks to the child over a pipe —
one message per decode step carrying every row's token.

:class:`ProcessScheduler` and the in-process :class:`~engine.scheduler.Scheduler` are both
a :class:`~engine.scheduler_like.SchedulerLike`; the messages between the two processes are
in engine/worker_messages.py.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from engine.errors import Busy, ModelError
from engine.jobs import Job, send_to_loops
from engine.local_files import ModelSource
from engine.scheduler_like import PrefixStats, SchedulerStats
from engine.settings import EngineSettings, engine_settings
from engine.worker_messages import (
    AddStopIds,
    Cancel,
    ErrorReport,
    Events,
    Failed,
    JobFailed,
    LoadLora,
    LoadModel,
    ModelInfo,
    Ready,
    Result,
    Stop,
    Stopped,
    Submit,
    UnloadLora,
    job_event,
)

if TYPE_CHECKING:
    from engine.scheduler import Scheduler

START_TIMEOUT_S = 300  # a first start may convert nothing here, but loading can be slow


def serve(conn: Connection, settings: EngineSettings, source: ModelSource, window=None) -> None:
    """The child process: load, report ready, then run the scheduler on this main thread.

    ``window``: the thread policy's first window, opened when the process started."""
    from engine.loading import build_scheduler, load_model, load_standalone
    from engine.settings import parse_threads
    from engine.threads import ThreadPolicy

    threads = ThreadPolicy.opened_earlier(parse_threads(settings.threads), window)
    threads.settle()
    try:
        # A plain Llama loads without transformers and peft (seconds of imports); the rest
        # through them.
        loaded = load_standalone(source, settings) or load_model(
            source, settings, with_tokenizer=False
        )
    except BaseException as exc:  # reported to the parent, which raises it from start()
        conn.send(Failed(ErrorReport.of(exc)))
        return
    child = _ModelProcess(conn)
    scheduler = build_scheduler(loaded, settings, send=child.send, threads=threads)
    child.scheduler = scheduler
    threading.Thread(target=child.read, name="charbot-pipe", daemon=True).start()
    engine = "transformers" if scheduler.registry.transformers else "standalone"
    info = ModelInfo(str(loaded.dtype), loaded.weight_bytes, loaded.step_bytes, engine, loaded.path)
    child.post(Ready(info))
    scheduler.run_forever()
    child.post(Stopped())


class _ModelProcess:
    """The model process's end of the pipe: each message from the parent becomes a call on
    the scheduler (one handler per message type); the scheduler's events go back as one
    :class:`Events` message per step."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.scheduler: Scheduler  # set once built: its send is ours
        self.jobs: dict[int, Job] = {}  # by the parent's job ids
        self._send_lock = threading.Lock()  # the scheduler's thread and the reader's post
        self._reading = True
        self._handlers: dict[type, Callable[[Any], None]] = {
            Submit: self._submit,
            Cancel: self._cancel,
            LoadLora: self._load_lora,
            UnloadLora: self._unload_lora,
            AddStopIds: self._add_stop_ids,
            Stop: self._stop,
        }

    def post(self, message: object) -> None:
        with self._send_lock, contextlib.suppress(EOFError, OSError):  # the parent is gone
            self.conn.send(message)

    def send(self, events: list[tuple[Job, tuple[str, Any]]]) -> None:
        """The scheduler's ``send``: one step's events for every row."""
        out = []
        for job, (kind, value) in events:
            event = job_event(job.id, kind, value)
            if event.ends_job:
                self.jobs.pop(job.id, None)
            out.append(event)
        self.post(Events(tuple(out), self.scheduler.stats()))

    def read(self) -> None:
        """Handle the parent's messages until :class:`Stop` or the parent is gone."""
        while self._reading:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):  # the parent is gone
                self.scheduler.request_stop()
                return
            self._handlers[type(message)](message)

    def _submit(self, message: Submit) -> None:
        job = Job(message.prompt, message.sampling, message.lora, id=message.job_id)
        self.jobs[job.id] = job
        try:
            self.scheduler.submit(job)
        except ModelError as exc:
            self.jobs.pop(job.id, None)
            failed = JobFailed(job.id, ErrorReport.of(exc))
            self.post(Events((failed,), self.scheduler.stats()))

    def _cancel(self, message: Cancel) -> None:
        job = self.jobs.get(message.job_id)
        if job is not None:
            self.scheduler.cancel(job)

    def _load_lora(self, message: LoadLora) -> None:
        future = self.scheduler.load_lora(message.name, message.path)
        future.add_done_callback(lambda f: self._answer(message.request_id, f))

    def _unload_lora(self, message: UnloadLora) -> None:
        future = self.scheduler.unload_lora(message.name)
        future.add_done_callback(lambda f: self._answer(message.request_id, f))

    def _add_stop_ids(self, message: AddStopIds) -> None:
        self.scheduler.eos_ids |= set(message.ids)

    def _stop(self, message: Stop) -> None:
        self.scheduler.request_stop()
        self._reading = False

    def _answer(self, request_id: int, future: concurrent.futures.Future) -> None:
        error = future.exception()
        if error is None:
            result = Result(request_id, future.result(), None, self.scheduler.stats())
        else:
            result = Result(request_id, None, ErrorReport.of(error), self.scheduler.stats())
        self.post(result)


class ProcessScheduler:
    """The parent's handle on the model process: a
    :class:`~engine.scheduler_like.SchedulerLike` whose counters are the ones the child
    last reported."""

    def __init__(self, settings: EngineSettings) -> None:
        # A caller's subclass (the bot's ModelSettings) would make the child import the bot
        # to unpickle it: the child gets the engine's fields only.
        self.settings = engine_settings(settings)
        # The child's queue bound is the real one; this keeps the pipe from filling up.
        self.max_in_flight = settings.max_batch_size + settings.max_queue
        self.info: ModelInfo | None = None  # once ready
        self._stats = SchedulerStats()
        self._jobs: dict[int, Job] = {}
        self._futures: dict[int, concurrent.futures.Future] = {}
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._closed = False
        self._reading = True
        self._handlers: dict[type, Callable[[Any], None]] = {
            Events: self._on_events,
            Result: self._on_result,
            Stopped: self._on_stopped,
        }
        # A plain subprocess rather than multiprocessing's "spawn": that one re-runs the
        # parent's __main__ script in the child, which breaks scripts without a main guard.
        parent, child = socket.socketpair()
        self._child_socket = child
        self._conn = Connection(parent.detach())
        self._process: subprocess.Popen | None = None
        self._reader = threading.Thread(target=self._read, name="charbot-model-pipe", daemon=True)

    # --- lifecycle (blocking: call from a thread) -------------------------------------------
    def spawn(self) -> None:
        """Start the child process: it imports torch (over a second) while this one finds
        the base model (converting it on a first start); then :meth:`load`."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # find `engine` as we do
        fd = self._child_socket.fileno()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "engine.worker_main", str(fd)],
            pass_fds=[fd],
            env=env,
        )
        self._child_socket.close()

    def load(self, source: ModelSource) -> None:
        """Have the child load ``source``; :meth:`wait_ready` blocks until it has."""
        self._conn.send(LoadModel(self.settings, source))

    def wait_ready(self) -> ModelInfo:
        """What the child loaded, once it has; the child's error if loading failed."""
        if not self._conn.poll(START_TIMEOUT_S):
            self._process.kill()
            raise ModelError("the model process did not start in time")
        try:
            message = self._conn.recv()
        except EOFError:
            raise ModelError("the model process exited while loading (see its log)") from None
        if isinstance(message, Failed):
            self._process.wait(5)
            raise message.error.rebuild()
        self.info = message.info
        self._reader.start()
        return self.info

    def stop(self) -> None:
        self._post(Stop())
        if self._process is not None:
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        # The child is gone, so the reader meets Stopped or the end of the socket soon:
        # closing the connection under its recv() would fail that thread instead.
        if self._reader.is_alive():
            self._reader.join(timeout=10)
        self._conn.close()

    # --- used by the backend ---------------------------------------------------------------
    def submit(self, job: Job) -> None:
        if self._closed:
            raise ModelError("the model process has stopped")
        if len(self._jobs) >= self.max_in_flight:
            raise Busy("the model is busy; try again shortly")
        job.id = next(self._ids)
        self._jobs[job.id] = job
        self._post(Submit(job.id, job.prompt, job.sampling, job.lora))

    def cancel(self, job: Job) -> None:
        if self._jobs.pop(job.id, None) is not None:
            self._post(Cancel(job.id))

    def add_stop_ids(self, ids: set[int]) -> None:
        self._post(AddStopIds(tuple(sorted(ids))))

    def load_lora(self, name: str, path: str) -> concurrent.futures.Future:
        request_id, future = self._new_request()
        self._post(LoadLora(request_id, name, str(path)))
        return future

    def unload_lora(self, name: str) -> concurrent.futures.Future:
        request_id, future = self._new_request()
        self._post(UnloadLora(request_id, name))
        return future

    def current_loras(self) -> dict[str, str]:
        return dict(self._stats.current_loras)

    # The counters, as of the child's last message (see SchedulerLike for each).
    @property
    def active(self) -> int:
        return self._stats.active

    @property
    def waiting(self) -> int:
        return self._stats.waiting

    @property
    def prefix_stats(self) -> PrefixStats:
        return self._stats.prefix_stats

    @property
    def steps(self) -> int:
        return self._stats.steps

    @property
    def max_rows_seen(self) -> int:
        return self._stats.max_rows_seen

    @property
    def loras_loaded(self) -> int:
        return self._stats.loras_loaded

    @property
    def row_steps(self) -> int:
        return self._stats.row_steps

    @property
    def decode_seconds(self) -> float:
        return self._stats.decode_seconds

    @property
    def thread_count(self) -> int | None:
        return self._stats.thread_count

    @property
    def thread_changes(self) -> int:
        return self._stats.thread_changes

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    # --- internals ---------------------------------------------------------------------------
    def _new_request(self) -> tuple[int, concurrent.futures.Future]:
        future: concurrent.futures.Future = concurrent.futures.Future()
        request_id = next(self._ids)
        self._futures[request_id] = future
        return request_id, future

    def _post(self, message: object) -> None:
        with self._send_lock:
            try:
                self._conn.send(message)
            except (BrokenPipeError, OSError) as exc:
                if not isinstance(message, Stop):
                    raise ModelError("the model process has stopped") from exc

    def _read(self) -> None:
        """Handle the child's messages until it stops or is gone; then fail what waits."""
        while self._reading:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            self._handlers[type(message)](message)
        self._closed = True
        gone = ModelError("the model process stopped")
        send_to_loops([(job, ("error", gone)) for job in self._jobs.values()])
        self._jobs.clear()
        for future in self._futures.values():
            future.set_exception(gone)
        self._futures.clear()

    def _on_events(self, message: Events) -> None:
        self._stats = message.stats
        events = []
        for event in message.events:
            job = self._jobs.get(event.job_id)
            if job is None:
                continue  # cancelled here already
            if event.ends_job:
                self._jobs.pop(event.job_id, None)
            events.append((job, event.event()))
        send_to_loops(events)

    def _on_result(self, message: Result) -> None:
        self._stats = message.stats
        future = self._futures.pop(message.request_id, None)
        if future is None:
            return
        if message.error is None:
            future.set_result(message.value)
        else:
            future.set_exception(message.error.rebuild())

    def _on_stopped(self, message: Stopped) -> None:
        self._reading = False
