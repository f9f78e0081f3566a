"""What the parent and the model process say to each other (engine/worker_process.py).

Every message is a frozen dataclass, pickled over the socket pair; each side dispatches on
the message's type through a table. The parent sends :class:`LoadModel` once, then
:class:`Submit`, :class:`Cancel`, :class:`LoadLora`, :class:`UnloadLora`,
:class:`AddStopIds` and finally :class:`Stop`; the model process answers :class:`Ready` or
:class:`Failed`, then one :class:`Events` per decode step (every row's event in one
message), a :class:`Result` per LoRA request and :class:`Stopped` at the end.

Exceptions cross as an :class:`ErrorReport`: ours do not survive pickling
(:class:`~engine.errors.LoraLoadError`'s ``__init__`` takes other arguments than the
message), and anything else must arrive as a ModelError anyway.

No torch here: the parent imports this while the model process imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from engine.base import LoraSpec, Sampling
from engine.errors import Busy, LoraLoadError, ModelError
from engine.local_files import ModelSource
from engine.scheduler_like import SchedulerStats
from engine.settings import EngineSettings

# Plain (not slots) frozen dataclasses: on Python 3.11 a frozen slots dataclass pickles
# through Python-level __getstate__/__setstate__. Measured here, pickling and unpickling a
# 16-row Events message took 21 µs this way (48 µs with slots, 4 µs as the tuples these
# replaced), a one-row one 8 µs: well under 1% of a decode step (10 ms and up).


@dataclass(frozen=True)
class ErrorReport:
    """An exception as it crosses the process boundary; :meth:`rebuild` gives it back as
    the LoraLoadError (with its name, path and reason), Busy or ModelError it was. Other
    exceptions become a ModelError naming their type."""

    kind: Literal["lora", "busy", "model"]
    message: str
    name: str = ""  # the LoRA's, for kind "lora"
    path: str = ""
    reason: str = ""

    @classmethod
    def of(cls, exc: BaseException) -> ErrorReport:
        if isinstance(exc, LoraLoadError):
            return cls("lora", str(exc), exc.name, exc.path, exc.reason)
        if isinstance(exc, Busy):
            return cls("busy", str(exc))
        if isinstance(exc, ModelError):
            return cls("model", str(exc))
        return cls("model", f"{type(exc).__name__}: {exc}")

    def rebuild(self) -> ModelError:
        if self.kind == "lora":
            return LoraLoadError(self.name, self.path, self.reason)
        if self.kind == "busy":
            return Busy(self.message)
        return ModelError(self.message)


@dataclass(frozen=True)
class ModelInfo:
    """What the model process loaded: the dtype's name ("torch.bfloat16"), the bytes of
    the weights and of what one one-row decode step reads, which engine serves it
    ("standalone" or "transformers"), and which path and why, for the start-up line
    ("fast path: qwen2 (bf16 + 4-bit copies)", "plain transformers path: …")."""

    dtype: str
    weight_bytes: int
    step_bytes: int
    engine: str
    path: str = ""


# --- parent → model process ------------------------------------------------------------------
@dataclass(frozen=True)
class LoadModel:
    """Load the base model (the first message; :class:`Stop` instead if the parent gave up
    before it found the model)."""

    settings: EngineSettings
    source: ModelSource


@dataclass(frozen=True)
class Submit:
    """Generate for the job the parent numbered ``job_id``."""

    job_id: int
    prompt: list[int]
    sampling: Sampling
    lora: LoraSpec | None


@dataclass(frozen=True)
class Cancel:
    job_id: int


@dataclass(frozen=True)
class LoadLora:
    """Load (or switch ``name`` to) the LoRA at ``path``; answered by a :class:`Result`
    carrying the version."""

    request_id: int
    name: str
    path: str


@dataclass(frozen=True)
class UnloadLora:
    request_id: int
    name: str


@dataclass(frozen=True)
class AddStopIds:
    """More EOS token ids: the parent's tokenizer may know some the model config lacks."""

    ids: tuple[int, ...]


@dataclass(frozen=True)
class Stop:
    pass


# --- model process → parent ------------------------------------------------------------------
@dataclass(frozen=True)
class Ready:
    info: ModelInfo


@dataclass(frozen=True)
class Failed:
    """Loading failed; the model process exits."""

    error: ErrorReport


@dataclass(frozen=True)
class Token:
    """A job's next token."""

    job_id: int
    token: int
    ends_job: ClassVar[bool] = False

    def event(self) -> tuple[str, Any]:
        """As the job's event queue takes it (engine/jobs.py)."""
        return ("token", self.token)


@dataclass(frozen=True)
class Done:
    """A job finished: ``finish_reason`` "stop" (EOS) or "length"."""

    job_id: int
    finish_reason: str
    lora_version: str | None
    ends_job: ClassVar[bool] = True

    def event(self) -> tuple[str, Any]:
        return ("done", (self.finish_reason, self.lora_version))


@dataclass(frozen=True)
class JobFailed:
    """A job ended with an error (its row is gone; the others go on)."""

    job_id: int
    error: ErrorReport
    ends_job: ClassVar[bool] = True

    def event(self) -> tuple[str, Any]:
        return ("error", self.error.rebuild())


JobEvent = Token | Done | JobFailed


@dataclass(frozen=True)
class Events:
    """One decode step's events for every row (or a submit refused), with the stats after
    it."""

    events: tuple[JobEvent, ...]
    stats: SchedulerStats


@dataclass(frozen=True)
class Result:
    """The answer to :class:`LoadLora` (``value``: the version) or :class:`UnloadLora`;
    ``error`` set if it failed."""

    request_id: int
    value: str | None
    error: ErrorReport | None
    stats: SchedulerStats


@dataclass(frozen=True)
class Stopped:
    pass


def job_event(job_id: int, kind: str, value: Any) -> JobEvent:
    """A scheduler event (engine/jobs.py: ``("token", id)``, ``("done", (finish_reason,
    lora_version))`` or ``("error", exception)``) as it crosses the process boundary."""
    return _JOB_EVENTS[kind](job_id, value)


_JOB_EVENTS = {
    "token": Token,
    "done": lambda job_id, value: Done(job_id, *value),
    "error": lambda job_id, value: JobFailed(job_id, ErrorReport.of(value)),
}
