"""Processes on one machine split its workspace budget as they split its cores (issue 11,
item 3: each process's memory is its share)."""

from __future__ import annotations

import numpy as np
import pytest

import autofact
from autofact import model as model_module
from autofact.sharding import ShardPlan
from autofact.solvers import gibbs


class _FourHere(ShardPlan):
    """The one-process plan, as if torchrun had started 4 processes on this machine."""

    local_processes = 4


def _ratings() -> autofact.Ratings:
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, 40 * 30, 500))
    return autofact.Ratings(keys // 30, keys % 30, rng.normal(3, 1, len(keys)), shape=(40, 30))


@pytest.mark.parametrize("plan, want", [(None, 2**24), (_FourHere(), 2**22)])
def test_an_objective_gets_the_machines_max_memory_split_between_its_processes(
        monkeypatch, plan, want):
    seen = []
    real = model_module.Objective

    def spy(*args, **kwargs):
        seen.append(kwargs["max_memory"])
        return real(*args, **kwargs)

    monkeypatch.setattr(model_module, "Objective", spy)
    m = autofact.MatrixFactorization(solver="adam", rank=2, epochs=1, max_memory=2**24)
    m.fit(_ratings(), plan=plan)
    assert seen == [want]


def test_the_sampler_gets_the_machines_max_memory_split_between_its_processes(monkeypatch):
    seen = []
    real = gibbs.gibbs_mf

    def spy(*args, **kwargs):
        seen.append(kwargs.get("max_memory"))
        return real(*args, **kwargs)

    monkeypatch.setattr(gibbs, "gibbs_mf", spy)
    autofact.MatrixFactorization(rank=2, epochs=3, max_memory=2**24, seed=0).fit(
        _ratings(), plan=_FourHere())
    assert seen == [2**22]
