"""The typed boundary between the parent and the model process: errors and messages survive
the real transport (pickle over a socket pair) with every field, and the parent's handle
turns the child's messages into job events, futures and counters."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import types
from multiprocessing.connection import Connection

import pytest

from engine import EngineSettings, LoraSpec, Sampling
from engine.errors import Busy, LoraLoadError, ModelError
from engine.jobs import Job
from engine.local_files import ModelSource
from engine.scheduler_like import SchedulerLike, SchedulerStats
from engine.worker_messages import (
    AddStopIds,
    Cancel,
    Done,
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
    Token,
    UnloadLora,
    job_event,
)
from engine.worker_process import ProcessScheduler

STATS = SchedulerStats(
    active=2,
    waiting=1,
    steps=7,
    max_rows_seen=3,
    loras_loaded=1,
    row_steps=12,
    decode_seconds=0.25,
    current_loras={"aria": "v2"},
    thread_count=2,
    thread_changes=1,
)
INFO = ModelInfo("torch.bfloat16", 1000, 600, "standalone")


@pytest.fixture
def pipe():
    left, right = socket.socketpair()
    ends = Connection(left.detach()), Connection(right.detach())
    yield ends
    for end in ends:
        end.close()


def across(pipe, message):
    pipe[0].send(message)
    return pipe[1].recv()


@pytest.mark.parametrize(
    ("raised", "expected_type", "expected_message"),
    [
        (
            LoraLoadError("aria", "/loras/aria/v3", "directory not found"),
            LoraLoadError,
            "LoRA for 'aria' at /loras/aria/v3: directory not found",
        ),
        (Busy("the model is busy; try again shortly"), Busy, None),
        (ModelError("generation failed: out of memory"), ModelError, None),
        (RuntimeError("shape mismatch"), ModelError, "RuntimeError: shape mismatch"),
        (KeyboardInterrupt(), ModelError, "KeyboardInterrupt: "),
    ],
)
def test_every_error_survives_the_boundary(pipe, raised, expected_type, expected_message):
    rebuilt = across(pipe, ErrorReport.of(raised)).rebuild()
    assert type(rebuilt) is expected_type
    assert str(rebuilt) == (expected_message or str(raised))
    if isinstance(raised, LoraLoadError):
        assert (rebuilt.name, rebuilt.path, rebuilt.reason) == (
            "aria",
            "/loras/aria/v3",
            "directory not found",
        )


def test_every_message_survives_the_boundary(pipe):
    report = ErrorReport.of(LoraLoadError("bram", "/b/v1", "no adapter_config.json"))
    messages = [
        LoadModel(EngineSettings(base="smollm2", threads="1"), ModelSource("/m", "m")),
        Submit(4, [1, 2, 3], Sampling(16, 0.0, seed=7), LoraSpec("aria", "/a/v1")),
        Submit(5, [9], Sampling(), None),
        Cancel(4),
        LoadLora(6, "aria", "/a/v2"),
        UnloadLora(7, "aria"),
        AddStopIds((2, 49152)),
        Stop(),
        Ready(INFO),
        Failed(report),
        Events((Token(4, 17), Done(4, "stop", "v1"), JobFailed(5, report)), STATS),
        Events((), SchedulerStats()),
        Result(6, "v2", None, STATS),
        Result(7, None, report, STATS),
        Stopped(),
    ]
    for message in messages:
        assert across(pipe, message) == message


def test_the_model_process_is_sent_the_engines_settings_only():
    """The bot's ModelSettings subclasses EngineSettings; unpickling it would make the model
    process import the bot, so the child is sent a plain EngineSettings with its values."""
    from bot.config import ModelSettings

    process = ProcessScheduler(ModelSettings(base="tiny", threads=1, temperature=0.2))
    child = Connection(process._child_socket.detach())
    try:
        process.load(ModelSource("/m", "m"))
        sent = child.recv()
        assert type(sent.settings) is EngineSettings
        assert sent.settings == EngineSettings(base="tiny", threads=1)
    finally:
        child.close()
        process._conn.close()


def test_scheduler_events_become_typed_events_and_back():
    error = Busy("the model is busy; try again shortly")
    token, done, failed = (
        job_event(3, "token", 11),
        job_event(3, "done", ("length", "v4")),
        job_event(3, "error", error),
    )
    assert (token, done) == (Token(3, 11), Done(3, "length", "v4"))
    assert [e.ends_job for e in (token, done, failed)] == [False, True, True]
    assert token.event() == ("token", 11)
    assert done.event() == ("done", ("length", "v4"))
    kind, rebuilt = failed.event()
    assert kind == "error" and type(rebuilt) is Busy and str(rebuilt) == str(error)


@pytest.fixture
def handle():
    """A ProcessScheduler whose child end this test plays, over the real socket pair."""
    process = ProcessScheduler(EngineSettings(max_batch_size=2, max_queue=2))
    child = Connection(process._child_socket.detach())
    process.load(ModelSource("/m", "m"))
    assert isinstance(child.recv(), LoadModel)
    child.send(Ready(INFO))
    assert process.wait_ready() == INFO == process.info
    yield process, child
    child.send(Stopped())
    process.stop()
    child.close()


async def test_the_parent_turns_messages_into_events_futures_and_counters(handle):
    process, child = handle
    loop = asyncio.get_running_loop()
    jobs = [Job([1, 2], Sampling(8, 0.0), None, loop, asyncio.Queue()) for _ in range(2)]
    for job in jobs:
        process.submit(job)
    submitted = [child.recv(), child.recv()]
    assert submitted == [Submit(job.id, [1, 2], Sampling(8, 0.0), None) for job in jobs]
    first, second = jobs
    child.send(
        Events(
            (
                Token(first.id, 5),
                Done(first.id, "stop", None),
                JobFailed(second.id, ErrorReport.of(Busy("full"))),
            ),
            STATS,
        )
    )
    assert await first.events.get() == ("token", 5)
    assert await first.events.get() == ("done", ("stop", None))
    kind, error = await second.events.get()
    assert kind == "error" and type(error) is Busy
    counters = {name: getattr(process, name) for name in _counters()}
    assert counters == {name: getattr(STATS, name) for name in _counters()}
    assert process.current_loras() == {"aria": "v2"}

    future = process.load_lora("aria", "/a/v9")
    request = child.recv()
    assert request == LoadLora(request.request_id, "aria", "/a/v9")
    report = ErrorReport.of(LoraLoadError("aria", "/a/v9", "directory not found"))
    child.send(Result(request.request_id, None, report, dataclasses.replace(STATS, steps=8)))
    with pytest.raises(LoraLoadError) as info:
        await asyncio.wrap_future(future)
    assert (info.value.name, info.value.path, info.value.reason) == (
        "aria",
        "/a/v9",
        "directory not found",
    )
    assert process.steps == 8

    future = process.unload_lora("aria")
    request = child.recv()
    assert request == UnloadLora(request.request_id, "aria")
    child.send(Result(request.request_id, None, None, STATS))
    assert await asyncio.wrap_future(future) is None


def _members() -> set[str]:
    return {name for name in vars(SchedulerLike) if not name.startswith("_")}


def _counters() -> set[str]:
    return {name for name in _members() if isinstance(vars(SchedulerLike)[name], property)}


def test_both_schedulers_offer_what_the_backend_uses():
    """Every SchedulerLike member exists on both schedulers, and every counter is one the
    model process reports."""
    pytest.importorskip("torch")
    from engine.scheduler import Scheduler

    assert _counters() | {"current_loras"} <= {f.name for f in dataclasses.fields(SchedulerStats)}
    registry = types.SimpleNamespace(base=None, loaded={}, current={})
    scheduler = Scheduler(registry, eos_ids={0}, pad_id=0, max_positions=64)
    process = ProcessScheduler(EngineSettings())
    try:
        for name in _members():
            assert hasattr(scheduler, name), name
            assert hasattr(process, name), name
        assert scheduler.stats() == SchedulerStats()
        assert {name: getattr(process, name) for name in _counters()} == {
            name: getattr(scheduler, name) for name in _counters()
        }
    finally:
        process._child_socket.close()
        process._conn.close()
