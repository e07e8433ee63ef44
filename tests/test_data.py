"""Ratings: every input form gives the same Ratings; every bad input gets its clear error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import autofact
from autofact import Ratings

from .conftest import dataset

DENSE = np.array([[5.0, np.nan, 1.0], [np.nan, 2.0, np.nan], [4.0, np.nan, 3.0]])


def _expected() -> Ratings:
    return Ratings.from_coo([0, 0, 1, 2, 2], [0, 2, 1, 0, 2], [5.0, 1.0, 2.0, 4.0, 3.0], shape=(3, 3))


def test_every_form_gives_the_same_ratings():
    expected = _expected()
    masked = np.ma.masked_invalid(DENSE)
    forms = {
        "dense": Ratings.from_dense(DENSE),
        "masked": Ratings.from_masked(masked),
        "csr": Ratings.from_sparse(sp.csr_matrix(np.nan_to_num(DENSE))),
        "coo_shuffled": Ratings.from_coo([2, 0, 1, 2, 0], [2, 0, 1, 0, 2], [3, 5, 2, 4, 1.0],
                                         shape=(3, 3)),
        "frame": Ratings.from_frame(
            pd.DataFrame({"user": [0, 0, 1, 2, 2], "item": [0, 2, 1, 0, 2],
                          "rating": [5.0, 1.0, 2.0, 4.0, 3.0]})
        ),
    }
    for name, r in forms.items():
        assert r.equals(expected), name
    assert repr(expected) == "<Ratings (3 users x 3 items x 5 ratings)>"


def test_sparse_explicit_zero_is_a_rating_and_absent_is_missing():
    S = sp.coo_matrix(([0.0, 3.0], ([0, 1], [1, 0])), shape=(2, 2))
    r = Ratings.from_sparse(S)
    assert len(r) == 2 and sorted(r.values.tolist()) == [0.0, 3.0]


def test_frame_with_string_ids_keeps_the_maps():
    df = pd.DataFrame({"u": ["bob", "amy", "bob"], "i": ["x", "y", "y"], "r": [1.0, 2.0, 3.0]})
    r = Ratings.from_frame(df, user="u", item="i", rating="r")
    assert r.user_ids.tolist() == ["amy", "bob"] and r.item_ids.tolist() == ["x", "y"]
    back = r.to_frame().sort_values(["user", "item"]).reset_index(drop=True)
    assert back.values.tolist() == [["amy", "y", 2.0], ["bob", "x", 1.0], ["bob", "y", 3.0]]
    assert r.user_index(["bob"]).tolist() == [1]
    with pytest.raises(autofact.UnknownIdError, match="user 'carl' is not in the training data"):
        r.user_index("carl")


def test_frame_weights_and_timestamps():
    df = pd.DataFrame({"user": [1, 2], "item": [1, 1], "rating": [4.0, 5.0],
                       "w": [0.5, 2.0], "ts": [10, 20]})
    r = Ratings.from_frame(df, weight="w", timestamp="ts")
    assert r.weights.tolist() == [0.5, 2.0] and r.timestamps.tolist() == [10, 20]


def test_duplicates_error_mean_last():
    u, i, v = [0, 0, 1], [1, 1, 0], [1.0, 3.0, 2.0]
    with pytest.raises(ValueError, match=r"duplicate rating for \(user 0, item 1\).*duplicates='mean'"):
        Ratings.from_coo(u, i, v)
    assert Ratings.from_coo(u, i, v, duplicates="mean").values.tolist() == [2.0, 2.0]
    assert Ratings.from_coo(u, i, v, duplicates="last").values.tolist() == [3.0, 2.0]
    with pytest.raises(ValueError, match="duplicates must be 'error', 'mean' or 'last'"):
        Ratings.from_coo(u, i, v, duplicates="first")
    df = pd.DataFrame({"user": ["a", "a"], "item": ["x", "x"], "rating": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"\(user 'a', item 'x'\)"):
        Ratings.from_frame(df)


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: Ratings.from_dense(np.array([[1.0, np.inf]])), "must be finite, got inf at row 0, column 1"),
        (lambda: Ratings.from_coo([0, 1], [0, 1], [1.0, np.nan]), "ratings must be finite, got nan"),
        (lambda: Ratings.from_dense(np.full((2, 2), np.nan)), "ratings are empty"),
        (lambda: Ratings.from_coo([0, 1], [0], [1.0, 2.0]), "must have the same length, got 2, 1, 2"),
        (lambda: Ratings.from_coo([0, 5], [0, 1], [1.0, 2.0], shape=(3, 3)),
         r"users index 5 is out of range for shape \(3, 3\)"),
        (lambda: Ratings.from_dense(np.ones(3)), "D must be 2-D"),
        (lambda: Ratings.from_coo([0], [0], [1.0], weights=[-1.0]), "weights must be >= 0"),
        (lambda: Ratings.from_frame(pd.DataFrame({"user": [], "item": [], "rating": []})),
         "ratings are empty"),
        (lambda: Ratings.from_frame(pd.DataFrame({"u": [1], "item": [1], "rating": [1.0]})),
         r"user='user' is not a column of the DataFrame; its columns are \['u', 'item', 'rating'\]"),
        (lambda: Ratings.from_frame(pd.DataFrame({"user": [1], "item": [1], "rating": [np.nan]})),
         "column 'rating' must be finite"),
    ],
)
def test_bad_input_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_type_errors_name_the_fix():
    with pytest.raises(TypeError, match="use Ratings.from_dense or Ratings.from_masked"):
        Ratings.from_sparse(np.ones((2, 2)))
    with pytest.raises(TypeError, match="df must be a pandas DataFrame"):
        Ratings.from_frame({"user": [1]})


# ---------------------------------------------------------------------------------- files
def test_read_movielens_u_data():
    r = autofact.read(dataset("ml-100k", "u.data"))
    assert r.shape == (943, 1682) and len(r) == 100_000
    assert r.timestamps is not None
    assert r.values.min() == 1 and r.values.max() == 5
    # user 196 rated item 242 with 3 (the first line of u.data)
    k = np.flatnonzero((r.users == r.user_index(196)[0]) & (r.items == r.item_index(242)[0]))
    assert r.values[k].tolist() == [3.0]


def test_read_ratings_csv_with_header():
    r = autofact.read(dataset("ml-latest-small", "ratings.csv"))
    assert r.shape == (610, 9724) and len(r) == 100_836
    assert set(np.unique(r.values)) <= {x / 2 for x in range(1, 11)}


def test_read_filmtrust_space_separated_needs_duplicates_choice():
    path = dataset("filmtrust", "ratings.txt")
    with pytest.raises(ValueError, match="duplicate rating"):
        autofact.read(path)
    r = autofact.read(path, duplicates="last")
    assert len(r) == 35_497 - 3


def test_read_forms_agree(tmp_path):
    df = pd.DataFrame({"userId": [1, 1, 7], "movieId": [10, 20, 10], "rating": [4.0, 3.5, 1.0],
                       "timestamp": [1, 2, 3]})
    dat = tmp_path / "ratings.dat"
    dat.write_text("".join(f"{a}::{b}::{c}::{d}\n" for a, b, c, d in df.itertuples(index=False)))
    tsv = tmp_path / "u.data"
    tsv.write_text("".join(f"{a}\t{b}\t{c}\t{d}\n" for a, b, c, d in df.itertuples(index=False)))
    csv = tmp_path / "ratings.csv"
    df.to_csv(csv, index=False)
    pq = tmp_path / "ratings.parquet"
    df.to_parquet(pq)
    reads = [autofact.read(p) for p in (dat, tsv, csv, pq)]
    for r in reads[1:]:
        assert r.equals(reads[0])
    assert reads[0].user_ids.tolist() == [1, 7] and reads[0].item_ids.tolist() == [10, 20]
    # overriding detection: a semicolon file named by sep=
    semi = tmp_path / "x.txt"
    semi.write_text("a;b;2\nc;b;4\n")
    r = autofact.read(semi, sep=";")
    assert r.user_ids.tolist() == ["a", "c"]


@pytest.mark.parametrize(
    "content,match",
    [
        ("1\t2\t3\n4\t5\n", r"line 2 of bad.txt: expected at least 3 fields"),
        ("1\t2\t3\n4\t5\t6\t7\t8\n", r"line 2 of bad.txt: expected 3 fields, got 5"),
        ("1,2,3\n4,5,x\n", r"line 2 of bad.txt: rating 'x' is not a number"),
        ("1,2\n3,4\n", r"expected 3 or 4 fields"),
        ("", "the file is empty"),
        ("user,item,rating\n1,2,inf\n", r"line 2 of bad.txt: rating inf is not finite"),
    ],
)
def test_read_errors_name_the_line(tmp_path, content, match):
    p = tmp_path / "bad.txt"
    p.write_text(content)
    with pytest.raises(ValueError, match=match):
        autofact.read(p)


def test_read_missing_file_and_binary(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        autofact.read(tmp_path / "nope.csv")
    b = tmp_path / "x.bin"
    b.write_bytes(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="binary file"):
        autofact.read(b)
