"""Rank-local data (issue 11, item 1): each process reads only its part files (or its users of
one file), the id maps are agreed by exchanging distinct ids, and the fit is the one-process fit.

Run by pytest; its ``__main__`` is the worker two gloo processes run on 127.0.0.1 under torchrun:

    torchrun --standalone --nproc-per-node 2 tests/test_distributed_local.py MODE DATA OUT
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import autofact
from autofact import distributed
from autofact.reading import read_parts

HERE = Path(__file__)
SRC = HERE.parent.parent / "src"


def planted(seed: int = 0, m: int = 50, n: int = 30, k: int = 3) -> autofact.Ratings:
    rng = np.random.default_rng(seed)
    mask = rng.random((m, n)) < 0.4
    u, i = np.nonzero(mask)
    X = rng.normal(size=(m, k)) @ rng.normal(size=(k, n)) + 3
    return autofact.Ratings.from_coo(u, i, X[u, i], shape=(m, n))


def model() -> autofact.MatrixFactorization:
    return autofact.MatrixFactorization(rank=3, solver="adam", epochs=12, seed=0, beta=0.5,
                                        bias=True, dtype="float64", device="cpu")


def write_parts(folder: Path, r: autofact.Ratings, n_parts: int, *, parquet: bool = False,
                seed: int = 1) -> None:
    """The ratings shuffled into ``n_parts`` part files of about equal size (a user's ratings
    spread over several parts), string ids ``u<k>``/``i<k>``."""
    import pandas as pd

    folder.mkdir()
    order = np.random.default_rng(seed).permutation(len(r))
    for k, rows in enumerate(np.array_split(order, n_parts)):
        frame = pd.DataFrame({"user": [f"u{x}" for x in r.users[rows]],
                              "item": [f"i{x}" for x in r.items[rows]],
                              "rating": r.values[rows]})
        if parquet:
            frame.to_parquet(folder / f"part-{k:05d}.parquet", index=False)
        else:
            frame.to_csv(folder / f"part-{k:05d}.csv", index=False, float_format="%.17g")
    (folder / "_SUCCESS").write_text("")


def triples(r: autofact.Ratings) -> set[tuple[str, str, float]]:
    return {(str(u), str(i), float(v)) for u, i, v in
            zip(r.user_ids[r.users], r.item_ids[r.items], r.values, strict=True)}


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH",
                                                                                    "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         *args], capture_output=True, text=True, timeout=timeout, env=env)
    return proc


def _rows_of(out: Path, rank: int) -> dict[str, np.ndarray]:
    with np.load(out / f"rank{rank}.npz", allow_pickle=False) as f:
        return dict(f)


@pytest.mark.parametrize("parquet", [False, True])
def test_each_process_reads_its_parts_and_the_fit_is_the_one_process_fit(tmp_path, parquet):
    # issue 11, item 1: each rank reads the part files assign_parts gives it, and no others
    data, out = tmp_path / "ratings", tmp_path / "out"
    out.mkdir()
    whole = planted()
    write_parts(data, whole, 5, parquet=parquet)
    proc = torchrun(str(HERE), "parts", str(data), str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = autofact.read(data)
    files = sorted(data.glob("part-*"))
    assigned = distributed.assign_parts(files, 2)
    assert all(assigned)
    rows = [_rows_of(out, r) for r in (0, 1)]
    for rank in (0, 1):
        got = rows[rank]
        want = read_parts(assigned[rank])
        held = {(str(u), str(i), float(v)) for u, i, v in
                zip(got["users"], got["items"], got["values"], strict=True)}
        assert held == triples(want)  # its parts' rows, and no others
        assert json.loads(str(got["read"])) == [f.name for f in assigned[rank]]
        # the id maps: the same on both ranks, and those of the one-process read
        np.testing.assert_array_equal(got["user_ids"], one.user_ids.astype(str))
        np.testing.assert_array_equal(got["item_ids"], one.item_ids.astype(str))
    assert len(rows[0]["values"]) + len(rows[1]["values"]) == len(one)
    shared = autofact.load(out / "model.npz")
    single = model().fit(one)
    np.testing.assert_array_equal(shared.user_ids_, single.user_ids_)
    for name in ("user_factors_", "item_factors_", "user_bias_", "item_bias_"):
        np.testing.assert_allclose(getattr(shared, name), getattr(single, name), rtol=1e-7,
                                   atol=1e-9, err_msg=name)
    assert shared.global_mean_ == pytest.approx(single.global_mean_, rel=1e-12)
    np.testing.assert_allclose([h["loss"] for h in shared.history_],
                               [h["loss"] for h in single.history_], rtol=1e-9)
    # rank 0's saved model holds every process's seen items (a user's ratings came from both
    # ranks: its row's items sorted again), counts and rating range
    for got, want in zip(shared.index_.seen_arrays(), single.index_.seen_arrays(), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(shared.index_.user_counts, single.index_.user_counts)
    np.testing.assert_array_equal(shared.index_.item_counts, single.index_.item_counts)
    assert shared.index_.rating_range == single.index_.rating_range
    # rank 1's model: the same factors, the counts of all the ratings
    np.testing.assert_allclose(rows[1]["P"], single.user_factors_, rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(rows[1]["user_counts"], single.index_.user_counts)


def test_one_file_is_split_by_user_hash(tmp_path):
    # issue 11, item 1: every rating of a user lands on the rank user_owner names
    whole = planted(seed=2)
    data, out = tmp_path / "r.csv", tmp_path / "out"
    out.mkdir()
    data.write_text("user,item,rating\n" + "".join(
        f"{u},i{i},{float(v)!r}\n" for u, i, v in zip(whole.users, whole.items, whole.values,
                                                      strict=True)))
    proc = torchrun(str(HERE), "users", str(data), str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = autofact.read(data)
    rows = [_rows_of(out, r) for r in (0, 1)]
    owner = dict(zip(one.user_ids.tolist(), distributed.user_owner(one.user_ids, 2).tolist(),
                     strict=True))
    for rank in (0, 1):
        assert rows[rank]["user_ids"].dtype.kind == "i"  # int ids stay ints
        np.testing.assert_array_equal(rows[rank]["user_ids"], one.user_ids)
        assert len(rows[rank]["values"]) > 0
        assert {owner[int(u)] for u in rows[rank]["users"]} == {rank}
    assert sum(len(r["values"]) for r in rows) == len(one)
    shared = autofact.load(out / "model.npz")
    single = model().fit(one)
    np.testing.assert_allclose(shared.user_factors_, single.user_factors_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(shared.item_factors_, single.item_factors_, rtol=1e-7, atol=1e-9)
    # users on one process each: rank 0 places the gathered rows without sorting them again
    indptr, indices = shared.index_.seen_arrays()
    want_ptr, want_idx = single.index_.seen_arrays()
    np.testing.assert_array_equal(indptr, want_ptr)
    np.testing.assert_array_equal(indices, want_idx)


def test_errors_stop_every_process_with_a_message(tmp_path):
    # issue 11, item 1: a part one process cannot read stops both (not one waiting on the
    # other); too few parts; rank-local ratings passed without local=True
    whole = planted(seed=3)
    data, out = tmp_path / "ratings", tmp_path / "out"
    out.mkdir()
    write_parts(data, whole, 3)
    bad = tmp_path / "bad"
    bad.mkdir()
    for k in range(2):
        # equal sizes: part-0 to rank 0, part-1 to rank 1
        (bad / f"part-{k}.csv").write_text("user,item,rating\nu1,i1,4.25\n" if k == 0 else
                                           "user,item,rating\nu2,i1,oops\n")
    proc = torchrun(str(HERE), "errors", f"{data}{os.pathsep}{bad}", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [json.loads((out / f"errors{r}.json").read_text()) for r in (0, 1)]
    # the rank that read the bad line names it; the other names that rank
    assert "line 2 of part-1.csv: rating 'oops' is not a number" in got[1]["bad"]
    assert "rank 1 could not read" in got[0]["bad"]
    for g in got:
        assert "holds 1 part files for 2 processes; write at least one part per process" in \
            g["few"]
        assert "pass local=True" in g["not_local"]
        assert "split='parts' needs a folder of part files" in g["file_parts"]
        assert "nothing-here' does not exist" in g["missing"]
        assert "of 2 holds no ratings of" in g["empty"] and "use fewer processes" in g["empty"]
        assert "the processes see different files at" in g["different"]
        assert "some processes' part files have timestamps and some do not" in g["stamps"]
        assert "the processes' ratings have different id maps" in g["maps"]


def test_cli_fit_of_a_folder_under_torchrun_reads_shares(tmp_path):
    # issue 11, item 1: autofact fit DIR under torchrun reads each process's parts; the model
    # is the one-process model, and the report counts every process's ratings. --solver adam:
    # the default ('auto': the sampler or als, users partitioned) reads the parts by user
    whole = planted(seed=4)
    data = tmp_path / "ratings"
    write_parts(data, whole, 4)
    out = tmp_path / "m.npz"
    proc = torchrun("-m", "autofact", "fit", str(data), "--out", str(out), "--epochs", "5",
                    "--rank", "3", "--solver", "adam", "--seed", "0", "--dtype", "float64",
                    "--device", "cpu", "--quiet", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # issue 12 review: np.sqrt of the summed torch tensor printed NumPy 2's __array_wrap__
    # deprecation as "autofact: warning: ..." on every process
    assert "autofact: warning" not in proc.stderr, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["train"]["ratings"] == len(whole)
    single = autofact.MatrixFactorization(rank=3, solver="adam", epochs=5, seed=0,
                                          dtype="float64", device="cpu").fit(autofact.read(data))
    assert summary["train_rmse"] == pytest.approx(-single.score(autofact.read(data)), rel=1e-6)
    shared = autofact.load(out)
    np.testing.assert_allclose(shared.user_factors_, single.user_factors_, rtol=1e-7, atol=1e-9)


def test_cli_refuses_a_test_fraction_under_torchrun(tmp_path):
    # issue 11: each process holds its own share, so a held-out fraction would differ per rank
    data = tmp_path / "r.csv"
    data.write_text("user,item,rating\nu1,i1,4\nu2,i2,3\n")
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-m", "autofact", "fit", str(data), "--out",
                           str(tmp_path / "m.npz"), "--test-fraction", "0.2"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "--test-fraction is not available under torchrun" in proc.stderr
    assert "pass --test FILE" in proc.stderr


# ------------------------------------------------------------------ without processes
def test_assign_parts_balances_bytes_and_goes_round_robin_on_equal_parts(tmp_path):
    files = []
    for k, size in enumerate([10, 10, 10, 10, 10]):
        f = tmp_path / f"p{k}"
        f.write_bytes(b"x" * size)
        files.append(f)
    assert distributed.assign_parts(files, 2) == [[files[0], files[2], files[4]],
                                                  [files[1], files[3]]]
    sizes = [100, 10, 10, 10, 70]
    for f, size in zip(files, sizes, strict=True):
        f.write_bytes(b"x" * size)
    got = distributed.assign_parts(files, 2)
    assert got == [[files[0]], [files[1], files[2], files[3], files[4]]]  # 100 vs 100 bytes
    with pytest.raises(ValueError, match="world_size must be a positive int, got 0"):
        distributed.assign_parts(files, 0)


def test_user_owner_is_a_stable_hash_of_the_id_as_written():
    ids = np.arange(1000)
    owner = distributed.user_owner(ids, 4)
    assert set(owner.tolist()) == {0, 1, 2, 3}
    assert np.bincount(owner).min() > 150  # spread, not all on one rank
    # an int id and the same id as text go to the same rank; the same call agrees with itself
    np.testing.assert_array_equal(owner, distributed.user_owner(ids.astype(str), 4))
    np.testing.assert_array_equal(owner, distributed.user_owner(list(range(1000)), 4))
    with pytest.raises(ValueError, match="world_size must be a positive int, got -1"):
        distributed.user_owner(ids, -1)


def test_read_parts_keeps_the_users_asked_for_part_by_part(tmp_path):
    data = tmp_path / "ratings"
    whole = planted(seed=5)
    write_parts(data, whole, 3)
    files = sorted(data.glob("part-*"))
    kept = read_parts(files, keep_users=lambda ids: np.char.endswith(ids.astype(str), "1"))
    want = {t for t in triples(autofact.read(data)) if t[0].endswith("1")}
    assert triples(kept) == want
    assert triples(read_parts(files)) == triples(autofact.read(data))
    with pytest.raises(ValueError, match="no ratings were kept from the 3 part files"):
        read_parts(files, keep_users=lambda ids: np.zeros(len(ids), dtype=bool))
    with pytest.raises(ValueError, match="files is empty: give at least one part file"):
        read_parts([])


def test_read_local_needs_a_process_group_and_a_known_split(tmp_path):
    import torch.distributed as dist

    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="split must be 'auto', 'parts' or 'users', got 'rows'"):
        distributed.read_local(tmp_path, split="rows")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match=r"call autofact.distributed.init\(\) first"):
        distributed.read_local(tmp_path)


def test_with_pattern_refuses_a_pattern_of_other_counts():
    from autofact.index import ModelIndex

    r = planted(seed=6)
    index = ModelIndex.from_ratings(r, fallback=3.0, clip=False)
    indptr, indices = index.seen_arrays()
    np.testing.assert_array_equal(index.with_pattern(indptr, indices).seen_arrays()[1], indices)
    with pytest.raises(ValueError, match="the pattern's ratings per user and item differ"):
        index.with_pattern(indptr, np.zeros_like(indices))


@pytest.mark.parametrize(("flags", "values"), [
    ([], "float32"), (["--dtype", "float32"], "float32"), (["--dtype", "float64"], None),
    (["--params", "P"], None)])
def test_cli_under_torchrun_reads_float32_values_for_a_float32_fit(tmp_path, monkeypatch, flags,
                                                                   values):
    # issue 11 (memory): the CLI under torchrun reads the values in float32 when the fit is
    # float32 (the default, or --dtype float32; a --params file's dtype counts too), so the fit
    # shares them; a float64 fit reads them as before
    from autofact.cli import main

    (tmp_path / "P").write_text(json.dumps({"dtype": "float64"}))
    data = tmp_path / "r.csv"
    data.write_text("user,item,rating\nu1,i1,4\nu2,i2,3\n")
    calls: list[dict] = []

    def spy(path, **kw):  # type: ignore[no-untyped-def]
        calls.append(kw)
        raise ValueError("read stopped by the test")

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "init", lambda timeout=None: (0, 2))
    monkeypatch.setattr(distributed, "is_main_process", lambda: True)
    monkeypatch.setattr(distributed, "shutdown", lambda wait=True: None)
    monkeypatch.setattr(distributed, "read_local", spy)
    args = ["fit", str(data), "--out", str(tmp_path / "m.npz"), *flags]
    assert main([a if a != "P" else str(tmp_path / "P") for a in args]) != 0
    assert len(calls) == 1 and calls[0]["dtype"] == values
    assert calls[0]["split"] == "users"  # 'auto' solver: every rating of a user on one process


def test_local_fit_refuses_a_validation_fraction():
    m = autofact.MatrixFactorization(solver="adam", validation_fraction=0.1)
    with pytest.raises(ValueError, match="validation_fraction=0.1 would hold out another share"):
        distributed.fit(m, planted(), local=True)


def test_one_process_local_fit_keeps_its_own_pattern_without_a_gather(tmp_path, monkeypatch):
    # issue 11 (memory): one process's index already holds the whole training pattern, so
    # distributed.fit(local=True) skips the gather; the model is the plain fit's
    import torch.distributed as dist

    def no_gather(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the pattern was gathered with one process")

    monkeypatch.setattr(distributed, "_gather_pattern", no_gather)
    r = planted(seed=7)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1),
                            rank=0, world_size=1)
    try:
        shared = distributed.fit(model(), r, local=True)
    finally:
        dist.destroy_process_group()
    single = model().fit(r)
    for got, want in zip(shared.index_.seen_arrays(), single.index_.seen_arrays(), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(shared.index_.user_counts, single.index_.user_counts)
    np.testing.assert_allclose(shared.user_factors_, single.user_factors_, rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------------ the worker
def _worker(mode: str, data: str, out: str) -> None:
    rank, world = distributed.init(timeout=60)
    folder = Path(out)
    if mode in ("parts", "users"):
        seen: list[str] = []
        if mode == "parts":  # record which files this process opens
            import autofact.reading as reading

            original = reading.read

            def spying(path, **kw):  # type: ignore[no-untyped-def]
                seen.append(Path(path).name)
                return original(path, **kw)

            reading.read = spying  # type: ignore[assignment]
        local = distributed.read_local(data)
        if mode == "parts":
            reading.read = original  # type: ignore[assignment]
            distributed._GATHER_STEP = 5  # rank 0 places the pattern in slices across users
        fitted = distributed.fit(model(), local, local=True)
        np.savez(folder / f"rank{rank}.npz", users=local.user_ids[local.users].astype(str)
                 if mode == "parts" else local.user_ids[local.users],
                 items=local.item_ids[local.items].astype(str), values=local.values,
                 user_ids=local.user_ids.astype(str) if mode == "parts" else local.user_ids,
                 item_ids=local.item_ids.astype(str), read=json.dumps(seen),
                 P=fitted.user_factors_, user_counts=fitted.index_.user_counts)
        distributed.save(fitted, folder / "model.npz")  # every process: rank 0 writes
        distributed.shutdown()
        return
    # mode "errors": each case must end in a ValueError on both ranks (none left waiting)
    good, bad = data.split(os.pathsep)
    found: dict[str, str] = {}

    def error(key: str, fn) -> None:  # type: ignore[no-untyped-def]
        try:
            fn()
        except ValueError as exc:
            found[key] = str(exc)
        else:
            found[key] = "no error"

    error("bad", lambda: distributed.read_local(bad))
    one = Path(good) / "single"
    one.mkdir(exist_ok=True)
    if rank == 0:
        (one / "part-0.csv").write_text("user,item,rating\nu1,i1,4\n")
    from autofact.sharding import TorchShardPlan

    TorchShardPlan().all_sum_float(0.0)  # rank 0 has written the single part
    error("few", lambda: distributed.read_local(one))
    local = distributed.read_local(good)
    error("not_local", lambda: distributed.fit(model(), local))
    error("file_parts", lambda: distributed.read_local(one / "part-0.csv", split="parts"))
    error("missing", lambda: distributed.read_local(Path(good) / "nothing-here"))
    # one user in one file: the rank its id does not hash to holds nothing
    error("empty", lambda: distributed.read_local(one / "part-0.csv"))
    # each process sees another folder
    error("different", lambda: distributed.read_local(good if rank == 0 else bad))
    stamps = Path(good) / "stamps"
    stamps.mkdir(exist_ok=True)
    if rank == 0:  # equal sizes: part-0 (with timestamps) to rank 0, part-1 (without) to rank 1
        (stamps / "part-0.csv").write_text("user,item,rating,timestamp\nu1,i1,4,1000000\n")
        (stamps / "part-1.csv").write_text("user,item,rating,extra_col\nu2,i2,3,xxxxxxx\n")
    TorchShardPlan().all_sum_float(0.0)
    error("stamps", lambda: distributed.read_local(stamps))
    mine = planted(seed=3) if rank == 0 else planted(seed=3, m=51)
    error("maps", lambda: distributed.fit(model(), mine, local=True))
    (folder / f"errors{rank}.json").write_text(json.dumps(found))
    distributed.shutdown()


if __name__ == "__main__":
    _worker(*sys.argv[1:4])
