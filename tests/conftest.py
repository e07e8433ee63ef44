"""Shared fixtures: paths to the real data sets (read from ../shared/datasets, never copied)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("AUTOFACT_DATASETS", ROOT.parent / "shared" / "datasets"))


def dataset(*parts: str) -> Path:
    path = DATASETS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set AUTOFACT_DATASETS)")
    return path


@pytest.fixture
def ml100k() -> Path:
    """The ml-100k folder."""
    return dataset("ml-100k")
