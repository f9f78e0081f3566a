"""Every benchmark starts the way the docs run it: ``python benchmarks/NAME.py`` puts
benchmarks/ first on sys.path, so a module there named like an installed package hides it
(benchmarks/kernels.py once hid the ``kernels`` package transformers imports)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
ENGINE_BENCH = sorted(p.stem for p in (ROOT / "engine" / "bench").glob("*.py") if p.stem[0] != "_")


def _installed_elsewhere(name: str, hidden_by: Path) -> bool:
    """Whether ``name`` is importable from somewhere other than ``hidden_by``."""
    saved = list(sys.path)
    try:
        sys.path[:] = [p for p in saved if Path(p or ".").resolve() != hidden_by]
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    finally:
        sys.path[:] = saved
    return spec is not None and spec.origin is not None and Path(spec.origin).parent != hidden_by


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_no_benchmark_module_hides_an_installed_one(script: Path) -> None:
    assert not _installed_elsewhere(script.stem, script.parent), (
        f"benchmarks/{script.name} hides the installed module {script.stem!r}; rename it"
    )


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_each_benchmark_starts_as_the_docs_run_it(script: Path) -> None:
    # A script answers --help after its imports; a helper module just imports.
    is_script = '__name__ == "__main__"' in script.read_text(encoding="utf-8")
    command = [sys.executable, str(script.relative_to(ROOT)), *(["--help"] if is_script else [])]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not is_script or "usage:" in result.stdout


@pytest.mark.parametrize("name", ENGINE_BENCH)
def test_each_engine_measurement_starts(name: str) -> None:
    command = [sys.executable, "-m", f"engine.bench.{name}", "--help"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr[-2000:]


def test_the_memory_benchmark_runs_quick() -> None:
    # benchmarks/memory.py --quick: a few turns, a canned model, one 2,000-message chat.
    command = [sys.executable, "benchmarks/memory.py", "--quick"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| overall |" in result.stdout and "| 2,000 |" in result.stdout


def test_processes_benchmark_quick() -> None:
    """benchmarks/processes.py --quick: three processes on one PostgreSQL, nothing lost,
    nothing answered twice, no errors (it exits 1 otherwise)."""
    import json

    from tests.postgres import skip_reason

    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    command = [sys.executable, "benchmarks/processes.py", "--quick"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    several = figures["several"]
    assert several["processes"] == 3 and several["stored"] == several["messages"] == 60
    assert (several["lost"], several["answered_twice"], several["errors"]) == (0, 0, 0)
    assert figures["one"]["answered"] == 60


def test_fairness_quick_run_stores_everything_and_tells_the_flooder_once() -> None:
    command = [sys.executable, "benchmarks/fairness.py", "--quick"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    on, off = result.stdout.split("limits off")
    assert "stored: 13 of 13 messages" in on and "stored: 13 of 13 messages" in off
    assert "flooder: 6 answered, 4 limited" in on and "; 1 notice(s)" in on
    assert "0 limited" in off and "the flooder's replies ahead of anyone else's: 1 at" in off


def test_the_rollout_benchmark_runs_quick(tmp_path: Path) -> None:
    # benchmarks/rollout.py --quick: 20 simulated canaries per case through bot.compare.
    out = tmp_path / "rollout.json"
    command = [sys.executable, "benchmarks/rollout.py", "--quick", "--json", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    cases = json.loads(out.read_text())["cases"]
    assert set(cases) == {"equal", "10 points better", "10 points worse"}
    for case in cases.values():  # every experiment ends one way or another
        total = case["promote"] + case["rollback"] + case["stop"] + case["running"]
        assert total == pytest.approx(1.0)
    assert cases["10 points better"]["promote"] > cases["10 points worse"]["promote"]
    assert "baseline: promote" in result.stdout
