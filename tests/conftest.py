"""Shared fixtures: paths to the real data sets (read from ../shared/datasets, never copied).

Without the data a real-data test is skipped, so that the suite runs anywhere; under CI
(``CI=true``, as ``.ci/run`` is run) a missing data set fails the test instead, so that a green CI
run has exercised every real-data test (issue 8, item 15).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("AUTOFACT_DATASETS", ROOT.parent / "shared" / "datasets"))


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
