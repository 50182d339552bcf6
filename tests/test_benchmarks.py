"""Every benchmark script starts: its imports resolve and ``--help`` prints its usage.

The scripts are timed by hand, not in tests, but an import error (for instance
``benchmarks/curvature.py`` shadowing the ``curvature`` package) would otherwise go unnoticed.
"""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


def test_all_scripts_found():
    names = {p.stem for p in SCRIPTS}
    assert {"curvature", "ntk", "sweep_throughput", "train_throughput"} <= names


def _run(script: Path, *args: str, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_starts(script, tmp_path):
    done = _run(script, "--help", cwd=tmp_path, timeout=120)
    assert "usage:" in done.stdout


def test_sweep_benchmark_starts_dask_workers(tmp_path):
    # Worker processes re-run the script without the benchmarks folder on their path.
    done = _run(
        BENCHMARKS / "sweep_throughput.py",
        *("--steps", "20", "--widths", "10", "--runs", "2", "--lanes", "1"),
        *("--dask-runs", "2"),
        cwd=tmp_path,
        timeout=600,
    )
    assert "dask 2w (warm)" in done.stdout
