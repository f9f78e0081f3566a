"""Building charbot's CPU kernels (``cpu_kernels.c``) into ``[model] cache_dir``/kernels.

Apart from engine/native.py because it imports no torch: the bot process starts the
build (:func:`build_in_background`, ~2 s of compiler) when it starts the model process, so
that on a first start it runs while the base model is found and converted; the model
process then finds the library built, or waits for the build under the same lock
(:func:`build`). One library per source text and flags; it is built once per machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.c")
MAX_ROWS = 8  # the kernels' own limit (MAX_ROWS in the C file)
FLAGS = (
    "-O3",
    "-mavx512f",
    "-mavx512bw",
    "-mavx512vl",
    "-mavx512bf16",
    "-mavx512vnni",
    "-mf16c",
    "-mfma",
    "-fPIC",
    "-shared",
    "-pthread",
)
# /proc/cpuinfo's names for what those flags let the compiler use
CPU_FEATURES = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni", "f16c", "fma")


def missing_cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The features the kernels need that this CPU lacks (all of them off x86 Linux)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return list(CPU_FEATURES)
    try:
        text = cpuinfo.read_text()
    except OSError:
        return list(CPU_FEATURES)
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            break
    return [name for name in CPU_FEATURES if name not in flags]


def library_path(cache_dir: Path) -> Path:
    """Where the library for this source text and these flags lives."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:16]
    return Path(cache_dir) / "kernels" / f"cpu_kernels-{digest}.so"


def build(cache_dir: Path) -> Path | None:
    """The built library's path, compiling it first if needed (waiting for a build another
    process started); None, with one log line saying why, where it cannot be built."""
    missing = missing_cpu_features()
    if missing:
        log.info("charbot's CPU kernels need %s; using torch's kernels", ", ".join(missing))
        return None
    path = library_path(cache_dir)
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.parent / ".lock", "w")  # noqa: SIM115 (held until the end)
    except OSError as exc:
        log.warning("cannot write charbot's CPU kernels to %s (%s)", path.parent, exc)
        return None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        if path.is_file():
            return path
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if not compiler or not shutil.which(compiler):
            log.info(
                "no C compiler (cc) found: decoding uses torch's kernels; install gcc for "
                "~1.5-2x faster single replies"
            )
            return None
        return path if _compile(compiler, path) else None


def build_in_background(cache_dir: Path) -> None:
    """:func:`build` on a daemon thread (the bot process, while it finds the model)."""
    with contextlib.suppress(OSError):
        if library_path(cache_dir).is_file() or missing_cpu_features():
            return
    threading.Thread(target=build, args=(cache_dir,), name="kernels", daemon=True).start()


def _compile(compiler: str, path: Path) -> bool:
    """Compile to a temporary name and rename: a reader never sees a half-written file."""
    try:
        handle, tmp = tempfile.mkstemp(prefix=".kernels-", suffix=".so", dir=path.parent)
        os.close(handle)
    except OSError as exc:
        log.warning("cannot write charbot's CPU kernels to %s (%s)", path.parent, exc)
        return False
    command = [compiler, *FLAGS, "-o", tmp, str(SOURCE), "-lm"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[0]
            log.warning("compiling charbot's CPU kernels failed: %s; using torch's", first)
            return False
        os.replace(tmp, path)
        return True
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("compiling charbot's CPU kernels failed: %s; using torch's", exc)
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
