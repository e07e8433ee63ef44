"""Shared fixtures: paths to the real data sets (read from ../shared/datasets, never copied).

Without the data a real-data test is skipped, so that the suite runs anywhere; under CI
(``CI=true``, as ``.ci/run`` is run) a missing data set fails the test instead, so that a green CI
run has exercised every real-data test (issue 8, item 15).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("AUTOFACT_DATASETS", ROOT.parent / "shared" / "datasets"))


def torchrun_bounded(world: int, *args: str, timeout: float = 300) -> str:
    """``torchrun --standalone --nproc-per-node WORLD ARGS`` (gloo on loopback, ``src`` and the
    repository on the path), every process ended even past ``timeout`` (its session killed);
    fails the test unless it exits 0; returns its standard error."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         str(world), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # timed out: end torchrun and the workers it started
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    return err


def in_ci() -> bool:
    """Whether the suite runs under CI, where every real-data test must run."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def dataset(*parts: str) -> Path:
    """``DATASETS / parts``; skips the test where it is missing (fails it under CI)."""
    path = DATASETS.joinpath(*parts)
    if not path.exists():
        message = f"real data not found at {path} (set AUTOFACT_DATASETS)"
        if in_ci():
            pytest.fail(f"{message}; under CI every real-data test must run, none may be skipped")
        pytest.skip(message)
    return path


@pytest.fixture
def ml100k() -> Path:
    """The ml-100k folder."""
    return dataset("ml-100k")


def interrupt_at_call(monkeypatch: pytest.MonkeyPatch, owner: object, name: str,
                      n: int) -> SimpleNamespace:
    """Patch ``owner.name`` so that its ``n``-th call raises ``KeyboardInterrupt`` (as Ctrl-C
    would, deterministically); the other calls go through. Returns ``.original`` and
    ``.calls`` (the calls so far)."""
    state = SimpleNamespace(original=getattr(owner, name), calls=0)

    def interrupting(*args: object, **kwargs: object) -> object:
        state.calls += 1
        if state.calls == n:
            raise KeyboardInterrupt
        return state.original(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupting)
    return state
