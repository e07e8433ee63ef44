"""Reading a folder of Parquet parts within the memory of the ratings it gives (issue 11, item 3).

A process's peak includes reading its ratings: the part-by-part reader held every part read so
far beside the next one read whole (pyarrow's table, pandas' frame, the ids' factorization and
a sorted copy: ~80 bytes a rating of the part), then joined them. Parquet parts are now streamed
a batch of rows at a time straight into the result (``reading._stream_parquet``); whatever the
stream does not read as the part-by-part reader does goes to that reader, so the Ratings and the
errors are the same.
"""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import autofact
from autofact import reading

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")


def write_parquet_parts(folder: Path, n_parts: int, n_ratings: int, *, seed: int = 0,
                        users: int = 2_000, items: int = 300, spread: bool = False,
                        id_scale: int = 1, twice: int = 0, far_last: bool = False
                        ) -> list[Path]:
    """``n_ratings`` distinct (user, item) pairs in random order, int64 ids (times
    ``id_scale``: sparse ids; the last part's far from the others with ``far_last``), float64
    ratings; a user's ratings in one part (``user mod n_parts``), or in any part (``spread``);
    ``twice`` pairs rated again (in a random part)."""
    rng = np.random.default_rng(seed)
    keys = rng.choice(users * items, n_ratings, replace=False)
    keys = np.r_[keys, rng.choice(keys, twice, replace=False)]
    rng.shuffle(keys)
    u, i = keys // items, keys % items
    part = rng.integers(0, n_parts, len(keys)) if spread else u % n_parts
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(n_parts):
        rows = part == k
        far = 10**15 if far_last and k == n_parts - 1 else 0
        frame = pd.DataFrame({"user": (u[rows] * id_scale - 5 + far).astype(np.int64),
                              "item": (i[rows] * id_scale + 7 - far).astype(np.int64),
                              "rating": np.round(rng.normal(3, 1, int(rows.sum())), 3)})
        files.append(folder / f"part-{k:05d}.parquet")
        frame.to_parquet(files[-1], index=False)
    return files


def part_by_part(monkeypatch: pytest.MonkeyPatch, read: Any) -> Any:
    """What ``read()`` gives (or raises) when the stream is not used."""
    with monkeypatch.context() as m:
        m.setattr(reading, "_stream_parquet", lambda *args: None)
        try:
            return read()
        except ValueError as exc:
            return exc


def streams(files: list[Path], **kwargs: Any) -> bool:
    """Whether the stream takes these parts (it declines before reading any rows)."""
    return reading._parquet_plan(files, kwargs) is not None


def assert_same(a: autofact.Ratings, b: autofact.Ratings) -> None:
    assert a.shape == b.shape
    for name in ("users", "items", "values", "user_ids", "item_ids"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert a.weights is None and b.weights is None
    assert a.timestamps is None and b.timestamps is None


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    # batches, sorted runs and id merges far smaller than the data: every boundary is crossed
    monkeypatch.setattr(reading, "_BATCH_ROWS", 97)
    monkeypatch.setattr(reading, "_SORT_STEP", 301)
    monkeypatch.setattr(reading, "_MERGE_IDS", 64)


def test_parquet_parts_are_read_within_16_bytes_a_rating(tmp_path, monkeypatch):
    # issue 11, item 3: the traced (numpy, pandas) peak of reading 3 Parquet parts with float32
    # values: the 12 bytes a rating of the result (int32 user, int32 item, float32 value), the
    # final checks of Ratings (3 bytes a rating of booleans) and a batch's workspace (its size
    # set small here: a constant, whatever the ratings). The part-by-part reader peaked at
    # 22 bytes a rating here (each part read whole beside the parts already held, then joined)
    n = 300_000
    files = write_parquet_parts(tmp_path / "p", 3, n, users=20_000, items=3_000)
    monkeypatch.setattr(reading, "_BATCH_ROWS", 4096)
    monkeypatch.setattr(reading, "_SORT_STEP", 16_384)
    monkeypatch.setattr(reading, "_MERGE_IDS", 8192)
    reading.read_parts(files[:1], dtype="float32")  # imports and first-use allocations
    tracemalloc.start()
    try:
        got = reading.read_parts(files, dtype="float32")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(got) == n
    assert peak <= 16 * n, peak / n
    assert_same(got, part_by_part(monkeypatch, lambda: reading.read_parts(files,
                                                                          dtype="float32")))


@pytest.mark.parametrize("dtype", [None, "float32"])
@pytest.mark.parametrize(("spread", "id_scale", "far_last"),
                         [(False, 1, False), (True, 1, False), (True, 10**12, False),
                          (False, 1, True)])
def test_streamed_parts_are_the_part_by_part_readers_ratings(tmp_path, monkeypatch,
                                                             small_batches, dtype, spread,
                                                             id_scale, far_last):
    # issue 11: the same Ratings to the bit: codes, id maps (dense ids counted in a table,
    # sparse ones hashed, dense ones then sparse ones both), values (float64 first, then
    # dtype), order; users rated in several parts
    files = write_parquet_parts(tmp_path / "p", 4, 5_000, spread=spread, id_scale=id_scale,
                                far_last=far_last)
    streamed = reading._stream_parquet(files, {}, "error", None, reading.values_dtype(dtype))
    assert streamed is not None  # plain parts: the stream reads them
    assert_same(streamed, part_by_part(monkeypatch, lambda: reading.read_parts(files,
                                                                               dtype=dtype)))
    assert_same(autofact.read(tmp_path / "p"),
                part_by_part(monkeypatch, lambda: autofact.read(tmp_path / "p")))


def test_streamed_parts_keep_the_last_of_a_pair_rated_twice(tmp_path, monkeypatch,
                                                           small_batches):
    # issue 11: a pair rated twice, in one part or in two: duplicates='last' keeps the later
    # part's (or the later row's) rating, as the part-by-part reader does; 'error' raises that
    # reader's error, which names the first pair of the first part that has one
    files = write_parquet_parts(tmp_path / "p", 3, 4_000, spread=True, twice=60)
    got = autofact.read(tmp_path / "p", duplicates="last")
    assert len(got) == 4_000
    assert_same(got, part_by_part(monkeypatch,
                                  lambda: autofact.read(tmp_path / "p", duplicates="last")))
    want = part_by_part(monkeypatch, lambda: reading.read_parts(files))
    assert isinstance(want, ValueError)
    with pytest.raises(ValueError, match="^" + re.escape(str(want)) + "$"):
        reading.read_parts(files)
    with pytest.raises(ValueError, match=r"^duplicate rating for \(user "):
        reading.read_parts(files)


def test_streamed_parts_keep_the_users_asked_for(tmp_path, monkeypatch, small_batches):
    # issue 11: keep_users (read_local(split='users')) asked about each batch's distinct user
    # ids, sorted, as it was about each part's: the users kept and the items they rated only
    files = write_parquet_parts(tmp_path / "p", 3, 6_000, spread=True)
    asked: list[np.ndarray] = []

    def odd(ids: np.ndarray) -> np.ndarray:
        asked.append(ids)
        return ids % 2 == 1

    got = reading.read_parts(files, keep_users=odd, dtype="float32")
    assert all(np.all(a[1:] > a[:-1]) for a in asked)
    assert np.all(got.user_ids % 2 == 1)
    assert_same(got, part_by_part(monkeypatch, lambda: reading.read_parts(
        files, keep_users=lambda ids: ids % 2 == 1, dtype="float32")))
    few = reading.read_parts(files, keep_users=lambda ids: ids < 3)  # most batches: none
    assert 0 < len(few) < 100
    assert_same(few, part_by_part(monkeypatch, lambda: reading.read_parts(
        files, keep_users=lambda ids: ids < 3)))
    with pytest.raises(ValueError, match="no ratings were kept from the 3 part files"):
        reading.read_parts(files, keep_users=lambda ids: np.zeros(len(ids), dtype=bool))


@pytest.mark.parametrize("flaw", ["missing rating", "infinite rating", "missing user"])
def test_what_the_stream_meets_is_reported_by_the_part_by_part_reader(tmp_path, monkeypatch,
                                                                       flaw):
    # issue 11: a missing id, a missing or infinite rating: the part-by-part reader's error,
    # naming the part and the row (the stream hands the folder over)
    files = write_parquet_parts(tmp_path / "p", 2, 400)
    frame = pd.read_parquet(files[1])
    if flaw == "missing user":  # a plain int64 column with a null (no pandas metadata)
        import pyarrow as pa
        import pyarrow.parquet as pq

        users = pa.array(frame["user"].tolist()[:5] + [None] + frame["user"].tolist()[6:],
                         type=pa.int64())
        pq.write_table(pa.table({"user": users, "item": frame["item"].to_numpy(),
                                 "rating": frame["rating"].to_numpy()}), files[1])
    else:
        frame.loc[5, "rating"] = np.nan if flaw == "missing rating" else np.inf
        frame.to_parquet(files[1], index=False)
    assert streams(files)  # the stream meets it as it reads
    want = part_by_part(monkeypatch, lambda: autofact.read(tmp_path / "p"))
    assert isinstance(want, ValueError)
    expected = {"missing rating": "row 6 of part-00001.parquet: rating nan is missing",
                "infinite rating": "row 6 of part-00001.parquet: rating inf is not finite",
                "missing user": "row 6 of part-00001.parquet: the user id is missing"}[flaw]
    with pytest.raises(ValueError, match="^" + re.escape(expected)):
        autofact.read(tmp_path / "p")
    assert str(want).startswith(expected)


@pytest.mark.parametrize("case", ["csv", "stored index", "dates", "float ids", "weights"])
def test_parts_the_stream_does_not_take_read_as_before(tmp_path, monkeypatch, case):
    # issue 11: a CSV part, a stored index, timestamps as dates, float ids or a weight column:
    # the part-by-part reader reads the folder (the stream declines before reading any rows)
    files = write_parquet_parts(tmp_path / "p", 3, 900)
    for k, f in enumerate(files):
        frame = pd.read_parquet(f)
        if case == "dates":
            frame.assign(timestamp=pd.Timestamp("2020-01-01") + pd.to_timedelta(
                np.arange(len(frame)), unit="s")).to_parquet(f, index=False)
        elif case == "weights":
            frame.assign(w=0.5).to_parquet(f, index=False)
        elif k == 0 and case == "csv":
            f.unlink()
            frame.to_csv(f.with_suffix(".csv"), index=False)
        elif k == 0 and case == "stored index":
            frame.sample(frac=1.0, random_state=0).to_parquet(f)
        elif k == 0 and case == "float ids":
            frame.assign(user=frame["user"] + 0.5).to_parquet(f, index=False)
    weight = "w" if case == "weights" else None
    assert not streams(reading.part_files(tmp_path / "p"), weight=weight)
    assert_same_or_equal(
        autofact.read(tmp_path / "p", weight=weight),
        part_by_part(monkeypatch, lambda: autofact.read(tmp_path / "p", weight=weight)))


def assert_same_or_equal(a: autofact.Ratings, b: autofact.Ratings) -> None:
    assert a.equals(b)
    assert a.values.dtype == b.values.dtype and a.user_ids.dtype == b.user_ids.dtype


def test_a_pair_rated_twice_by_a_user_not_kept_is_left_to_the_process_that_keeps_it(tmp_path):
    # issue 11: keep_users reads only the kept users' ratings of a Parquet part (the
    # part-by-part reader read the part whole, and stopped at any pair rated twice in it)
    folder = tmp_path / "p"
    folder.mkdir()
    pd.DataFrame({"user": [1, 1, 2, 2], "item": [5, 5, 5, 6], "rating": [1.0, 2.0, 3.0, 4.0]}
                 ).to_parquet(folder / "part-0.parquet", index=False)
    kept = reading.read_parts([folder / "part-0.parquet"], keep_users=lambda ids: ids == 2)
    assert kept.values.tolist() == [3.0, 4.0] and list(kept.user_ids) == [2]
    with pytest.raises(ValueError, match=r"duplicate rating for \(user 1, item 5\)"):
        reading.read_parts([folder / "part-0.parquet"], keep_users=lambda ids: ids == 1)


def test_read_local_streams_its_users_of_one_parquet_file(tmp_path, monkeypatch, small_batches):
    # issue 11: read_local(split='users') of one Parquet file keeps this process's users'
    # ratings batch by batch (it read the whole file, then filtered it): the same Ratings
    import torch.distributed as dist

    from autofact import distributed

    files = write_parquet_parts(tmp_path / "p", 1, 3_000)
    monkeypatch.setattr(distributed, "user_owner",  # two owners, in a group of one
                        lambda ids, world: (np.asarray(ids) % 2).astype(np.int64))
    calls: list[int] = []
    stream = reading._stream_parquet

    def counted(*args: Any) -> Any:
        calls.append(1)
        return stream(*args)

    monkeypatch.setattr(reading, "_stream_parquet", counted)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1),
                            rank=0, world_size=1)
    try:
        got = distributed.read_local(files[0], dtype="float32")
        assert calls and np.all(got.user_ids % 2 == 0)
        want = part_by_part(monkeypatch, lambda: distributed.read_local(files[0],
                                                                        dtype="float32"))
    finally:
        dist.destroy_process_group()
    assert_same(got, want)


@pytest.mark.parametrize("seconds", ["int64", "int32", "uint32"])
def test_streamed_parts_carry_their_timestamps(tmp_path, monkeypatch, small_batches, seconds):
    # issue 11: int timestamps (MovieLens's) are streamed too, 8 bytes a rating beside the 12,
    # placed and sorted with their ratings; the same Ratings as the part-by-part reader's,
    # duplicates='last' included; timestamps in some parts only: its error
    files = write_parquet_parts(tmp_path / "p", 3, 3_000, spread=True, twice=40)
    for k, f in enumerate(files):
        frame = pd.read_parquet(f)
        frame.assign(timestamp=(1_000_000 + 7 * np.arange(len(frame)) + k).astype(seconds)
                     ).to_parquet(f, index=False)
    assert streams(files)
    got = reading.read_parts(files, duplicates="last", dtype="float32")
    want = part_by_part(monkeypatch, lambda: reading.read_parts(files, duplicates="last",
                                                                dtype="float32"))
    assert got.timestamps is not None and got.timestamps.dtype == np.int64
    assert_same_or_equal(got, want)
    pd.read_parquet(files[1]).drop(columns="timestamp").to_parquet(files[1], index=False)
    assert not streams(files)
    with pytest.raises(ValueError, match="some part files have timestamps and some do not"):
        autofact.read(tmp_path / "p", duplicates="last")
