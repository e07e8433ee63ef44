"""The time to the sampler's first sweep (issue 10, item 4): what was made faster draws the same.

At 9M ratings the default fit's first sweep cost twice the CPU it did before the memory changes
of issue 11 (the spectral start formed its residuals anew for each of its products, the items'
view was rebuilt a slab at a time by an argsort); these tests pin that the faster paths give the
same numbers as the ones they replace."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from autofact.solvers import gibbs
from autofact.solvers.gibbs import gibbs_mf

from .test_gibbs import planted


def _users(m: int = 90, n: int = 70, max_nnz: int = 300) -> gibbs._Side:
    (u, i, r), _ = planted(m=m, n=n, rank=3, frac=0.5, seed=7)
    o = np.lexsort((i, u))
    return gibbs._Side(u[o].astype(np.int32), i[o].astype(np.int32), r[o].astype(np.float32),
                       m, n, max_nnz, offset=float(r.astype(np.float32).mean(dtype=np.float64)))


@pytest.mark.parametrize("slabs", [False, True])
def test_the_start_keeps_its_residuals_only_when_they_fit_and_gets_the_same_start(
        slabs: bool) -> None:
    # issue 10, item 4: the users' residuals kept in float32 for all the start's products are
    # the numbers each product formed for itself (many row blocks; the items' view whole or
    # in slabs)
    u_side = _users()
    assert len(u_side.blocks) > 4
    i_side = (gibbs._Columns(u_side, 70, 300, slab=600) if slabs
              else u_side.transpose(300))
    starts = [gibbs._spectral_start(np.random.default_rng(3), u_side, i_side, 3,
                                    len(u_side.vals), None, cache_bytes=cache)
              for cache in (None, 8 * len(u_side.vals), 8 * len(u_side.vals) - 1,
                            4 * len(u_side.vals), 4 * len(u_side.vals) - 1, 0)]
    # (issue 10: with 8 bytes a rating and the items' view whole, its residuals are kept too and
    # its products are torch's CSR products over the items' rows, the scatter's sums)
    for other in starts[1:]:
        for a, b in zip(starts[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


def test_the_kept_residuals_are_4_bytes_a_rating_and_only_when_they_fit() -> None:
    # issue 10, item 4 and issue 11, item 3: the start's extra memory is the kept residuals
    # (float32) when they fit cache_bytes, and less than a byte a rating when they do not
    u_side = _users(m=400, n=250)
    nnz = len(u_side.vals)
    i_side = u_side.transpose(300)
    peaks = []
    for cache in (4 * nnz, 4 * nnz - 1, 8 * nnz):
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            gibbs._spectral_start(np.random.default_rng(3), u_side, i_side, 3, nnz, None,
                                  cache_bytes=cache)
            peaks.append(tracemalloc.get_traced_memory()[1] - before)
        finally:
            tracemalloc.stop()
    assert peaks[1] < nnz, peaks[1] / nnz
    assert 3.5 * nnz < peaks[0] - peaks[1] < 4.5 * nnz, (peaks[0] - peaks[1]) / nnz
    # issue 10: the items' view's residuals too (4 more bytes a rating) when both fit
    assert 3.5 * nnz < peaks[2] - peaks[0] < 4.5 * nnz, (peaks[2] - peaks[0]) / nnz


def test_slabs_built_by_a_counting_sort_keep_int32_users_in_user_order() -> None:
    # issue 10, item 4: a slab is scipy's CSR-to-CSC sort of the slab's ratings; its users are
    # int32 (the products' index type) and, within an item, ascending, as the whole view's
    u_side = _users(max_nnz=250)
    whole = u_side.transpose(250)
    for p0, piece in gibbs._Columns(u_side, 70, 250, slab=500).parts():
        assert piece.cols.dtype == np.int32 and piece.vals.dtype == np.float32
        a = int(whole.indptr[p0])
        np.testing.assert_array_equal(piece.cols, whole.cols[a : a + len(piece.cols)])
        for r in range(piece.n_rows):
            users = piece.cols[piece.indptr[r] : piece.indptr[r + 1]]
            assert np.all(np.diff(users) > 0)


def test_a_fit_with_and_without_the_kept_residuals_draws_the_same_chain() -> None:
    # issue 10, item 4: max_memory decides whether the start keeps its residuals (a quarter of
    # it) and whether the items' view is whole; the chain is the same either way
    (u, i, r), _ = planted(m=120, n=80, rank=3, frac=0.5, seed=8)
    runs = [gibbs_mf(u, i, r, (120, 80), rank=3, sweeps=3, seed=0, max_memory=mm)
            for mm in (None, 1 << 20, 4 * len(r) * 4 - 1)]
    for other in runs[1:]:
        assert other.rmse_train == runs[0].rmse_train
        for name in ("P", "Q", "bu", "bi"):
            np.testing.assert_array_equal(getattr(other, name), getattr(runs[0], name))


def test_row_blocks_summed_ahead_by_threads_draw_the_same_chain(monkeypatch) -> None:
    # issue 10, item 4: with two threads the row blocks' data sums are formed ahead of the draws
    # (autofact.threads.workers_for: here every size gets them), in blocks and slabs made
    # smaller so that two in flight share max_memory; the chain is the one-thread chain
    from autofact import threads

    (u, i, r), _ = planted(m=150, n=90, rank=3, frac=0.5, seed=9)
    monkeypatch.setattr(threads, "MIN_WORK_PER_WORKER", 1)
    monkeypatch.setattr(gibbs, "_POOL_MIN_CORES", 2)  # (from 4 cores by default)
    pools: list[int] = []
    original = gibbs._BlockPool.in_order

    def in_order(self, fn, items):  # type: ignore[no-untyped-def]
        pools.append(self.workers)
        return original(self, fn, items)

    monkeypatch.setattr(gibbs._BlockPool, "in_order", in_order)
    runs = {nt: gibbs_mf(u, i, r, (150, 90), rank=3, sweeps=3, seed=0, max_memory=1 << 17,
                         n_threads=nt) for nt in (1, 2)}
    assert pools and set(pools) == {2}  # the two-thread fit used them, the other did not
    assert runs[2].rmse_train == runs[1].rmse_train
    for name in ("P", "Q", "bu", "bi"):
        np.testing.assert_array_equal(getattr(runs[2], name), getattr(runs[1], name))


def test_the_block_pool_gives_results_in_order_and_stops_on_an_error() -> None:
    # issue 10, item 4: results in the items' order whatever finishes first; an error in one
    # block reaches the caller and no block after the ones already started is begun
    import threading
    import time

    started: list[int] = []
    lock = threading.Lock()

    def work(x: int) -> int:
        with lock:
            started.append(x)
        time.sleep(0.02 if x % 2 == 0 else 0.0)
        if x == 5:
            raise ArithmeticError(f"block {x}")
        return x * x

    pool = gibbs._BlockPool(2)
    try:
        assert list(pool.in_order(work, range(5))) == [0, 1, 4, 9, 16]
        started.clear()
        got = []
        with pytest.raises(ArithmeticError, match="block 5"):
            for v in pool.in_order(work, range(50)):
                got.append(v)
        pool.executor.shutdown(wait=True)
        assert got == [0, 1, 4, 9, 16]
        assert max(started) <= 5 + 2  # at most two submitted ahead of the failing one
    finally:
        pool.executor.shutdown(cancel_futures=True)


def test_the_gram_products_formed_once_give_each_blocks_sums_and_only_when_they_fit() -> None:
    # issue 10, item 4: the other side's products z_a z_b formed once for all of a side's
    # blocks (when 2 K (K+1) bytes a row of it fit ``table``) give the sums the blocks formed
    # them for themselves; a few columns at a time (a small buffer) as well
    u_side = _users()
    rng = np.random.default_rng(4)
    other, bias = rng.normal(size=(70, 3)), rng.normal(size=70)
    w = rng.gamma(8.0, 1 / 8.0, size=len(u_side.vals))
    fits = 2 * 4 * 5 * 70  # 2 K (K+1) bytes a row of the other side, K = 4
    per_block = gibbs._Terms(other, bias, table=fits - 1, buffer=4 * 70 * 2)
    once = gibbs._Terms(other, bias, table=fits, buffer=4 * 70 * 2)
    assert per_block.products is None and once.products is not None
    # (issue 10: kept in equal chunks of the triangle's 10 columns, each within the buffer;
    # formed for each block within a triangle row each)
    assert once.chunks == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert per_block.chunks == [(0, 2), (2, 4), (4, 6), (6, 7), (7, 9), (9, 10)]
    assert len(once.products) == len(once.chunks)
    for blk in u_side.blocks:
        a, b = blk[2], blk[3]
        np.testing.assert_array_equal(once.gram(u_side, blk, w[a:b]),
                                      per_block.gram(u_side, blk, w[a:b]))


@pytest.mark.parametrize("table", [0, None])
def test_the_gram_sums_are_the_same_whatever_the_chunks_of_the_triangle(
        table: int | None) -> None:
    # issue 10, item 4: the products kept (table None), the triangle's columns in equal chunks
    # that cross its rows (one sparse product a chunk, not one a triangle row), or formed for
    # each block (table 0), a triangle row or part of one at a time: each entry z_a z_b's sum,
    # bit for bit the one of that column alone
    u_side = _users()
    rng = np.random.default_rng(5)
    other, bias = rng.normal(size=(70, 4)), rng.normal(size=70)
    w = rng.gamma(8.0, 1 / 8.0, size=len(u_side.vals))
    K = 5
    iu, ju, _ = gibbs._triangle(K)
    ref = gibbs._Terms(other, bias, table=table)
    pairs = ref.z32[:, iu] * ref.z32[:, ju]  # column c: z_iu[c] z_ju[c], float32
    seen = set()
    for width in range(1, 16):
        terms = gibbs._Terms(other, bias, table=table, buffer=4 * 70 * width)
        widths = [c1 - c0 for c0, c1 in terms.chunks]
        assert max(widths) <= width and terms.chunks[0][0] == 0 and terms.chunks[-1][1] == 15
        assert all(a[1] == b[0] for a, b in zip(terms.chunks[:-1], terms.chunks[1:], strict=True))
        if table is None:  # equal chunks
            assert max(widths) - min(widths) <= 1
        else:  # within a triangle row each
            assert all(iu[c0] == iu[c1 - 1] for c0, c1 in terms.chunks)
        seen.add(len(terms.chunks))
        for blk in u_side.blocks:
            a, b = blk[2], blk[3]
            got = terms.gram(u_side, blk, w[a:b])
            for c in range(len(iu)):
                np.testing.assert_array_equal(
                    got[:, c], u_side.spmm(blk, w[a:b].astype(np.float32),
                                           np.ascontiguousarray(pairs[:, c : c + 1]))[:, 0])
    assert seen == ({15, 8, 5, 4, 3, 2, 1} if table is None else {15, 9, 7, 6, 5})
