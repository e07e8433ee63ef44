"""Issue 11, item 3: the set-up of a sharded fit without transient copies of every rating or
every factor entry (sharded ALS peaked 1.02-1.07x the bound at 2 and 4 processes of 25M
ratings: the initial factors' float64 draw, the users' renumbered codes, a process's rows
gathered at once, the non-finite check's mask). Checked deterministically, from what is
allocated and passed (not from RSS); ``benchmarks/shards.py`` measures the RSS."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from autofact import _memory
from autofact.objective import Objective
from autofact.sharding import ShardPlan
from autofact.solvers import als
from autofact.sparse import build_patterns
from tests.test_memory_als import planted


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 31, 48, 1_000, 4_099])
@pytest.mark.parametrize("chunk", [16, 32, 1 << 16])
def test_randn_sliced_draws_torch_randn_bit_for_bit(n, chunk):
    # issue 11, item 3: the initial factors drawn a slice at a time are the one draw's numbers,
    # and the generator is left where the one draw leaves it
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    want = torch.randn(n, generator=g1, dtype=torch.float64).mul_(0.1)
    got = _memory.randn_sliced((n,), g2, 0.1, torch.float64, chunk=chunk)
    assert torch.equal(got, want)
    assert torch.equal(torch.randn(5, generator=g1), torch.randn(5, generator=g2))
    got32 = _memory.randn_sliced((n,), torch.Generator().manual_seed(3), 0.1, torch.float32,
                                 chunk=chunk)
    assert got32.dtype == torch.float32 and torch.equal(got32, want.float())


def test_randn_sliced_refuses_a_slice_that_is_not_a_multiple_of_16():
    with pytest.raises(ValueError, match="chunk must be a multiple of 16, got 10"):
        _memory.randn_sliced((100,), None, 1.0, torch.float64, chunk=10)


@pytest.mark.parametrize("implicit", [False, True])
def test_init_params_draws_the_same_start_without_a_float64_table(monkeypatch, implicit):
    # issue 11, item 3: the draw took 12 bytes a factor entry at once (a float64 table and the
    # float32 copy: 84 MiB above a 4-process share of 25M ratings at rank 32)
    monkeypatch.setattr(_memory, "RANDN_SLICE", 64)
    monkeypatch.setattr(_memory.randn_sliced, "__defaults__", ("cpu", 64))
    sizes = []
    real = torch.randn

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = real(*args, **kwargs)
        sizes.append(out.numel())
        return out

    r = planted()
    m, n = r.shape
    obj = Objective(r, bias=True, dtype="float32", implicit=implicit)
    monkeypatch.setattr(torch, "randn", spy)
    params = obj.init_params(4, seed=7)
    monkeypatch.undo()
    assert sizes and max(sizes) < 64 + 16  # a slice (the tail joins the last)
    g = torch.Generator().manual_seed(7)
    for name, rows in [("P", m), ("Q", n)] + ([("Y", n)] if implicit else []):
        want = torch.randn(rows, 4, generator=g, dtype=torch.float64).mul_(0.1).float()
        assert params[name].dtype == torch.float32 and torch.equal(params[name].detach(), want)
    assert not params["bu"].any() and params["bi"].dtype == torch.float32


def test_build_patterns_with_row_ids_gives_the_blocks_of_the_renumbered_rows():
    # issue 11, item 3: a process's users numbered by their order among its own, without a
    # renumbered copy of their codes (4 bytes a rating at the sharded set-up's peak)
    rng = np.random.default_rng(0)
    own = np.sort(rng.choice(500, 120, replace=False))
    rows = np.sort(rng.choice(own, 3_000))
    cols = rng.integers(0, 40, len(rows))
    order = np.lexsort((cols, rows))
    rows_t = torch.from_numpy(rows[order].astype(np.int32))
    cols_t = torch.from_numpy(cols[order].astype(np.int32))
    renumbered = torch.from_numpy(np.searchsorted(own, rows[order]).astype(np.int32))
    for max_nnz, max_rows in [(10_000, None), (97, None), (200, 7)]:
        want = build_patterns(renumbered, cols_t, (len(own), 40), max_nnz, max_rows=max_rows)
        got = build_patterns(rows_t, cols_t, (len(own), 40), max_nnz, max_rows=max_rows,
                             row_ids=torch.from_numpy(own))
        assert len(got) == len(want) > 0
        for a, b in zip(got, want, strict=True):
            assert (a.row0, a.row1, a.start, a.stop) == (b.row0, b.row1, b.start, b.stop)
            assert torch.equal(a.crow, b.crow) and torch.equal(a.col, b.col)


class _Pretend(ShardPlan):
    """A plan that says two processes share the fit; its collectives are the one process's
    (every row owned here): enough to build the sharded solver's layout and run its epoch's
    steps (not to give the shared fit's numbers: ``tests/test_distributed_als.py`` does)."""

    world_size = 2


@pytest.mark.parametrize("tiled", [False, True])
def test_the_sharded_layout_cuts_the_users_blocks_from_the_ratings_codes(monkeypatch, tiled):
    # issue 11, item 3: the user blocks (and the item ranges' user blocks) are cut from the
    # ratings' own user codes: no renumbered copy of them is made
    if tiled:
        monkeypatch.setattr(als, "BY_ITEM_SHARE", 0.0)
    calls = []
    real = als.build_patterns

    def spy(rows, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((rows.data_ptr(), kwargs.get("row_ids")))
        return real(rows, *args, **kwargs)

    monkeypatch.setattr(als, "build_patterns", spy)
    r = planted()
    obj = Objective(r, bias=True, beta=0.5, dtype="float32", max_memory=2**20, plan=_Pretend())
    params = obj.init_params(3, seed=0)
    solver = als.make_als(obj, params).run
    assert (solver.tiles is not None) == tiled
    # the user blocks, and the item ranges' user blocks (tiled) or the blocks by item (not)
    by_user = [(ptr, ids) for ptr, ids in calls if ids is not None]
    assert len(calls) == 2 and len(by_user) == (2 if tiled else 1)
    for ptr, row_ids in by_user:
        assert ptr == obj.users.data_ptr() and torch.equal(row_ids, solver.own)


def test_a_sharded_epoch_checks_its_user_rows_without_an_entry_mask(monkeypatch):
    # issue 11, item 3: the check that every process stops alike on a non-finite user row
    # wrote a mask and an int64 count of every entry (12 bytes an entry); a sum answers
    r = planted()
    obj = Objective(r, bias=True, beta=0.5, dtype="float32", plan=_Pretend())
    params = obj.init_params(3, seed=0)
    epoch = als.make_als(obj, params)
    sizes = []
    real = torch.isfinite

    def spy(t):  # type: ignore[no-untyped-def]
        sizes.append(t.numel())
        return real(t)

    monkeypatch.setattr(torch, "isfinite", spy)
    epoch.run()
    monkeypatch.undo()
    m = r.shape[0]
    assert m * 3 not in sizes and m not in sizes  # P's and bu's entries: summed, not masked
    assert all(torch.isfinite(p).all() for p in params.values())


@pytest.mark.parametrize("shared", [False, True])
def test_als_by_ranges_leaves_the_heaps_thresholds_to_the_process(monkeypatch, shared):
    # issue 11, item 3 / issue 10, item 2: fixing glibc's thresholds keeps the ranges'
    # temporaries on the heap (3.4M page faults instead of 1.0M in some runs), but it is a
    # process-wide setting: the library never makes it (the autofact program and the shards
    # benchmark do, at their start)
    import ctypes

    monkeypatch.setattr(als, "BY_ITEM_SHARE", 0.0)
    calls = []
    real_cdll = ctypes.CDLL

    class Watched:  # a C library handle whose mallopt is recorded, not called
        def __init__(self, name, *a, **kw):
            self.lib = real_cdll(name, *a, **kw)

        def __getattr__(self, attr):
            if attr == "mallopt":
                return lambda *args: calls.append(args)
            return getattr(self.lib, attr)

    monkeypatch.setattr(ctypes, "CDLL", Watched)
    _memory.pin_heap_thresholds()  # the check itself: pinning is seen
    assert len(calls) == 2
    calls.clear()
    obj = Objective(planted(), bias=True, beta=0.5, dtype="float32", max_memory=2**20,
                    plan=_Pretend() if shared else None)
    als.make_als(obj, obj.init_params(3, seed=0)).run()  # set-up and one epoch
    assert calls == []
    monkeypatch.undo()
    _memory.pin_heap_thresholds()  # (on this machine's C library: no error, whatever it is)


def test_the_program_fixes_the_heaps_thresholds(monkeypatch):
    # the autofact program (cli.run) is its own process: it fixes them before the verb runs
    from autofact import cli

    calls = []
    monkeypatch.setattr(_memory, "pin_heap_thresholds", lambda: calls.append(True))
    monkeypatch.setattr(sys, "argv", ["autofact", "--version"])
    with pytest.raises(SystemExit):
        cli.run()
    assert calls == [True]
