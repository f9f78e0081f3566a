"""``[model] threads``: a fixed count is honoured; "auto" yields cores to busy neighbours."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.config import load_config, parse_threads
from bot.errors import ConfigError

torch = pytest.importorskip("torch")

from engine.threads import ThreadPolicy, process_ticks, system_busy_ticks  # noqa: E402

CONFIG = """
[model]
backend = "echo"
threads = {value}

[[characters]]
name = "Aria"
"""


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_parse_threads() -> None:
    assert parse_threads("auto") is None and parse_threads("AUTO") is None
    assert parse_threads(3) == 3 and parse_threads("2") == 2
    for bad in (0, -1, "many", "", True):
        with pytest.raises(ValueError):
            parse_threads(bad)


@pytest.mark.parametrize("value", ['"many"', "0", "true"])
def test_a_bad_setting_is_one_line(tmp_path: Path, value: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(value=value))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "[model] threads" in str(caught.value) and "\n" not in str(caught.value)


def test_a_good_setting_loads(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(value="1"))
    assert load_config(path).model.threads == 1


def test_a_fixed_count_is_set_and_kept() -> None:
    policy = ThreadPolicy(fixed=1)
    assert torch.get_num_threads() == 1 and policy.threads == 1
    policy.check(now=1e9)  # fixed: never re-reads anything
    assert torch.get_num_threads() == 1 and policy.changes == 0


def test_auto_leaves_cores_to_others_and_takes_them_back() -> None:
    policy = ThreadPolicy(cores=2)
    assert policy.threads == 0  # undecided until its first window closes
    tick = policy._tick
    # (seconds, busy ticks of the whole machine, ticks of ours): 1 s apart
    assert policy.update((0, 0, 0), (1, int(0.05 * tick), 0)) == 2  # quiet: every core
    assert torch.get_num_threads() == 2
    assert policy.update((0, 0, 0), (1, int(1.6 * tick), int(0.6 * tick))) == 1  # others: 1 core
    assert torch.get_num_threads() == 1
    assert policy.update((1, 0, 0), (2, int(0.25 * tick), 0)) == 1  # in the gap: unchanged
    assert policy.update((2, 0, 0), (3, int(1.05 * tick), tick)) == 2  # others: quiet again
    assert policy.changes == 3 and torch.get_num_threads() == 2
    four = ThreadPolicy(cores=4)
    assert four.update((0, 0, 0), (1, int(2.2 * tick), tick)) == 2  # others: 1.2 cores → 2 left


def test_settle_decides_before_loading() -> None:
    policy = ThreadPolicy(cores=2)
    time.sleep(0.2)
    assert policy.settle() in (1, 2) and torch.get_num_threads() == policy.threads


def test_auto_sees_a_real_busy_process() -> None:
    """A CPU-bound neighbour, measured from /proc, makes auto drop to one thread."""
    if system_busy_ticks() is None or process_ticks("self") == 0:
        pytest.skip("no /proc counters here")
    policy = ThreadPolicy(cores=2)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        deadline = time.monotonic() + 10
        while policy.threads != 1 and time.monotonic() < deadline:
            policy.check()
            time.sleep(0.1)
        assert policy.threads == 1, f"others measured at {policy.others:.2f} cores"
        assert policy.others > 0.35
    finally:
        hog.kill()
        hog.wait()
