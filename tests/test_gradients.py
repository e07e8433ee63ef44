"""Gradients: gradcheck of the primitive and of the whole objective, and the post's function
against a hand-derived NumPy reference (the only hand-derived gradient in the project)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import autofact
from autofact import sparse
from autofact.objective import Objective
from autofact.sparse import build_patterns, gather_dot

R = np.array(
    [[5, 3, 0, 1], [4, 0, 0, 1], [1, 1, 0, 5], [1, 0, 0, 4], [0, 1, 5, 4]], dtype=np.float64
)


def _random_ratings(m=7, n=6, density=0.5, seed=0, binary=False, counts=False):
    rng = np.random.default_rng(seed)
    mask = rng.random((m, n)) < density
    mask[0, 0] = True
    u, i = np.nonzero(mask)
    if binary:
        v = rng.integers(0, 2, len(u)).astype(float)
    elif counts:
        v = rng.poisson(2.0, len(u)).astype(float)
    else:
        v = rng.uniform(1, 5, len(u))
    w = rng.uniform(0.5, 2.0, len(u))
    return autofact.Ratings.from_coo(u, i, v, shape=(m, n), weights=w)


@pytest.mark.parametrize("max_nnz", [1, 3, 1000])
@pytest.mark.parametrize("bias", [False, True])
def test_gather_dot_gradcheck(max_nnz, bias):
    r = _random_ratings()
    pats = build_patterns(
        torch.from_numpy(r.users), torch.from_numpy(r.items), r.shape, max_nnz=max_nnz
    )
    assert sum(p.nnz for p in pats) == len(r)
    torch.manual_seed(0)
    m, n = r.shape
    P = torch.randn(m, 3, dtype=torch.float64, requires_grad=True)
    Q = torch.randn(n, 3, dtype=torch.float64, requires_grad=True)
    bu = torch.randn(m, dtype=torch.float64, requires_grad=True)
    bi = torch.randn(n, dtype=torch.float64, requires_grad=True)

    def f(P, Q, bu, bi):
        return torch.cat([
            gather_dot(P[p.row0 : p.row1], Q, p, bu[p.row0 : p.row1] if bias else None,
                       bi if bias else None)
            for p in pats
        ])

    assert torch.autograd.gradcheck(f, (P, Q, bu, bi))
    u, i = torch.from_numpy(r.users).long(), torch.from_numpy(r.items).long()
    expected = (P[u] * Q[i]).sum(1) + ((bu[u] + bi[i]) if bias else 0.0)
    torch.testing.assert_close(f(P, Q, bu, bi), expected)


@pytest.mark.parametrize("chunk", [2**18, 5])
@pytest.mark.parametrize("k", [3, 40])
def test_gather_dot_into_buffers_is_the_same_gradient(monkeypatch, chunk, k):
    # issue 10: with buffers to add into, the backward's factor products go by embedding_bag
    # where that is faster (a result of at most 8 rows x columns an entry: here k = 3), in
    # slices of rows (chunk), else by torch's CSR product (k = 40); the same gradient as the
    # plain backward (gradchecked above) either way
    monkeypatch.setattr(sparse, "_SPMM_CHUNK", chunk)
    r = _random_ratings()
    pats = build_patterns(torch.from_numpy(r.users), torch.from_numpy(r.items), r.shape, 1000)
    m, n = r.shape
    gen = torch.Generator().manual_seed(1)
    P = torch.randn(m, k, dtype=torch.float64, generator=gen, requires_grad=True)
    Q = torch.randn(n, k, dtype=torch.float64, generator=gen, requires_grad=True)
    weights = torch.randn(len(r), dtype=torch.float64, generator=gen)
    (gather_dot(P, Q, pats[0]) * weights).sum().backward()
    gP, gQ = torch.full_like(P, 0.5), torch.full_like(Q, -0.25)
    calls = []
    original = torch.nn.functional.embedding_bag
    monkeypatch.setattr(torch.nn.functional, "embedding_bag",
                        lambda *a, **kw: calls.append(1) or original(*a, **kw))
    out = gather_dot(P.detach().requires_grad_(), Q.detach().requires_grad_(), pats[0],
                     into=(gP, gQ, None, None))
    (out * weights).sum().backward()
    torch.testing.assert_close(gP - 0.5, P.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gQ + 0.25, Q.grad, rtol=1e-12, atol=1e-12)
    # 7 users x 6 items, 18 ratings: at k = 3 one product a side, or one a row (chunk 5 is one
    # row of 3 columns at a time); at k = 40 none
    assert len(pats) == 1 and pats[0].nnz == 18
    assert len(calls) == {(3, 2**18): 2, (3, 5): m + n, (40, 2**18): 0, (40, 5): 0}[k, chunk]


LOSSES = ["squared", "absolute", "huber", "logistic", "poisson"]
REGS = ["l2", "l1", "none"]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("bias", [False, True])
def test_objective_gradcheck(loss, reg, bias):
    """The chunked full-batch gradient equals autograd's on the plain formula, and gradcheck holds."""
    r = _random_ratings(binary=loss == "logistic", counts=loss == "poisson")
    obj = Objective(r, loss=loss, regularization=reg, beta=0.3, bias=bias, dtype=torch.float64,
                    max_memory=2**16)
    obj.max_nnz = 4  # force several chunks
    obj.patterns = build_patterns(obj.users, obj.items, obj.shape, 4)
    assert len(obj.patterns) > 1
    params = obj.init_params(rank=3, seed=1, init_std=0.5)
    names = list(params)

    def J(*tensors):
        p = dict(zip(names, tensors, strict=True))
        return obj.batch_loss(p, torch.arange(obj.nnz))  # the plain gathered formula

    # the plain formula's gradients are right (autograd through gathers) ...
    assert torch.autograd.gradcheck(J, tuple(params.values()))
    # ... and the chunked SDDMM/SpMM path gives the same value and gradient
    value = obj.value_and_grad(params)
    ref = J(*params.values())
    grads = torch.autograd.grad(ref, list(params.values()))
    assert value == pytest.approx(float(ref.detach()), rel=1e-10)
    for name, g in zip(names, grads, strict=True):
        torch.testing.assert_close(params[name].grad, g, rtol=1e-9, atol=1e-10)


def test_custom_loss_goes_through_autograd():
    """A user's loss, never seen by the library, is differentiated correctly."""

    def cauchy(pred, target):
        return torch.log1p((target - pred) ** 2)

    r = _random_ratings()
    obj = Objective(r, loss=cauchy, regularization="l2", beta=0.1, dtype=torch.float64)
    params = obj.init_params(rank=2, seed=0, init_std=0.5)
    obj.value_and_grad(params)
    P, Q = params["P"].detach(), params["Q"].detach()
    u, i = r.users, r.items
    e = r.values - np.einsum("ij,ij->i", P.numpy()[u], Q.numpy()[i])
    d = -2 * e / (1 + e**2) * r.weights  # d loss / d pred, by hand, for the check only
    dP = np.zeros_like(P.numpy())
    np.add.at(dP, u, d[:, None] * Q.numpy()[i])
    dP += 0.1 * P.numpy()
    np.testing.assert_allclose(params["P"].grad.numpy(), dP, rtol=1e-10, atol=1e-12)


def _numpy_bgd(D, P, Q, steps, alpha, beta):
    """The post's update with the gradient derived by hand (reference for the tests only)."""
    mask = ~np.ma.getmaskarray(D)
    data = np.ma.getdata(D)
    P, Q = P.copy(), Q.copy()
    for _ in range(steps):
        E = np.where(mask, data - P @ Q, 0.0)
        dP = -2 * E @ Q.T + beta * P
        dQ = -2 * P.T @ E + beta * Q
        P, Q = P - alpha * dP, Q - alpha * dQ
    return P, Q


def test_bgd_matches_numpy_reference_step_for_step():
    D = np.ma.masked_equal(R, 0)
    rng = np.random.default_rng(42)
    P, Q = rng.random((5, 2)), rng.random((2, 4))
    Pa, Qa, Pn, Qn = P, Q, P, Q
    for _ in range(25):
        Pa, Qa = autofact.matrix_factorization_bgd(D, Pa, Qa, steps=1)
        Pn, Qn = _numpy_bgd(D, Pn, Qn, 1, 0.0002, 0.02)
        np.testing.assert_allclose(Pa, Pn, rtol=1e-5)
        np.testing.assert_allclose(Qa, Qn, rtol=1e-5)
    P5, Q5 = autofact.matrix_factorization_bgd(D, P, Q)  # steps=5000, alpha=0.0002, beta=0.02
    Pr, Qr = _numpy_bgd(D, P, Q, 5000, 0.0002, 0.02)
    np.testing.assert_allclose(P5, Pr, rtol=1e-5)
    np.testing.assert_allclose(Q5, Qr, rtol=1e-5)
    assert P5.dtype == np.float64 and Q5.dtype == np.float64
    assert P5.shape == (5, 2) and Q5.shape == (2, 4)
    # and it does what the post shows: the observed entries are reconstructed
    rec = P5 @ Q5
    obs = ~np.ma.getmaskarray(D)
    assert np.abs(rec[obs] - R[obs]).max() < 0.35


def test_bgd_keeps_float32_and_plain_arrays_are_fully_observed():
    rng = np.random.default_rng(0)
    D = rng.random((4, 3))
    P, Q = rng.random((4, 2)).astype(np.float32), rng.random((2, 3)).astype(np.float32)
    P2, Q2 = autofact.matrix_factorization_bgd(D, P, Q, steps=10, alpha=0.01)
    assert P2.dtype == np.float32 and Q2.dtype == np.float32
    Pn, Qn = _numpy_bgd(np.ma.asarray(D), P.astype(float), Q.astype(float), 10, 0.01, 0.02)
    np.testing.assert_allclose(P2, Pn, rtol=1e-4)


@pytest.mark.parametrize(
    "P_shape,Q_shape,match",
    [((5, 2), (3, 4), "ranks of P and Q disagree"),
     ((4, 2), (2, 4), "P must have one row per row of D"),
     ((5, 2), (2, 3), "Q must have one column per column of D")],
)
def test_bgd_shape_errors(P_shape, Q_shape, match):
    D = np.ma.masked_equal(R, 0)
    with pytest.raises(ValueError, match=match):
        autofact.matrix_factorization_bgd(D, np.ones(P_shape), np.ones(Q_shape), steps=1)


def test_bgd_bad_arguments():
    D = np.ma.masked_equal(R, 0)
    with pytest.raises(ValueError, match="steps must be an int >= 0"):
        autofact.matrix_factorization_bgd(D, np.ones((5, 2)), np.ones((2, 4)), steps=-1)
    with pytest.raises(TypeError, match="D must be a numpy masked array"):
        autofact.matrix_factorization_bgd([[1.0]], np.ones((1, 1)), np.ones((1, 1)))


@pytest.mark.parametrize(
    "reg",
    [lambda x: (0.3 * (x * x).sum()).reshape(1),  # a one-element vector, not a 0-d scalar
     lambda x: torch.tensor(0.7, requires_grad=True) * 1.0 + 0 * x.detach().sum()],  # x unused
    ids=["shape-1", "unused-input"],
)
def test_unusual_but_valid_regularizers(reg):
    """Regression (review of the in-place gradient): both were accepted before and must still be."""
    r = _random_ratings()
    obj = Objective(r, regularization=reg, dtype=torch.float64)
    params = obj.init_params(rank=2, seed=0)
    value = obj.value_and_grad(params)
    expected = sum(float(reg(p.detach()).detach()) for p in params.values())
    with torch.no_grad():
        pred = (params["P"][torch.from_numpy(r.users).long()]
                * params["Q"][torch.from_numpy(r.items).long()]).sum(1)
        loss = float((((pred - torch.from_numpy(r.values)) ** 2) * torch.from_numpy(r.weights)).sum())
    assert value == pytest.approx(loss + expected, rel=1e-10)
    assert obj.value(params) == pytest.approx(value, rel=1e-10)


# ------------------------------------------------------------------ sparse kernel fallback (issue 8)
def _fake_kernel(exc):
    def kernel(*args, **kwargs):
        if kwargs.get("out") is not None or kernel.in_place:
            raise exc
        return kernel.original(*args, **kwargs)

    return kernel


@pytest.mark.parametrize("exc,falls_back", [
    (NotImplementedError("addmm_ for SparseCsrCPU"), True),
    (RuntimeError("Could not run 'aten::addmm_' with arguments from the 'SparseCsrCUDA' backend"),
     True),
    (RuntimeError("addmm: computation on CUDA is not implemented for Strided + SparseCsr"), True),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"), False),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
], ids=["not-implemented", "could-not-run", "not-implemented-msg", "cuda-oom", "cpu-oom",
        "other"])
def test_sparse_fallback_catches_only_missing_kernels(monkeypatch, exc, falls_back):
    # issue 8: the fallback caught every RuntimeError, out-of-memory included
    from autofact import sparse

    r = _random_ratings()
    pats = build_patterns(torch.from_numpy(r.users), torch.from_numpy(r.items), r.shape, 1000)
    m, n = r.shape
    P = torch.randn(m, 3, dtype=torch.float64, requires_grad=True)
    Q = torch.randn(n, 3, dtype=torch.float64, requires_grad=True)
    expected = gather_dot(P, Q, pats[0])
    expected.sum().backward()
    dP, dQ = P.grad.clone(), Q.grad.clone()
    # the forward's in-place SDDMM, and the backward's in-place SpMM
    sddmm = _fake_kernel(exc)
    sddmm.original, sddmm.in_place = torch.sparse.sampled_addmm, False
    monkeypatch.setattr(torch.sparse, "sampled_addmm", sddmm)

    def addmm_(self, *args, **kwargs):
        raise exc

    monkeypatch.setattr(torch.Tensor, "addmm_", addmm_)
    # and the product by embedding_bag that the backward takes where it is faster (issue 10)
    monkeypatch.setattr(torch.nn.functional, "embedding_bag", addmm_)
    gP = torch.zeros_like(P)
    P.grad = Q.grad = None
    if falls_back:
        out = gather_dot(P, Q, pats[0], into=(gP, None, None, None))
        torch.testing.assert_close(out, expected.detach())
        out.sum().backward()
        torch.testing.assert_close(gP, dP)
        torch.testing.assert_close(Q.grad, dQ)
    else:
        with pytest.raises(type(exc), match=str(exc)[:20]):
            gather_dot(P, Q, pats[0])
        monkeypatch.setattr(torch.sparse, "sampled_addmm", sddmm.original)
        out = gather_dot(P, Q, pats[0], into=(gP, None, None, None))
        with pytest.raises(type(exc), match=str(exc)[:20]):
            out.sum().backward()
    assert sparse.is_unsupported(exc) is falls_back


# ------------------------------------------------------------------ coarse workers (issue 10)
@pytest.mark.parametrize("bias", [False, True])
def test_workers_give_the_same_gradient_whoever_takes_which_run(monkeypatch, bias):
    # issue 10: the full-batch gradient's row blocks are shared out to workers (Python threads)
    # that take the next run of blocks not yet taken; the runs, and so the sums, depend on the
    # sizes only: the same numbers bit for bit, call after call and for 2 or 3 workers
    from autofact import threads

    r = _random_ratings(m=40, n=30, density=0.4, seed=3)
    obj = Objective(r, loss="huber", bias=bias, beta=0.1, dtype=torch.float64)
    obj.patterns = build_patterns(obj.users, obj.items, obj.shape, 37)
    assert len(obj.patterns) > 8
    monkeypatch.setenv("AUTOFACT_NUM_THREADS", "1")
    one = obj.init_params(rank=3, seed=0, init_std=0.5)
    assert obj._runs(one, backward=True)[1] == 1
    v1 = obj.value_and_grad(one)
    monkeypatch.setattr(threads, "MIN_WORK_PER_WORKER", 1)
    results = []
    for cap in ("3", "2", "3", "2"):
        monkeypatch.setenv("AUTOFACT_NUM_THREADS", cap)
        params = obj.init_params(rank=3, seed=0, init_std=0.5)
        with threads.use_threads(1):  # what a fit decides: one thread an operation
            runs, workers = obj._runs(params, backward=True)
            assert workers == int(cap) and len(runs) == 8
            assert [id(p) for run in runs for p in run] == list(map(id, obj.patterns))
            value = obj.value_and_grad(params)
            assert obj.value(params) == pytest.approx(value, rel=1e-12)
        results.append((value, {k: v.grad.clone() for k, v in params.items()}))
    assert v1 == pytest.approx(results[0][0], rel=1e-12)
    for k in one:
        torch.testing.assert_close(results[0][1][k], one[k].grad, rtol=1e-12, atol=1e-12)
        for _, grads in results[1:]:
            assert torch.equal(grads[k], results[0][1][k])
    assert all(value == results[0][0] for value, _ in results)


def test_workers_memory_bound_and_errors(monkeypatch):
    # issue 10: the blocks in flight at once stay within max_memory (where one block takes
    # all of it: one worker), and an error in any worker's run reaches the caller
    from autofact import threads

    monkeypatch.setenv("AUTOFACT_NUM_THREADS", "2")
    monkeypatch.setattr(threads, "MIN_WORK_PER_WORKER", 1)
    r = _random_ratings(m=60, n=50, density=0.5, seed=4)
    obj = Objective(r, dtype=torch.float64, max_memory=2**16)
    assert len(obj.patterns) == 2 and len(r) > obj.max_nnz
    params = obj.init_params(rank=3)
    with threads.use_threads(1):
        assert obj._runs(params, backward=True)[1] == 1
        obj.patterns = build_patterns(obj.users, obj.items, obj.shape, 100)
        assert obj._runs(params, backward=True)[1] == 2
        calls = []

        def flaky(pred, target):
            calls.append(1)
            if len(calls) == 5:
                raise RuntimeError("the fifth block's loss failed")
            return (pred - target) ** 2

        obj.loss = flaky
        with pytest.raises(RuntimeError, match="the fifth block's loss failed"):
            obj.value_and_grad(params)


def test_worker_threads_are_kept_between_calls_and_end_with_the_objective(monkeypatch):
    # issue 10: starting threads at every gradient cost more than they saved on a busy machine;
    # the threads are the objective's own, kept between its calls and ended when it goes away
    import gc
    import threading
    import time

    from autofact import threads

    monkeypatch.setenv("AUTOFACT_NUM_THREADS", "2")
    monkeypatch.setattr(threads, "MIN_WORK_PER_WORKER", 1)
    r = _random_ratings(m=40, n=30, density=0.4, seed=3)
    obj = Objective(r, dtype=torch.float64)
    obj.patterns = build_patterns(obj.users, obj.items, obj.shape, 37)
    params = obj.init_params(rank=3)
    with threads.use_threads(1):
        obj.value_and_grad(params)
        pool = obj._workers[0]
        obj.value_and_grad(params)
        assert obj._workers[0] is pool
        flipped = obj.transposed()  # a copy of the objective's attributes: its own threads
        flipped.patterns = build_patterns(flipped.users, flipped.items, flipped.shape, 37)
        flipped.value_and_grad(flipped.init_params(rank=3))
        assert flipped._workers[0] is not pool
        obj.value_and_grad(params)  # still served by its own
        assert obj._workers[0] is pool

    def ours():
        return [t for t in threading.enumerate() if t.name.startswith("autofact-gradient")]

    assert ours()
    del obj, flipped, pool
    gc.collect()
    deadline = time.monotonic() + 10
    while ours() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not ours()
