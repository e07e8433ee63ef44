"""The ways ALS assembles and solves its Hessians (issue 10): the K x K systems factored laid
out across the rows or by LAPACK, Z whole or in column slices, row blocks on workers; all give
the same fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import autofact
from autofact.solvers import als


@pytest.mark.parametrize("case", ["squared", "huber", "unobserved"])
def test_systems_solved_across_the_rows_give_the_fit_of_lapack(monkeypatch, case):
    # issue 10: K x K systems factored laid out across the rows (K <= ROWS_SOLVE_K, blocks of
    # at least ROWS_SOLVE_MIN rows), the fit of LAPACK's one-matrix-at-a-time solve; with the
    # unobserved term (its Gram parts added to H and the gradient)
    loss = "huber" if case == "huber" else "squared"
    kw = {"unobserved_weight": 0.05} if case == "unobserved" else {}
    rng = np.random.default_rng(0)
    dense = rng.integers(1, 6, size=(40, 30)).astype(float)
    dense[rng.random(dense.shape) < 0.6] = np.nan
    data = autofact.Ratings.from_dense(dense)
    fits = []
    calls = []
    real = als._rows_damped_solve
    monkeypatch.setattr(als, "_rows_damped_solve", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(als, "ROWS_SOLVE_MIN", 1)  # (a block of 40 rows: LAPACK's by default)
    for rows_k in (als.ROWS_SOLVE_K, 0):  # across the rows, then LAPACK
        monkeypatch.setattr(als, "ROWS_SOLVE_K", rows_k)
        fits.append(autofact.MatrixFactorization(rank=4, solver="als", loss=loss, epochs=5,
                                                 dtype="float64", seed=0, **kw).fit(data))
        assert bool(calls) == (rows_k > 0)
        calls.clear()
    np.testing.assert_allclose(fits[0].user_factors_, fits[1].user_factors_, rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(fits[0].item_factors_, fits[1].item_factors_, rtol=1e-10,
                               atol=1e-12)


def test_a_non_finite_hessian_row_gets_no_step():
    import torch

    H = torch.eye(3).repeat(4, 1, 1)
    g = torch.ones(4, 3)
    H[2, 0, 1] = float("nan")
    x = als._spd_solve(H, g)
    assert torch.equal(x[2], torch.zeros(3))
    torch.testing.assert_close(x[[0, 1, 3]], torch.ones(3, 3))


def _data(seed: int = 0) -> autofact.Ratings:
    rng = np.random.default_rng(seed)
    dense = rng.integers(1, 6, size=(50, 35)).astype(float)
    dense[rng.random(dense.shape) < 0.5] = np.nan
    return autofact.Ratings.from_dense(dense)


@pytest.mark.parametrize("loss", ["squared", "huber"])
def test_row_blocks_on_two_workers_give_the_factors_of_one(monkeypatch, loss):
    # issue 10: threads over whole row blocks, BLOCKS_PER_WORKER blocks a worker (one block a
    # side for one worker: all rows fit); rows are solved on their own, so the cut changes
    # nothing beyond rounding
    from autofact import threads

    data = _data()
    whole = autofact.MatrixFactorization(rank=3, solver="als", loss=loss, epochs=4, seed=0,
                                         dtype="float64").fit(data)
    monkeypatch.setattr(threads, "MIN_WORK_PER_WORKER", 1)  # every side worth splitting
    monkeypatch.setattr(als, "MIN_WORK_PER_WORKER", 1)
    seen = []
    real = als._AlternatingNewton._finish

    def spy(self, *args, **kwargs):
        import threading

        seen.append(threading.current_thread().name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(als._AlternatingNewton, "_finish", spy)
    fits = {}
    for n in (1, 2):
        seen.clear()
        fits[n] = autofact.MatrixFactorization(rank=3, solver="als", loss=loss, epochs=4,
                                               seed=0, dtype="float64", n_threads=n).fit(data)
        workers = {name for name in seen if name != "MainThread"}
        # one pool a side, of n workers (named ..._0, ..._1); one worker: the caller's thread
        assert {name.rsplit("_", 1)[-1] for name in workers} == ({"0", "1"} if n == 2 else set())
        per_side = [1, 1] if n == 1 else \
            [math.ceil(r / math.ceil(r / (n * als.BLOCKS_PER_WORKER))) for r in (50, 35)]
        assert len(seen) == 4 * sum(per_side)  # epochs x blocks of both sides
    for fit in fits.values():
        np.testing.assert_allclose(fit.user_factors_, whole.user_factors_, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(fit.item_factors_, whole.item_factors_, rtol=1e-9, atol=1e-12)


def test_an_error_in_a_worker_reaches_the_caller(monkeypatch):
    from autofact import threads

    monkeypatch.setattr(threads, "MIN_WORK_PER_WORKER", 1)
    monkeypatch.setattr(als, "MIN_WORK_PER_WORKER", 1)
    with pytest.raises(ValueError, match="needs a loss with a non-zero second derivative"):
        autofact.MatrixFactorization(rank=3, solver="als", loss="absolute", epochs=2,
                                     n_threads=2).fit(_data())


@pytest.mark.parametrize("loss", ["squared", "huber"])
def test_z_in_column_slices_shared_by_a_group_of_blocks_gives_the_fit_of_z_whole(monkeypatch,
                                                                                 loss):
    # issue 10: where Z (n_other x K(K+1)/2) does not fit in half of max_memory, its column
    # slices are computed once for a group of consecutive blocks and accumulated into each
    # block's upper triangles; the fit is the one of Z computed whole
    from autofact import threads

    rng = np.random.default_rng(1)
    m, n = 600, 450
    counts = np.minimum(rng.geometric(0.3, size=m), 40)  # most users short, some long
    users = np.repeat(np.arange(m), counts)
    items = np.concatenate([rng.choice(n, size=c, replace=False) for c in counts])
    data = autofact.Ratings.from_coo(users, items, rng.integers(1, 6, size=len(users)),
                                     shape=(m, n))
    monkeypatch.setattr(threads, "MIN_WORK_PER_WORKER", 1)  # blocks cut for 2 workers
    monkeypatch.setattr(als, "MIN_WORK_PER_WORKER", 1)
    groups = []
    real = als._groups

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        groups.append(out)
        return out

    monkeypatch.setattr(als, "_groups", spy)
    fits = {}
    for max_memory in (2**16, 2**26):
        fits[max_memory] = autofact.MatrixFactorization(
            rank=3, solver="als", loss=loss, epochs=4, seed=0, dtype="float64",
            max_memory=max_memory, n_threads=2).fit(data)
        if max_memory == 2**16:
            # both sides in groups (n_other x 10 x 8 bytes > 2**15), some of several blocks
            assert len(groups) == 2 * 4 and max(len(g) for gs in groups for g in gs) > 1
    assert len(groups) == 2 * 4  # Z whole: no groups
    # Z whole in column slices of 8 columns (the cache-sized slices, made small): the same fit
    monkeypatch.setattr(als, "Z_SLICE_BYTES", 1)
    sliced = autofact.MatrixFactorization(rank=3, solver="als", loss=loss, epochs=4, seed=0,
                                          dtype="float64", max_memory=2**26,
                                          n_threads=2).fit(data)
    for name in ("user_factors_", "item_factors_", "user_bias_", "item_bias_"):
        np.testing.assert_allclose(getattr(fits[2**16], name), getattr(fits[2**26], name),
                                   rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(getattr(sliced, name), getattr(fits[2**26], name),
                                   rtol=1e-12, atol=1e-14)


def test_z_whole_in_cache_sized_column_slices_gives_the_same_fit(monkeypatch):
    # issue 10: Z whole is used in contiguous column slices (Z_SLICE_BYTES) so that C @ Z's
    # gathers stay in cache; each entry of C @ Z is the same sum whatever the slices
    fits = []
    for slice_bytes in (als.Z_SLICE_BYTES, 1):  # the upper triangle in one slice; in 8s
        monkeypatch.setattr(als, "Z_SLICE_BYTES", slice_bytes)
        fits.append(autofact.MatrixFactorization(rank=3, solver="als", loss="huber", epochs=4,
                                                 seed=0, dtype="float64").fit(_data()))
    for name in ("user_factors_", "item_factors_", "user_bias_", "item_bias_"):
        np.testing.assert_allclose(getattr(fits[1], name), getattr(fits[0], name), rtol=1e-12,
                                   atol=1e-14)


# ------------------------------------------------------- second derivatives kept (issue 10)
def _kept(monkeypatch, budget: int | None = None) -> list:
    """Every ``_Curvatures`` the fits below build (with ``budget`` bytes for kept values, when
    given), to look into what they kept."""
    made = []
    real = als._Curvatures.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if budget is not None:
            self.budget = budget
        made.append(self)

    monkeypatch.setattr(als._Curvatures, "__init__", spy)
    return made


def _weighted() -> autofact.Ratings:
    data = _data()
    weights = np.random.default_rng(3).uniform(0.5, 2.0, size=len(data))
    return autofact.Ratings.from_coo(data.users, data.items, data.values, shape=data.shape,
                                     weights=weights)


def _fit_both(monkeypatch, data, **kw) -> list:
    fits = []
    for keep in (True, False):
        monkeypatch.setattr(als, "CACHE_CURVATURE", keep)
        fits.append(autofact.MatrixFactorization(rank=4, solver="als", epochs=5, seed=0,
                                                 dtype="float64", **kw).fit(data))
    return fits


def _assert_same(a, b) -> None:
    for name in ("user_factors_", "item_factors_", "user_bias_", "item_bias_"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=0, atol=1e-12,
                                   err_msg=name)
    np.testing.assert_allclose([h["loss"] for h in a.history_],
                               [h["loss"] for h in b.history_], rtol=1e-13)


@pytest.mark.parametrize("case", ["squared", "weighted", "unobserved", "two workers",
                                  "one number"])
def test_kept_second_derivatives_give_the_factors_computed_each_epoch(monkeypatch, case):
    # issue 10: the squared loss's l'' (2, or 2 w with weights) and L2's curvature do not
    # depend on the rows, which autograd's own operations show: kept from the first epoch (as
    # values, or as one number where the values do not fit), the fit is the one that computes
    # them every epoch
    from autofact import threads

    made = _kept(monkeypatch, budget=0 if case == "one number" else None)
    data = _weighted() if case == "weighted" else _data()
    kw = {"unobserved_weight": 0.05} if case == "unobserved" else {}
    if case == "two workers":
        monkeypatch.setattr(threads, "MIN_WORK_PER_WORKER", 1)
        monkeypatch.setattr(als, "MIN_WORK_PER_WORKER", 1)
        kw["n_threads"] = 2
    on, off = _fit_both(monkeypatch, data, **kw)
    _assert_same(on, off)
    kept = made[0].kept
    loss_kept = [v for k, v in kept.items() if k[0] == "loss"]
    reg_kept = [v for k, v in kept.items() if k[0] == "reg"]
    assert loss_kept and reg_kept
    if case == "one number":
        assert all(v == 2.0 for v in loss_kept) and all(isinstance(v, float) for v in reg_kept)
    else:
        assert all(isinstance(v, torch.Tensor) for v in loss_kept + reg_kept)
        if case != "weighted":
            assert all(bool((v == 2.0).all()) for v in loss_kept)
    assert made[1].kept == {}  # forced off: nothing kept


def _asymmetric(pred, target):
    """Curvature 4 above the target and 1 below: its third derivative is 0 everywhere, yet
    l'' depends on the prediction (through the comparison only)."""
    r = pred - target
    return torch.where(r > 0, 2.0 * r * r, 0.5 * r * r)


@pytest.mark.parametrize("loss", [_asymmetric, "huber", "logistic"])
def test_a_curvature_that_depends_on_the_prediction_is_computed_every_epoch(monkeypatch, loss):
    # issue 10: kept only where no data flows from the prediction to l''; a comparison with it
    # (huber, the asymmetric loss) or a smooth function of it (logistic) keeps nothing
    made = _kept(monkeypatch)
    data = _data()
    if loss == "logistic":
        data = autofact.Ratings.from_coo(data.users, data.items,
                                         np.where(data.values > 3, 1.0, -1.0), shape=data.shape)
    on, off = _fit_both(monkeypatch, data, loss=loss, beta=0.1)
    _assert_same(on, off)
    assert [v for k, v in made[0].kept.items() if k[0] == "loss"] and \
        all(v is None for k, v in made[0].kept.items() if k[0] == "loss")
    # the test has teeth: l'' kept from the first epoch (as if it were fixed) changes the fit
    monkeypatch.setattr(als, "CACHE_CURVATURE", True)
    monkeypatch.setattr(als, "_follows", lambda run, source: (run(), True))
    wrong = autofact.MatrixFactorization(rank=4, solver="als", epochs=5, seed=0, beta=0.1,
                                         dtype="float64", loss=loss).fit(data)
    scale = float(np.abs(off.user_factors_).max())
    assert float(np.abs(wrong.user_factors_ - off.user_factors_).max()) > 1e-3 * scale


def _second(f, x):
    from autofact.objective import diagonal_derivatives

    return diagonal_derivatives(lambda z: f(z).sum(), x)


@pytest.mark.parametrize(("f", "fixed"), [
    (lambda z: (3.0 - z) ** 2, True),
    (lambda z: 0.7 * (z - 1.0) ** 2 + z, True),
    (lambda z: torch.where(z > 0, z * z, 2 * z * z), False),  # a comparison
    (lambda z: z**3, False),
    (lambda z: (z - 1.0) ** 2 * (2.0 if float(z.detach().sum()) > 0 else 1.0), False),  # a branch
    (lambda z: (z - torch.rand_like(z)) ** 2 * torch.rand(()), False),  # random
])
def test_follows_sees_data_flow_from_the_prediction_to_the_second_derivative(f, fixed):
    x = torch.linspace(-1.0, 1.0, 7, dtype=torch.float64)
    (g1, g2, value), free = als._follows(lambda: _second(f, x), x)
    assert free is fixed
    want = _second(f, x)
    if fixed:
        torch.testing.assert_close(g2, want[1], rtol=0, atol=0)
        torch.testing.assert_close(g1, want[0], rtol=0, atol=0)


@pytest.mark.parametrize("weighted", [False, True])
def test_ratings_by_item_are_the_objectives_transpose_without_the_sorted_item_ids(monkeypatch,
                                                                                weighted):
    # issue 11 (memory): the item half-step's ratings by item keep users and values (8 bytes a
    # rating), the blocks cut from the sorted item ids, which are dropped; the same order,
    # values and blocks as Objective.transposed
    from autofact.objective import Objective
    from autofact.sparse import build_patterns

    monkeypatch.setattr(als, "SORT_BYTES", 10**6)  # the order in chunks (_item_order)
    obj = Objective(_weighted() if weighted else _data(), dtype="float64")
    want = obj.transposed(max_rows=7)
    got, blocks = als._by_item(obj, None, obj.shape[0], lambda rows, cols, shape: build_patterns(
        rows, cols, shape, obj.max_nnz, keep_rows=obj.keep_rows, max_rows=7))
    assert got.shape == want.shape and got.users.numel() == 0
    assert torch.equal(got.items, want.items) and torch.equal(got.values, want.values)
    assert (got.weights is None) == (not weighted)
    if weighted:
        assert torch.equal(got.weights, want.weights)
    assert len(blocks) == len(want.patterns) > 1
    for a, b in zip(blocks, want.patterns, strict=True):
        assert (a.row0, a.row1, a.start) == (b.row0, b.row1, b.start)
        assert torch.equal(a.crow, b.crow) and torch.equal(a.col, b.col)
    # numbered by a map (a process's own users, sharded): the users mapped, the same order
    lut = torch.arange(obj.shape[0], dtype=obj.users.dtype) * 2
    mapped, _ = als._by_item(obj, lut, 2 * obj.shape[0], lambda rows, cols, shape: None)
    assert torch.equal(mapped.items, want.items * 2) and mapped.shape == (obj.shape[1],
                                                                            2 * obj.shape[0])


@pytest.mark.parametrize("budget", [7 * als.SORT_BYTES, 1024 * als.SORT_BYTES, 10**9])
def test_item_order_in_chunks_is_the_stable_sort(budget):
    # issue 11 (memory): a counting sort over chunks of entries within the budget (the first
    # two: chunks of 1024 entries), not one sort of them all (the last)
    items = torch.from_numpy(np.random.default_rng(5).integers(0, 9, 3000).astype(np.int32))
    order, counts = als._item_order(items, 11, budget)  # two items never rated
    assert order.dtype == torch.int32
    assert torch.equal(order.long(), torch.sort(items, stable=True)[1])
    assert torch.equal(counts, torch.bincount(items, minlength=11))


def test_z_column_slices_by_runs_are_the_gathered_products():
    # issue 11: Z's column slices written run by run of the triangle's rows, bit for bit the
    # products of the two column gathers they replace, for every cut of the columns
    Y = torch.randn(40, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    iu, ju = torch.triu_indices(7, 7)
    products = als._Products(Y, iu, ju)
    for width in (1, 3, 8, 28):
        for c0 in range(0, 28, width):
            c1 = min(c0 + width, 28)
            want = torch.index_select(Y, 1, iu[c0:c1]) * torch.index_select(Y, 1, ju[c0:c1])
            assert torch.equal(products.upper(c0, c1), want)
    assert torch.equal(products.upper(0, 28), Y[:, iu] * Y[:, ju])  # whole (_whole_upper)


def test_an_in_memory_fit_takes_a_second_worker_only_from_als_own_threshold(monkeypatch):
    # issue 10, item 2: 1M ratings at rank 10 (1.2e8 multiply-adds an epoch) took two workers
    # by the threads' coarse rule (2^24 each) and ran 1.2-1.5x slower beside a busy process
    # than on one; ALS asks 2^28 of each worker, from the sizes only
    from autofact import threads
    from autofact.objective import Objective
    from tests.test_memory_als import planted

    monkeypatch.setattr(threads, "max_threads", lambda n_threads=None: 4)
    monkeypatch.setattr(threads, "MIN_WORK_PER_WORKER", 1)  # (the threads' rule: any size)
    obj = Objective(planted(), bias=True, beta=0.5, dtype="float64")
    work = obj.nnz * 4 * 4  # rank 3 with biases: K = 4
    got = {}
    for per_worker in (work // 2 + 1, work // 2, work // 4):
        monkeypatch.setattr(als, "MIN_WORK_PER_WORKER", per_worker)
        got[per_worker] = als.make_als(obj, obj.init_params(3, seed=0)).run.workers
    assert list(got.values()) == [1, 2, 4]
    monkeypatch.undo()
    assert 121 * 10**6 < 2 * als.MIN_WORK_PER_WORKER < 1089 * 10**6  # 1M: rank 10 one, 32 two
