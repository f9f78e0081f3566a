"""Running the model in its own process, on that process's main thread.

Why: on this CPU, oneDNN's bf16 matmuls called from a secondary thread ran ~2× slower
than from a main thread (measured: 62 µs vs 119 µs for one decode-sized Linear; a whole
decode step 27 ms vs 38 ms), and a bot's main thread belongs to its event loop. So the
scheduler runs as the main thread of a child process; the parent keeps the tokenizer
(prompt encoding, streaming decode, token counting) and talks to the child over a pipe —
one message per decode step carrying every row's token.

:class:`ProcessScheduler` offers the same methods the backend uses on the in-process
:class:`~engine.scheduler.Scheduler`.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from engine.errors import Busy, LoraLoadError, ModelError
from engine.jobs import Job, send_to_loops
from engine.local_files import ModelSource
from engine.settings import EngineSettings

START_TIMEOUT_S = 300  # a first start may convert nothing here, but loading can be slow


def _encode_error(exc: BaseException) -> tuple:
    # Our exception types do not survive pickling (their __init__ takes other arguments).
    if isinstance(exc, LoraLoadError):
        return ("lora", exc.name, exc.path, exc.reason)
    if isinstance(exc, Busy):
        return ("busy", str(exc))
    return ("model", str(exc) if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}")


def _decode_error(data: tuple) -> Exception:
    if data[0] == "lora":
        return LoraLoadError(data[1], data[2], data[3])
    if data[0] == "busy":
        return Busy(data[1])
    return ModelError(data[1])


def serve(conn, settings: EngineSettings, source: ModelSource, window=None) -> None:
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
        conn.send(("failed", _encode_error(exc)))
        return
    jobs: dict[int, Job] = {}
    send_lock = threading.Lock()

    def post(message: tuple) -> None:
        with send_lock, _suppress_closed():
            conn.send(message)

    def stats() -> dict[str, Any]:
        return {
            "active": scheduler.active,
            "waiting": scheduler.waiting,
            "steps": scheduler.steps,
            "max_rows_seen": scheduler.max_rows_seen,
            "loras_loaded": scheduler.loras_loaded,
            "row_steps": scheduler.row_steps,
            "decode_seconds": scheduler.decode_seconds,
            "current": scheduler.current_loras(),
            "threads": scheduler.thread_count,
            "thread_changes": scheduler.thread_changes,
        }

    def send(events: list[tuple[Job, tuple[str, Any]]]) -> None:
        out = []
        for job, (kind, value) in events:
            if kind in ("done", "error"):
                jobs.pop(job.id, None)
            out.append((job.id, kind, _encode_error(value) if kind == "error" else value))
        post(("events", out, stats()))

    scheduler = build_scheduler(loaded, settings, send=send, threads=threads)

    def answer(request_id: int, future: concurrent.futures.Future) -> None:
        error = future.exception()
        if error is None:
            post(("result", request_id, True, future.result(), stats()))
        else:
            post(("result", request_id, False, _encode_error(error), stats()))

    def read() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                scheduler.request_stop()
                return
            kind = message[0]
            if kind == "submit":
                _, job_id, prompt, sampling, lora = message
                job = Job(prompt, sampling, lora, id=job_id)
                jobs[job_id] = job
                try:
                    scheduler.submit(job)
                except ModelError as exc:
                    jobs.pop(job_id, None)
                    post(("events", [(job_id, "error", _encode_error(exc))], stats()))
            elif kind == "cancel":
                job = jobs.get(message[1])
                if job is not None:
                    scheduler.cancel(job)
            elif kind == "load":
                future = scheduler.load_lora(message[2], message[3])
                future.add_done_callback(lambda f, rid=message[1]: answer(rid, f))
            elif kind == "unload":
                future = scheduler.unload_lora(message[2])
                future.add_done_callback(lambda f, rid=message[1]: answer(rid, f))
            elif kind == "stop_ids":  # the parent's tokenizer may know more EOS tokens
                scheduler.eos_ids |= set(message[1])
            elif kind == "stop":
                scheduler.request_stop()
                return

    threading.Thread(target=read, name="charbot-pipe", daemon=True).start()
    engine = "transformers" if scheduler.registry.transformers else "standalone"
    info = {
        "dtype": str(loaded.dtype),
        "weight_bytes": loaded.weight_bytes,
        "step_bytes": loaded.step_bytes,
        "engine": engine,
    }
    post(("ready", info))
    scheduler.run_forever()
    post(("stopped",))


class _suppress_closed:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, traceback) -> bool:
        return kind is not None and issubclass(kind, (BrokenPipeError, EOFError, OSError))


class ProcessScheduler:
    """The parent's handle on the model process (same surface as Scheduler)."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        # The child's queue bound is the real one; this keeps the pipe from filling up.
        self.max_in_flight = settings.max_batch_size + settings.max_queue
        self.info: dict[str, Any] = {}
        self._stats: dict[str, Any] = {}
        self._jobs: dict[int, Job] = {}
        self._futures: dict[int, concurrent.futures.Future] = {}
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._closed = False
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
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # find `bot` as we do
        fd = self._child_socket.fileno()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "engine.worker_main", str(fd)],
            pass_fds=[fd],
            env=env,
        )
        self._child_socket.close()

    def load(self, source: ModelSource) -> None:
        """Have the child load ``source``; :meth:`wait_ready` blocks until it has."""
        self._conn.send(("load", self.settings, source))

    def wait_ready(self) -> None:
        if not self._conn.poll(START_TIMEOUT_S):
            self._process.kill()
            raise ModelError("the model process did not start in time")
        try:
            message = self._conn.recv()
        except EOFError:
            raise ModelError("the model process exited while loading (see its log)") from None
        if message[0] == "failed":
            self._process.wait(5)
            raise _decode_error(message[1])
        self.info = message[1]
        self._reader.start()

    def stop(self) -> None:
        self._post(("stop",))
        if self._process is not None:
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._conn.close()

    # --- used by the backend ---------------------------------------------------------------
    def submit(self, job: Job) -> None:
        if self._closed:
            raise ModelError("the model process has stopped")
        if len(self._jobs) >= self.max_in_flight:
            raise Busy("the model is busy; try again shortly")
        job.id = next(self._ids)
        self._jobs[job.id] = job
        self._post(("submit", job.id, job.prompt, job.sampling, job.lora))

    def cancel(self, job: Job) -> None:
        if self._jobs.pop(job.id, None) is not None:
            self._post(("cancel", job.id))

    def wake(self) -> None:
        return None

    def add_stop_ids(self, ids: set[int]) -> None:
        self._post(("stop_ids", sorted(ids)))

    def load_lora(self, name: str, path: str) -> concurrent.futures.Future:
        return self._request("load", name, str(path))

    def unload_lora(self, name: str) -> concurrent.futures.Future:
        return self._request("unload", name)

    def current_loras(self) -> dict[str, str]:
        return dict(self._stats.get("current", {}))

    active = property(lambda self: self._stats.get("active", 0))
    waiting = property(lambda self: self._stats.get("waiting", 0))
    steps = property(lambda self: self._stats.get("steps", 0))
    max_rows_seen = property(lambda self: self._stats.get("max_rows_seen", 0))
    loras_loaded = property(lambda self: self._stats.get("loras_loaded", 0))
    row_steps = property(lambda self: self._stats.get("row_steps", 0))
    decode_seconds = property(lambda self: self._stats.get("decode_seconds", 0.0))
    thread_count = property(lambda self: self._stats.get("threads"))
    thread_changes = property(lambda self: self._stats.get("thread_changes", 0))

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    # --- internals ---------------------------------------------------------------------------
    def _request(self, kind: str, *args: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        request_id = next(self._ids)
        self._futures[request_id] = future
        self._post((kind, request_id, *args))
        return future

    def _post(self, message: tuple) -> None:
        with self._send_lock:
            try:
                self._conn.send(message)
            except (BrokenPipeError, OSError) as exc:
                if message[0] != "stop":
                    raise ModelError("the model process has stopped") from exc

    def _read(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "events":
                self._stats = message[2]
                events = []
                for job_id, event, value in message[1]:
                    job = self._jobs.get(job_id)
                    if job is None:
                        continue  # cancelled here already
                    if event in ("done", "error"):
                        self._jobs.pop(job_id, None)
                    events.append(
                        (job, (event, _decode_error(value) if event == "error" else value))
                    )
                send_to_loops(events)
            elif kind == "result":
                _, request_id, ok, value, self._stats = message
                future = self._futures.pop(request_id, None)
                if future is not None:
                    future.set_result(value) if ok else future.set_exception(_decode_error(value))
            elif kind == "stopped":
                break
        self._closed = True
        gone = ModelError("the model process stopped")
        send_to_loops([(job, ("error", gone)) for job in self._jobs.values()])
        self._jobs.clear()
        for future in self._futures.values():
            future.set_exception(gone)
        self._futures.clear()
