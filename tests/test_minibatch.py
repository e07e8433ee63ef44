"""Mini-batch steps at O(batch x rank) (issue 10, item 6): a step regularizes and updates only
the rows its ratings touch, weighted so that the batches of an epoch sum to the full objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import autofact
from autofact.objective import Objective
from autofact.solvers.first_order import _Adam, _Descent, _RowBatches


def _objective(bias: bool = True, regularization: str = "l2", weights: bool = False
               ) -> tuple[Objective, dict[str, torch.Tensor]]:
    rng = np.random.default_rng(0)
    m, n, nnz = 30, 20, 150
    flat = rng.choice((m - 3) * n, size=nnz, replace=False)  # users 27..29 rate nothing
    u, i = flat // n, flat % n
    w = rng.uniform(0.5, 2.0, size=nnz) if weights else None
    r = autofact.Ratings.from_coo(u, i, rng.integers(1, 6, size=nnz).astype(float), shape=(m, n),
                                  weights=w)
    obj = Objective(r, loss="squared", regularization=regularization, beta=0.3, bias=bias,
                    dtype=torch.float64)
    params = obj.init_params(4, seed=1, init_std=0.5)
    if bias:
        with torch.no_grad():
            params["bu"].normal_(generator=torch.Generator().manual_seed(2))
            params["bi"].normal_(generator=torch.Generator().manual_seed(3))
    return obj, params


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("batch", [1, 7, 64, 1000])
def test_the_batches_of_an_epoch_sum_to_the_full_objective(bias, weights, batch):
    # issue 10: each row's regularizer weighted by its share of its ratings in the batch (plus
    # the constant share of rows with no rating) sums over a partition to J exactly
    obj, params = _objective(bias=bias, weights=weights)
    rows = _RowBatches(obj, params)
    order = torch.randperm(obj.nnz, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        total = rows.idle + sum(float(rows.loss(params, order[s : s + batch])[0])
                                for s in range(0, obj.nnz, batch))
    assert rows.idle > 0  # three users rate nothing, and their factors are not zero
    assert total == pytest.approx(obj.value(params), rel=1e-12)


def test_a_step_moves_only_the_rows_its_ratings_touch():
    obj, params = _objective()
    before = {k: p.detach().clone() for k, p in params.items()}
    rows = _RowBatches(obj, params)
    idx = torch.arange(5)
    loss, touched = rows.loss(params, idx)
    loss.backward()
    names = list(params)
    _Descent(list(params.values()), lr=0.1).step_rows(
        [(names.index(k), r, leaf) for k, r, leaf in touched])
    users, items = set(obj.users[idx].tolist()), set(obj.items[idx].tolist())
    for name, side in (("P", users), ("bu", users), ("Q", items), ("bi", items)):
        moved = set(torch.nonzero((params[name] != before[name]).reshape(len(before[name]), -1)
                                  .any(1)).flatten().tolist())
        assert moved == side, name
        assert params[name].grad is None  # no full-size gradient was formed


def _dense_batch_objective(obj: Objective, dense: dict[str, torch.Tensor],
                           idx: torch.Tensor) -> torch.Tensor:
    """The batch ``idx``'s objective written out on the whole tables ``dense``: its ratings'
    squared errors plus each row's l2 (beta 0.3) weighted by its share of its ratings in the
    batch."""
    u, i = obj.users[idx].long(), obj.items[idx].long()
    pred = (dense["P"][u] * dense["Q"][i]).sum(1) + dense["bu"][u] + dense["bi"][i] + obj.mu
    ref = ((pred - obj.values[idx]) ** 2).sum()
    for name, side in (("P", u), ("bu", u), ("Q", i), ("bi", i)):
        share = torch.bincount(side, minlength=len(dense[name])).double()
        count = torch.bincount(getattr(obj, "users" if name in ("P", "bu") else "items").long(),
                               minlength=len(dense[name])).double().clamp_min(1)
        per_row = 0.15 * dense[name].reshape(len(dense[name]), -1).pow(2).sum(1)
        ref = ref + (per_row * share / count).sum()
    return ref


def test_the_row_gradient_is_the_weighted_batch_objective_s():
    # the leaves' gradient equals autograd of the batch objective written densely
    obj, params = _objective()
    rows = _RowBatches(obj, params)
    idx = torch.tensor([3, 4, 10, 11, 12, 40, 90])
    loss, touched = rows.loss(params, idx)
    loss.backward()
    dense = {k: p.detach().clone().requires_grad_() for k, p in params.items()}
    _dense_batch_objective(obj, dense, idx).backward()
    for name, r, leaf in touched:
        torch.testing.assert_close(leaf.grad, dense[name].grad[r])
        others = torch.ones(len(dense[name]), dtype=torch.bool)
        others[r] = False
        assert bool((dense[name].grad[others] == 0).all())


def test_lazy_adam_on_every_row_is_adam():
    # a batch holding every rating touches every rated row with weight 1: the lazy update is
    # then the dense Adam's (here on an objective whose every row is rated)
    rng = np.random.default_rng(1)
    r = autofact.Ratings.from_dense(rng.integers(1, 6, size=(6, 5)).astype(float))
    obj = Objective(r, loss="squared", regularization="l2", beta=0.3, bias=True,
                    dtype=torch.float64)
    a = obj.init_params(3, seed=0)
    b = {k: p.detach().clone().requires_grad_() for k, p in a.items()}
    rows = _RowBatches(obj, a)
    lazy, dense = _Adam(list(a.values()), lr=0.05), _Adam(list(b.values()), lr=0.05)
    names = list(a)
    for _ in range(3):
        loss, touched = rows.loss(a, torch.arange(obj.nnz))
        loss.backward()
        lazy.step_rows([(names.index(k), rr, leaf) for k, rr, leaf in touched])
        dense.zero_grad()
        obj.value_and_grad(b)
        dense.step()
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_a_regularizer_not_a_sum_over_rows_keeps_the_scaled_whole():
    obj, params = _objective()
    assert _RowBatches.applies(obj, params)

    def frobenius(x):
        return x.norm()  # couples the entries: not separable

    frobenius.separable = False  # type: ignore[attr-defined]
    obj.reg = frobenius
    assert not _RowBatches.applies(obj, params)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_minibatch_fit_learns_and_leaves_unrated_rows_alone(solver):
    rng = np.random.default_rng(0)
    m, n = 60, 40
    P, Q = rng.normal(size=(m, 3)), rng.normal(size=(n, 3))
    cells = rng.choice((m - 5) * n, size=1200, replace=False)  # users 55..59 rate nothing
    u, i = cells // n, cells % n
    r = autofact.Ratings.from_coo(u, i, 3 + (P[u] * Q[i]).sum(1) * 0.5, shape=(m, n))
    model = autofact.MatrixFactorization(rank=3, solver=solver, batch_size=64, epochs=40,
                                         lr=0.02 if solver == "adam" else 0.01, beta=0.1,
                                         seed=0).fit(r)
    assert -model.score(r) < 0.5
    start = autofact.MatrixFactorization(rank=3, solver=solver, batch_size=64, epochs=1,
                                         lr=1e-12, beta=0.1, seed=0).fit(r)
    np.testing.assert_array_equal(model.user_factors_[55:], start.user_factors_[55:])


def _wide_objective() -> tuple[Objective, dict[str, torch.Tensor]]:
    """Tables far larger than a batch: 5,000 users and 4,000 items, 300 ratings."""
    rng = np.random.default_rng(4)
    m, n, nnz = 5000, 4000, 300
    flat = rng.choice(m * n, size=nnz, replace=False)
    r = autofact.Ratings.from_coo(flat // n, flat % n, rng.integers(1, 6, size=nnz).astype(float),
                                  shape=(m, n))
    obj = Objective(r, loss="squared", regularization="l2", beta=0.3, bias=True,
                    dtype=torch.float64)
    return obj, obj.init_params(3, seed=1)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_a_step_reaches_the_tables_only_through_the_rows_it_touches(solver):
    # issue 10, item 6: per step, every operation that reads a (users + items)-sized table (or
    # Adam's moments, or the nnz-sized ratings) gathers (index_select) or writes (index_copy_)
    # the batch's rows, or is a view; no full-size zero, copy, gradient or unique. Advanced
    # indexing (``p[rows]``) and ``index_add_`` on a 2-d table were also O(batch) but took 3-8x
    # as long on a table of 51,200 rows as on one of 3,200 (row-by-row adds, cache misses), so
    # they are not allowed here either
    from torch.profiler import profile

    obj, params = _wide_objective()
    rows, names = _RowBatches(obj, params), list(params)
    opt = (_Adam if solver == "adam" else _Descent)(list(params.values()), lr=0.1)

    def step(idx):
        loss, touched = rows.loss(params, idx)
        loss.backward()
        opt.step_rows([(names.index(k), r, leaf) for k, r, leaf in touched])

    step(torch.arange(16))  # Adam's moments are allocated at its first step, once a fit
    with profile(record_shapes=True) as prof:
        step(torch.arange(16, 32))
    large = {5000, 4000, obj.nnz}
    allowed = {"aten::index_select", "aten::index_copy_", "aten::detach", "detach",
               "aten::select", "aten::as_strided"}  # the last four are views
    seen = set()
    for e in prof.events():
        if any(s and s[0] in large for s in e.input_shapes):
            seen.add(e.name)
            assert e.name in allowed, (e.name, e.input_shapes)
    assert {"aten::index_select", "aten::index_copy_"} <= seen  # the check saw the tables


def test_a_sgd_step_is_the_dense_step_on_the_batch_objective():
    # issue 10: the touched rows are written whole (index_copy_ of the gathered values minus
    # lr x gradient): equal to p - lr * grad of the batch objective written densely, on every row
    obj, params = _objective()
    dense = {k: p.detach().clone().requires_grad_() for k, p in params.items()}
    rows, names = _RowBatches(obj, params), list(params)
    idx = torch.tensor([0, 5, 9, 17, 33, 34, 35, 80, 149])
    loss, touched = rows.loss(params, idx)
    loss.backward()
    _Descent(list(params.values()), lr=0.25).step_rows(
        [(names.index(k), r, leaf) for k, r, leaf in touched])
    # the same batch objective written densely, its gradient taken on the whole tables
    _dense_batch_objective(obj, dense, idx).backward()
    for name in params:
        torch.testing.assert_close(params[name], (dense[name] - 0.25 * dense[name].grad).detach())


def test_a_row_epoch_runs_its_batch_sized_steps_on_the_threads_of_a_batch(monkeypatch):
    # issue 10: a fit large enough for two threads (by its ratings) ran its 1024-rating steps on
    # two threads too: on a busy 2-core machine an epoch took 14x as long (1.6 s against 0.11 s
    # at 100k ratings); the steps now get threads_for(batch x (rank + 1)), here one, and the
    # fit's count comes back after the epoch
    from autofact.solvers.first_order import make_first_order
    from autofact.threads import limit_threads

    obj, params = _objective()
    seen = []
    real = _RowBatches.loss

    def loss(self, params, idx):
        seen.append(torch.get_num_threads())
        return real(self, params, idx)

    monkeypatch.setattr(_RowBatches, "loss", loss)
    with limit_threads(2):  # what a fit of many ratings decides
        epoch = make_first_order(obj, params, "sgd", 0.01, 16, torch.Generator().manual_seed(0))
        epoch.run()
        assert torch.get_num_threads() == 2
    assert len(seen) == -(-obj.nnz // 16) and set(seen) == {1}
