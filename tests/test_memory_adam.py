"""Memory of full-batch Adam (issue 11, item 3), checked deterministically: what a fit leaves
alive when it returns (the garbage collector off, so only references count), the bytes the
objective's transposes hold, and the temporaries of Adam's step and of the regularizer (every
tensor an operation makes, seen by a dispatch mode), never RSS. The RSS of the whole
read-and-fit with 1, 2 and 4 processes is measured by ``benchmarks/shards.py``.

Run by pytest; its ``__main__`` is the worker two gloo processes run under torchrun:

    torchrun --standalone --nproc-per-node 2 tests/test_memory_adam.py OUT
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import autofact
from autofact import distributed
from autofact.objective import Objective
from autofact.solvers.first_order import _Adam
from autofact.sparse import build_patterns

HERE = Path(__file__)
SRC = HERE.parent.parent / "src"


def planted(n_ratings: int, m: int = 2_000, n: int = 500, seed: int = 0) -> autofact.Ratings:
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, m * n, n_ratings))
    return autofact.Ratings(keys // n, keys % n, rng.normal(3.0, 1.0, len(keys)).astype(np.float32),
                            shape=(m, n), _sorted=True)


def adam(**kw: Any) -> autofact.MatrixFactorization:
    return autofact.MatrixFactorization(rank=4, solver="adam", epochs=3, seed=0, bias=True,
                                        beta=0.5, verbose=False, **kw)


@contextmanager
def no_collector() -> Iterator[None]:
    """The garbage collector off: what stays alive is what references hold."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def alive(kind: type) -> int:
    """Instances of ``kind`` alive (by ``type``: ``isinstance`` on every object would touch
    torch's deprecated ``reduce_op``, a warning)."""
    return sum(type(o) is kind for o in gc.get_objects())


class _NewTensors(TorchDispatchMode):
    """The bytes of each tensor an operation returns in a storage none of its inputs had."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        out = func(*args, **(kwargs or {}))
        given = {t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs))
                 if isinstance(t, torch.Tensor)}
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in given:
                self.sizes.append(t.untyped_storage().nbytes())
        return out


def new_tensors(fn: Callable[[], Any]) -> list[int]:
    with _NewTensors() as mode:
        fn()
    return mode.sizes


# ------------------------------------------------------------------ what a fit leaves alive
@pytest.mark.parametrize("solver", ["adam", "gd"])
def test_a_full_batch_fit_leaves_no_objective_or_optimizer_alive(solver):
    # issue 11, item 3: the full-batch step's closure held its Epoch, which held the step: a
    # reference cycle that kept the objective (its transposes: 4 bytes a rating), Adam's
    # moments and the guard's copy alive after fit() returned, until the collector ran (on
    # rank 0 of a shared fit, beside the gathered training pattern: 1.12-1.16 of the bound)
    r = planted(20_000)
    with no_collector():
        model = adam(lr=0.01) if solver == "adam" else adam(lr=1e-3).set_params(solver="gd")
        model.fit(r)
        assert alive(Objective) == 0
        assert alive(_Adam) == 0
    assert np.isfinite(model.user_factors_).all()


def test_a_fit_gives_the_same_factors_with_the_collector_off():
    # the weak reference the step reaches its Epoch by stays alive while the fit runs: the
    # guard's hook is called every epoch (the same fit with the collector on or off)
    r = planted(20_000)
    want = adam().fit(r)
    with no_collector():
        got = adam().fit(r)
    np.testing.assert_array_equal(got.user_factors_, want.user_factors_)
    assert [h["loss"] for h in got.history_] == [h["loss"] for h in want.history_]


# ------------------------------------------------------------------ the objective's transposes
def _transpose_bytes(obj: Objective) -> int:
    out: dict[int, int] = {}
    for p in obj.patterns:
        for t in (getattr(p, name, None) for name in ("_perm", "_perm_low", "_perm_high",
                                                     "_tcrow", "_rows_t")):
            if t is not None:
                s = t.untyped_storage()
                out[s.data_ptr()] = s.nbytes()
    return sum(out.values())


def test_the_transposes_hold_17_bits_a_rating_when_memory_is_short():
    # issue 11, item 3: with max_memory too small to keep the transposes' rows (keep_rows off),
    # each block's order of the transpose is kept in its low 16 bits and, past 2**16 entries,
    # its 17th bit packed: 2.125 bytes a rating, not 4 (95 MiB at 25M ratings, 48 MiB saved)
    r = planted(600_000, m=6_000, n=2_000)
    obj = Objective(r, bias=True, max_memory=2**23)  # blocks of 87,381 entries
    assert not obj.keep_rows
    assert max(p.nnz for p in obj.patterns) > 2**16  # blocks that need the 17th bit
    obj.value_and_grad(obj.init_params(4, seed=0))
    held = _transpose_bytes(obj)
    assert held <= 2.125 * len(r) + 8 * len(obj.patterns), held / len(r)
    assert held >= 2 * len(r)  # the count is not vacuous


@pytest.mark.parametrize("nnz, m, n", [(2**17, 3_000, 20_000), (2**16, 1_000, 500),
                                        (70_000, 900, 400), (300, 40, 30)])
def test_a_short_transpose_is_the_whole_one(nnz, m, n):
    # the 17-bit order unpacks to the stable sort by column: the same transposed products,
    # so the same gradient, as with the transposes kept whole (issue 11)
    rng = np.random.default_rng(1)
    keys = np.unique(rng.integers(0, m * n, int(nnz * 1.05)))[:nnz]
    rows = torch.from_numpy((keys // n).astype(np.int32))
    cols = torch.from_numpy((keys % n).astype(np.int32))
    short = build_patterns(rows, cols, (m, n), 2**17, keep_rows=False)
    whole = build_patterns(rows, cols, (m, n), 2**17, keep_rows=True)
    assert all(p.short_perm for p in short) and not any(p.short_perm for p in whole)
    for a, b in zip(short, whole, strict=True):
        for x, y in zip(a.transpose(), b.transpose(), strict=True):
            assert x.dtype == y.dtype
            assert torch.equal(x, y)
        assert torch.equal(a.transpose()[2].long(), torch.sort(a.col, stable=True).indices)


def test_a_row_longer_than_a_short_transpose_keeps_a_whole_one():
    n = 300_000
    cols = np.sort(np.random.default_rng(0).choice(n, 2**17 + 100, replace=False))
    rows = torch.cat([torch.zeros(len(cols), dtype=torch.int32), torch.ones(5, dtype=torch.int32)])
    cols_t = torch.cat([torch.from_numpy(cols.astype(np.int32)), torch.arange(5, dtype=torch.int32)])
    long, short = build_patterns(rows, cols_t, (2, n), 2**17, keep_rows=False)
    assert long.nnz > 2**17 and not long.short_perm and short.short_perm
    for p in (long, short):
        assert torch.equal(p.transpose()[2].long(), torch.sort(p.col, stable=True).indices)


def test_short_and_whole_transposes_give_the_same_gradient():
    r = planted(600_000, m=6_000, n=2_000)
    grads = []
    for keep in (False, True):
        obj = Objective(r, bias=True, max_memory=2**23)
        if keep:  # the same blocks, their transposes kept whole
            obj.patterns = build_patterns(obj.users, obj.items, obj.shape, obj._block_nnz(),
                                          keep_rows=True)
        params = obj.init_params(4, seed=0)
        value = obj.value_and_grad(params)
        grads.append((value, {k: v.grad.clone() for k, v in params.items()}))
    assert grads[0][0] == grads[1][0]
    for k in grads[0][1]:
        assert torch.equal(grads[0][1][k], grads[1][1][k]), k


# ------------------------------------------------------------------ temporaries
def test_adams_step_makes_one_slice_sized_buffer_a_parameter():
    # issue 11, item 3: the step's denominator was a fresh 4 MiB tensor a slice, the next made
    # before the last was freed (8 MiB at once); now one 1 MiB buffer a parameter, written in
    # place, whatever the parameter's size
    params = [torch.zeros(2**21 + 5).requires_grad_(), torch.zeros(300, 4).requires_grad_()]
    for p in params:
        p.grad = torch.full_like(p, 0.5)
    opt = _Adam(params, lr=0.01)
    opt.step()  # the first step makes the moments (optimizer state, counted by the bound)
    sizes = new_tensors(opt.step)
    assert sorted(sizes) == sorted([_Adam.CHUNK * 4, 300 * 4 * 4])
    assert _Adam.CHUNK * 4 <= 2**20


def test_adams_step_gives_the_update_of_torch_optim_adam():
    g = torch.Generator().manual_seed(0)
    ours = [torch.randn(2**19 + 3, generator=g).requires_grad_(), torch.randn(50, 3).requires_grad_()]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt, ref = _Adam(ours, lr=0.01), torch.optim.Adam(theirs, lr=0.01, foreach=False)
    for _ in range(3):
        for a, b in zip(ours, theirs, strict=True):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_the_regularizer_is_taken_in_slices_of_at_most_2_18_entries():
    # issue 11, item 3: slices of max_memory's share (699,050 entries at 64 MiB) made ~11 MiB
    # of autograd temporaries on the process that adds the regularizer (rank 0's peak above
    # the others'); at most 2**18 entries a slice, about four slice-sized temporaries
    r = planted(50_000, m=30_000, n=500)
    obj = Objective(r, bias=True, beta=0.5, max_memory=64 * 2**20)
    params = obj.init_params(32, seed=0)
    P = params["P"]
    slices = obj._reg_slices(P)
    assert len(slices) > 1
    assert max(P[s].numel() for s in slices) <= 2**18
    grads = {k: torch.zeros_like(v) for k, v in params.items()}
    sizes = new_tensors(lambda: obj._regularize_into(params, grads))
    assert max(sizes) <= 2**18 * 4
    # the same value and gradient as the regularizer on the whole tensors, by autograd
    leaves = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    whole = sum(obj.reg(v) for v in leaves.values())
    whole.backward()
    fresh = {k: torch.zeros_like(v) for k, v in params.items()}
    value = obj._regularize_into(params, fresh)
    torch.testing.assert_close(value, whole.detach(), rtol=1e-5, atol=0)
    for k, v in leaves.items():
        torch.testing.assert_close(fresh[k], v.grad, rtol=1e-6, atol=0)


def test_the_regularization_value_takes_a_slice_at_a_time():
    # issue 11, item 3: sharded ALS's rank 0 took the items' regularizer on the whole table at
    # every epoch (a table-sized temporary: its peak above the other processes'); the value
    # is the same sum, taken a row slice at a time for a separable regularizer
    r = planted(50_000, m=30_000, n=500)
    obj = Objective(r, bias=True, beta=0.5, max_memory=64 * 2**20)
    P = obj.init_params(32, seed=0)["P"].detach()
    assert len(obj._reg_slices(P)) > 1
    sizes = new_tensors(lambda: obj.regularization_value(P))
    assert max(sizes) <= 2**18 * 4
    torch.testing.assert_close(obj.regularization_value(P), obj.reg(P).reshape(()),
                               rtol=1e-5, atol=0)
    whole = Objective(r, bias=True, beta=0.5, regularization=lambda x: 0.25 * (x * x).sum())
    assert max(new_tensors(lambda: whole.regularization_value(P))) == P.numel() * 4  # kept whole


# ------------------------------------------------------------------ rank 0's gather
def test_rank_0_gathers_the_seen_items_with_the_fit_state_freed(tmp_path):
    # issue 11, item 3: rank 0 gathers every process's (user, item) pairs after the fit (4
    # bytes a rating of all the ratings); the objective, Adam's state and the guard's copy must
    # be gone by then (the collector off in the workers: only references count), and rank 0's
    # model still leaves every process's seen items out of its recommendations
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH",
                                                                                    "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(HERE), str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank, seen in enumerate(found):
        assert seen["objectives"] == 0 and seen["optimizers"] == 0, (rank, seen)
        assert seen["grads"] == [], (rank, seen)
    r = planted(20_000)
    with np.load(tmp_path / "seen.npz", allow_pickle=False) as f:
        indptr, indices, top = f["indptr"], f["indices"], f["top"]
    np.testing.assert_array_equal(np.diff(indptr), np.bincount(r.users, minlength=r.shape[0]))
    np.testing.assert_array_equal(indices, r.items)  # every process's pairs, by (user, item)
    for u, items in enumerate(top):  # users of both processes: none of their rated items
        assert not set(items) & set(r.items[r.users == u])
    # issue 11, item 3: the default (gather_seen=False) leaves rank 0 its own users' seen items;
    # distributed.save's file has every user's, exactly; nothing answers as if rank 1's users
    # had rated nothing
    saved = autofact.load(tmp_path / "model.npz")
    np.testing.assert_array_equal(saved.index_.seen.indptr[1:] - saved.index_.seen.indptr[:-1],
                                  np.bincount(r.users, minlength=r.shape[0]))
    np.testing.assert_array_equal(saved.index_.seen.indices, r.items)
    refused = found[0]["refused"]
    assert found[0]["complete"] == [False, False]
    assert "cannot save the model with model.save: this model holds the seen items of" in \
        refused["save"] and "autofact.distributed.save(model, path)" in refused["save"]
    assert "cannot leave out the users' rated items" in refused["recommend"]
    assert "user 1 and 0 more rated items that live on another process" in refused["recommend"]
    assert "user 5 and 0 more" in refused["subset"]  # rank 1's, not asked for
    with np.load(tmp_path / "seen.npz", allow_pickle=False) as f:
        top_subset = f["top_subset"]
    for u, items in enumerate(top_subset):  # the users asked for: none of their rated items
        assert not set(items) & set(r.items[r.users == u])
    assert not (tmp_path / "refused.npz").exists()


def _worker(out: str) -> None:
    gc.disable()  # only references keep anything alive (deterministic)
    rank, world = distributed.init(timeout=120)
    r = planted(20_000)
    local = r.subset(r.users % world == rank)  # each process its own users' ratings
    seen: dict[str, Any] = {}
    original = distributed._gather_pattern

    def spying(model: Any, plan: Any, wanted: Any) -> None:
        seen["objectives"], seen["optimizers"] = alive(Objective), alive(_Adam)
        seen["grads"] = [k for k, p in model._params.items() if p.grad is not None]
        original(model, plan, wanted)

    distributed._gather_pattern = spying  # type: ignore[assignment]
    fitted = distributed.fit(adam(), local, local=True, gather_seen=True)
    distributed._gather_pattern = original  # type: ignore[assignment]
    # issue 11, item 3: by default rank 0 holds its own users' seen items only; the file
    # distributed.save writes (a range of users at a time: several here, in small pieces) has
    # every user's; gather_seen=<ids> gathers those users'
    distributed._SAVE_STEP, distributed._GATHER_STEP = 3_000, 500  # type: ignore[attr-defined]
    partial = distributed.fit(adam(), local, local=True)
    distributed.save(partial, Path(out, "model.npz"))
    subset = distributed.fit(adam(), local, local=True, gather_seen=list(local.user_ids[:4]))
    if rank == 0:
        refused = {}
        for what, call in (("save", lambda: partial.save(Path(out, "refused.npz"))),
                           ("recommend", lambda: partial.recommend(local.user_ids[1], n=5)),
                           ("subset", lambda: subset.recommend(local.user_ids[5], n=5))):
            try:
                call()
            except ValueError as exc:
                refused[what] = str(exc)
        seen["refused"] = refused
        seen["complete"] = [partial.index_.pattern_complete, subset.index_.pattern_complete]
        indptr, indices = fitted.index_.seen_arrays()
        top = fitted.recommend_batch(np.arange(4), n=400)
        top_subset = subset.recommend_batch(local.user_ids[:4], n=400)
        np.savez(Path(out, "seen.npz"), indptr=indptr, indices=indices,
                 top=np.asarray([list(t.items) for t in top]),
                 top_subset=np.asarray([list(t.items) for t in top_subset]))
    Path(out, f"rank{rank}.json").write_text(json.dumps(seen))
    distributed.shutdown()


if __name__ == "__main__":
    _worker(sys.argv[1])
