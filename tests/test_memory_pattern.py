"""Issue 11, item 3: the training pattern's column (item) indices are compact, uint16 up to
65536 items (int32 beyond), from rank 0's gather after a rank-local fit through
:meth:`ModelIndex.with_pattern` to the model file, with no int32 copy of all the ratings on the
way (rank 0's peak RSS was 1.11-1.20x the bound with the gathered int32 pattern).

Run by pytest; its ``__main__`` is the worker two gloo processes run under torchrun:

    torchrun --standalone --nproc-per-node 2 tests/test_memory_pattern.py OUT
"""

from __future__ import annotations

import errno
import functools
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import autofact
from autofact import distributed, io
from autofact.evaluation import evaluate
from autofact.index import ModelIndex, pattern_dtype
from tests import test_memory_adam as memory_adam

HERE = Path(__file__)
SRC = HERE.parent.parent / "src"


#: The Adam tests' ratings and model, on a smaller table (300 x 200 by default)
planted = functools.partial(memory_adam.planted, m=300, n=200)
adam = memory_adam.adam


def compact(model: autofact.MatrixFactorization) -> autofact.MatrixFactorization:
    """``model`` with its pattern in uint16, as rank 0's gather leaves it."""
    indptr, indices = model.index_.seen_arrays()
    model.index_ = model.index_.with_pattern(indptr, indices.astype(np.uint16))
    return model


def tops(model: autofact.MatrixFactorization, users: np.ndarray, n: int) -> list[list]:
    return [list(t.items) for t in model.recommend_batch(users, n=n)]


def test_pattern_dtype_is_uint16_up_to_65536_items():
    # issue 11, item 3
    assert pattern_dtype(1) == np.uint16
    assert pattern_dtype(65536) == np.uint16
    assert pattern_dtype(65537) == np.int32


def test_a_saved_uint16_pattern_loads_and_recommends_as_before(tmp_path):
    # issue 11, item 3: the file keeps the uint16 pattern; the loaded model recommends the same
    # items as the fitted one (and as the int32 one) and leaves every seen item out
    r = planted(6_000)
    plain = adam().fit(r)
    model = compact(adam().fit(r))
    assert model.index_.seen_arrays()[1].dtype == np.uint16
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as f:
        assert f["seen_indices"].dtype == np.uint16
        np.testing.assert_array_equal(f["seen_indices"], r.items)
    loaded = autofact.load(tmp_path / "m.npz")
    users = r.user_ids[:40]
    want = tops(plain, users, 150)
    assert tops(model, users, 150) == want
    assert tops(loaded, users, 150) == want
    for u, items in zip(users, want, strict=True):
        assert not set(items) & set(r.item_ids[r.items[r.users == u]])


def test_an_old_int32_file_still_loads(tmp_path):
    # issue 11, item 3: a file written before (int32 indices) loads and recommends the same
    r = planted(6_000)
    model = compact(adam().fit(r))
    model.save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz", allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["seen_indices"] = arrays["seen_indices"].astype(np.int32)
    io.atomic_write(tmp_path / "old.npz", lambda fh: io.savez_plain(fh, arrays))
    with np.load(tmp_path / "old.npz", allow_pickle=False) as f:
        assert f["seen_indices"].dtype == np.int32
    old = autofact.load(tmp_path / "old.npz")
    new = autofact.load(tmp_path / "new.npz")
    users = r.user_ids[:40]
    assert tops(old, users, 150) == tops(new, users, 150) == tops(model, users, 150)
    # a model fitted in one process keeps its ratings' int32 items and saves them as int32
    adam().fit(r).save(tmp_path / "plain.npz")
    with np.load(tmp_path / "plain.npz", allow_pickle=False) as f:
        assert f["seen_indices"].dtype == np.int32


def test_with_pattern_keeps_uint16_without_an_int32_copy(monkeypatch):
    # issue 11, item 3: with_pattern keeps the dtype it is given and allocates well under 4
    # bytes a rating (an int32 copy of the indices alone would be 4)
    monkeypatch.setattr("autofact.index._COUNT_SLICE", 1 << 14)  # small count temporaries
    m, n, per_user = 500, 60_000, 2_000
    rng = np.random.default_rng(1)
    indices = np.concatenate([np.sort(rng.choice(n, per_user, replace=False))
                              for _ in range(m)]).astype(np.uint16)
    indptr = np.arange(m + 1, dtype=np.int64) * per_user
    counts = (np.full(m, per_user, dtype=np.int64), np.bincount(indices, minlength=n))
    index = ModelIndex(np.arange(m), np.arange(n), lambda: None,  # type: ignore[arg-type, return-value]
                       rating_range=(1.0, 5.0), fallback=3.0, counts=counts)
    tracemalloc.start()
    try:
        out = index.with_pattern(indptr, indices)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    got = out.seen_arrays()[1]
    assert got.dtype == np.uint16 and np.shares_memory(got, indices)
    assert peak < 4 * len(indices), peak
    seen = out.seen  # scipy's matrix, built on demand, answers the same
    np.testing.assert_array_equal(seen.indices, indices)
    np.testing.assert_array_equal(seen.indptr, indptr)


def test_with_pattern_uses_int32_beyond_65536_items(tmp_path):
    # issue 11, item 3: more items than uint16 holds: int32, kept as given, saved as int32
    n = 70_000
    r = autofact.Ratings(np.array([0, 0, 1, 2]), np.array([3, 69_999, 65_536, 5]),
                         np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32), shape=(3, n),
                         _sorted=True)
    index = ModelIndex.from_ratings(r, fallback=2.5, clip=False)
    indptr, indices = index.seen_arrays()
    cols = indices.astype(pattern_dtype(n))
    assert cols.dtype == np.int32
    out = index.with_pattern(indptr, cols)
    assert out.seen_arrays()[1] is cols
    np.testing.assert_array_equal(out.seen.indices, [3, 69_999, 65_536, 5])


def test_with_pattern_refuses_other_dtypes_and_indices_out_of_range():
    # issue 11, item 3
    r = planted(500, m=20, n=10)
    index = ModelIndex.from_ratings(r, fallback=3.0, clip=False)
    indptr, indices = index.seen_arrays()
    with pytest.raises(TypeError, match=r"indices must be a 1-D uint16 or int32 array, got int64"):
        index.with_pattern(indptr, indices.astype(np.int64))
    bad = indices.copy()
    bad[0] = 10
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 10\) \(the index's items\), "
                                         r"got 0\.\.10"):
        index.with_pattern(indptr, bad)
    bad[0] = -1
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 10\).*got -1\.\."):
        index.with_pattern(indptr, bad)


def test_rank_0_gathers_a_uint16_pattern_of_every_process(tmp_path):
    # issue 11, item 3: after a 2-process rank-local fit (each process every other rating, so
    # users' ratings come from both), rank 0's model holds every process's pairs in uint16,
    # leaves all of them out of its recommendations (gather_seen=True), and the file
    # distributed.save writes of the default fit (nothing gathered) keeps uint16, the same
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
               [str(SRC), str(SRC.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(HERE), str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = planted(20_000)
    with np.load(tmp_path / "seen.npz", allow_pickle=False) as f:
        indptr, indices, top = f["indptr"], f["indices"], f["top"]
    assert indices.dtype == np.uint16
    np.testing.assert_array_equal(np.diff(indptr), np.bincount(r.users, minlength=r.shape[0]))
    np.testing.assert_array_equal(indices, r.items)  # every process's pairs, by (user, item)
    for u, items in enumerate(top):
        assert not set(items) & set(r.items[r.users == u])
    with np.load(tmp_path / "model.npz", allow_pickle=False) as f:
        assert f["seen_indices"].dtype == np.uint16
        np.testing.assert_array_equal(f["seen_indices"], r.items)
    found = [json.loads((tmp_path / f"rank{r}.txt").read_text()) for r in range(2)]
    assert found[0]["outcome"].startswith("[Errno 28] No space left on device"), found
    assert "rank 0 could not gather or write the training pattern" in found[1]["outcome"], found
    assert max(f["seconds"] for f in found) < 60, found  # the worker's timeout is 120 s
    assert not (tmp_path / "failed.npz").exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    assert found[0]["asked"] == [5, 5]
    loaded = autofact.load(tmp_path / "model.npz")
    assert [list(t.items) for t in loaded.recommend_batch(np.arange(len(top)), n=100)] \
        == top.tolist()


def partial(model: autofact.MatrixFactorization, users: np.ndarray
            ) -> autofact.MatrixFactorization:
    """``model`` holding only ``users``' seen items, as a process's model after a rank-local
    fit (``gather_seen=False``)."""
    indptr, indices = model.index_.seen_arrays()
    held = np.zeros(model.index_.n_users, dtype=bool)
    held[users] = True
    counts = np.diff(indptr) * held
    keep = np.repeat(held, np.diff(indptr))
    mine = np.r_[0, np.cumsum(counts)]
    model.index_ = model.index_.with_pattern(mine, indices[keep], partial=True)
    return model


def test_a_model_missing_some_users_seen_items_never_answers_as_if_they_rated_nothing(
        tmp_path):
    # issue 11, item 3 (trust): after a rank-local fit a process's model holds its own users'
    # seen items only; model.save would write a file whose other users had rated nothing, and
    # recommend would offer those users what they rated: both refuse, naming the way out
    r = planted(6_000)
    model = partial(adam().fit(r), np.arange(0, 300, 2))
    assert not model.index_.pattern_complete
    with pytest.raises(ValueError, match=r"cannot save the model with model.save: this model "
                       rf"holds the seen items of \d+ of its {len(r)} training ratings .*user 1 and "
                       r"149 more .*autofact.distributed.save\(model, path\)"):
        model.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()
    with pytest.raises(ValueError, match="cannot leave out the users' rated items: .*user 3 "
                       "and 0 more"):
        model.recommend(3, n=5)
    assert len(model.recommend(2, n=5).items) == 5  # a user it holds
    assert len(model.recommend(3, n=5, exclude_seen=False).items) == 5
    with pytest.raises(ValueError, match="cannot leave out the users' rated items"):
        evaluate(model, r, k=5)  # top-k metrics leave out the rated items
    with pytest.raises(ValueError, match="the pattern's ratings per user and item differ"):
        indptr, indices = model.index_.seen_arrays()
        model.index_.with_pattern(indptr, indices)  # partial, but not said to be


def test_partial_fit_refuses_a_model_missing_some_users_seen_items():
    # issue 11 (trust): partial_fit rebuilds the pattern from the one it holds, so the other
    # processes' users would lose their seen items
    r = planted(6_000)
    r = autofact.Ratings.from_coo(r.users, r.items, np.abs(r.values))  # plays, say
    model = autofact.MatrixFactorization(task="ranking", rank=4, epochs=2, seed=0,
                                         verbose=False).fit(r)
    model = partial(model, np.arange(0, 300, 2))
    with pytest.raises(ValueError, match="cannot update the model with partial_fit"):
        model.partial_fit(r.subset(np.arange(10)))


def test_a_streamed_pattern_is_written_as_it_comes_and_checked(tmp_path):
    # issue 11, item 3: io.save(seen=(indptr, chunks)) writes the pattern a chunk at a time
    # (distributed.save's rank 0); the file is np.savez's, and loads as the plain save's
    r = planted(6_000)
    model = adam().fit(r)
    indptr, indices = model.index_.seen_arrays()
    model.save(tmp_path / "plain.npz")
    chunks = (indices[a : a + 1000].astype(np.uint16) for a in range(0, len(indices), 1000))
    io.save(partial(adam().fit(r), np.arange(0, 300, 2)), tmp_path / "streamed.npz",
            seen=(indptr, chunks))
    with np.load(tmp_path / "plain.npz") as a, np.load(tmp_path / "streamed.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        assert b["seen_indices"].dtype == np.uint16
        for key in a.files:  # (the metadata differs in the history's times only)
            if key != "meta":
                np.testing.assert_array_equal(a[key], b[key])
    users = np.arange(10)
    assert tops(autofact.load(tmp_path / "streamed.npz"), users, 50) == tops(model, users, 50)
    starts = range(0, len(indices) - 1000, 1000)
    held = sum(len(indices[a : a + 1000]) for a in starts)
    short = (indices[a : a + 1000] for a in starts)
    with pytest.raises(ValueError, match=f"seen_indices: the chunks held {held} values, "
                       f"expected {len(r)}"):
        io.save(model, tmp_path / "short.npz", seen=(indptr, short))
    with pytest.raises(TypeError, match="a chunk of float64"):
        io.save(model, tmp_path / "short.npz", seen=(indptr, iter([indices * 1.0])))
    with pytest.raises(ValueError, match="seen's indptr must give the model's ratings per user"):
        io.save(model, tmp_path / "short.npz", seen=(indptr[:-1], iter([indices])))
    assert not (tmp_path / "short.npz").exists()  # atomic: nothing half-written


def test_distributed_save_of_one_process_is_a_plain_save(tmp_path):
    # issue 11: distributed.save on one process (its model holds every seen item) is
    # model.save; a path rank 0 cannot write is refused before any pattern moves
    import torch.distributed as dist

    r = planted(6_000)
    model = adam().fit(r)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1),
                            rank=0, world_size=1)
    try:
        assert distributed.save(model, tmp_path / "m.npz") == tmp_path / "m.npz"
        with pytest.raises(RuntimeError, match="not fitted yet; call autofact.distributed.fit"):
            distributed.save(adam(), tmp_path / "unfitted.npz")
        with pytest.raises(ValueError, match="folder .*nowhere.* does not exist"):
            distributed.save(model, tmp_path / "nowhere" / "m.npz")
    finally:
        dist.destroy_process_group()
    users = np.arange(10)
    assert tops(autofact.load(tmp_path / "m.npz"), users, 50) == tops(model, users, 50)


def test_saving_copies_no_array_and_checks_finiteness_a_slice_at_a_time(tmp_path):
    # issue 11, item 3: numpy's writer copied 16 MiB pieces into bytes objects for each array
    # of a zip member, and the finiteness check made a mask of each whole table (rank 0's save
    # of 25M ratings added 18 MiB to its peak); views and slices now, the same archive
    big = np.arange(6_000_000, dtype=np.float32).reshape(-1, 6)  # 24 MB
    arrays = {"big": big, "scalar": np.array(2.5), "ints": np.arange(7)}
    tracemalloc.start()
    try:
        with open(tmp_path / "a.npz", "wb") as fh:
            io.savez_plain(fh, arrays)
        assert io.first_non_finite(big) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * 2**20, peak
    with np.load(tmp_path / "a.npz", allow_pickle=False) as f:
        for key, value in arrays.items():
            assert f[key].shape == value.shape and f[key].dtype == value.dtype
            np.testing.assert_array_equal(f[key], value)
    big[700_000, 3] = np.inf
    big[900_000, 1] = np.nan
    assert io.first_non_finite(big) == (700_000, 3)


def _worker(out: str) -> None:
    rank, world = distributed.init(timeout=120)
    r = planted(20_000)
    local = r.subset(np.arange(len(r)) % world == rank)  # users on both processes
    fitted = distributed.fit(adam(), local, local=True, gather_seen=True)
    if rank == 0:
        indptr, indices = fitted.index_.seen_arrays()
        top = fitted.recommend_batch(np.arange(8), n=100)
        np.savez(Path(out, "seen.npz"), indptr=indptr, indices=indices,
                 top=np.asarray([list(t.items) for t in top]))
    # the default gathers nothing: distributed.save assembles the file's pattern a range of
    # users at a time (several ranges here, in small pieces), rows from both processes sorted
    distributed._SAVE_STEP, distributed._GATHER_STEP = 3_000, 500  # type: ignore[attr-defined]
    fitted = distributed.fit(adam(), local, local=True)
    distributed.save(fitted, Path(out, "model.npz"))
    # a write that fails on rank 0 while the pattern moves: rank 0 raises its error, the other
    # process an OSError naming rank 0, at once (not after the timeout); nothing is left behind
    original, calls = io._write_bytes, [0]

    def failing(stream: Any, arr: np.ndarray) -> None:
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(stream, arr)

    if rank == 0:
        io._write_bytes = failing  # type: ignore[assignment]
    start = time.monotonic()
    try:
        distributed.save(fitted, Path(out, "failed.npz"))
        outcome = "saved"
    except OSError as exc:
        outcome = str(exc)
    io._write_bytes = original  # type: ignore[assignment]
    # the processes asking for different users: rank 0's list is the one used
    asked = distributed.fit(adam(), local, local=True, gather_seen=[0, 1] if rank == 0 else [5])
    Path(out, f"rank{rank}.txt").write_text(json.dumps({
        "outcome": outcome, "seconds": time.monotonic() - start,
        "asked": [len(t.items) for t in asked.recommend_batch([0, 1], n=5)] if rank == 0
        else None}))
    distributed.shutdown()


if __name__ == "__main__":
    _worker(sys.argv[1])
