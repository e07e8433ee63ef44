"""Reading ratings: ids stay as written, weights and timestamps only when named, every unreadable
value an error naming the file, the line and the value (issue 8, item 9, and its Latin-1 note)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import autofact
from autofact import Ratings

from .conftest import dataset


def _write(tmp_path: Path, text: str | bytes, name: str = "r.csv") -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def _ids(r: Ratings) -> list:
    return r.user_ids.tolist()


# ---------------------------------------------------------------------------------- ids
@pytest.mark.parametrize("sep,name", [(",", "r.csv"), ("\t", "r.tsv"), ("::", "r.dat"), (" ", "r.txt")])
def test_ids_that_differ_as_written_are_different_users(tmp_path, sep, name):
    # issue 8, item 9: `007`, `7` and `0007` became one user
    lines = [("007", "1", "5"), ("7", "1", "4"), ("0007", "1", "3")]
    p = _write(tmp_path, "".join(sep.join(f) + "\n" for f in lines), name)
    r = autofact.read(p)
    assert r.user_ids.dtype == object and _ids(r) == ["0007", "007", "7"]
    assert r.item_ids.tolist() == [1]  # the item column is all canonical ints: ints
    got = dict(zip(r.user_ids[r.users].tolist(), r.values.tolist(), strict=True))
    assert got == {"007": 5.0, "7": 4.0, "0007": 3.0}


@pytest.mark.parametrize(
    "odd", ["+7", " 7", "-0", "07", "7.0", "1e3", "0x7", "9223372036854775808", "-9223372036854775809"]
)
def test_one_non_canonical_id_keeps_the_whole_column_as_written(tmp_path, odd):
    # issue 8, item 9: ids are ints only when every one is written canonically, within int64
    p = _write(tmp_path, f"1,10,5\n7,10,4\n{odd},10,3\n")
    r = autofact.read(p)
    assert r.user_ids.dtype == object
    assert sorted(_ids(r)) == sorted(["1", "7", odd])


def test_ids_beyond_int64_do_not_overflow_into_each_other(tmp_path):
    # issue 8, item 9: ids beyond int64 overflowed into each other
    big = ["9223372036854775807", "9223372036854775808", "18446744073709551616",
           "18446744073709551617"]
    p = _write(tmp_path, "".join(f"{u}\t{k}\t{k + 1}\n" for k, u in enumerate(big)), "r.tsv")
    r = autofact.read(p)
    assert len(r.user_ids) == 4 and set(_ids(r)) == set(big)
    # the extremes of int64 are canonical ints
    p = _write(tmp_path, "9223372036854775807,1,5\n-9223372036854775808,1,4\n")
    r = autofact.read(p)
    assert r.user_ids.dtype == np.int64
    assert _ids(r) == [-9223372036854775808, 9223372036854775807]


def test_no_id_string_becomes_missing(tmp_path):
    # issue 8, item 9: ids "NA" and "null" became missing
    words = ["NA", "null", "nan", "NaN", "None", "N/A", "#N/A", "NULL", "-nan"]
    p = _write(tmp_path, "".join(f"{w},{w},{k}\n" for k, w in enumerate(words, 1)))
    r = autofact.read(p)
    assert sorted(_ids(r)) == sorted(words) and sorted(r.item_ids.tolist()) == sorted(words)
    assert len(r) == len(words)


@pytest.mark.parametrize(
    "content,match",
    [
        ("1,2,5\n,2,3\n", r"line 2 of r.csv: the user id is empty"),
        # issue 10 review: the line was stripped before it was split, so a tab file's empty
        # first field vanished and the message blamed the item: "user id '2' is not a number"
        ("1\t2\t5\n\t2\t3\n", r"line 2 of r.csv: the user id is empty"),
        ("1\t2\t5\t7\n\t\t3\t8\n", r"line 2 of r.csv: the user id is empty"),
        ("1,2,5\n\n3,,3\n", r"line 3 of r.csv: the item id is empty"),
        ("user,item,rating\n1,2,5\n2,,4\n", r"line 3 of r.csv: the item id is empty"),
        ("1,2,5\n2\n",
         r"line 2 of r.csv: expected at least 3 fields \(user, item, rating\), got fewer \(1\)"),
        ("1,2,5\n\n\n2,2,\n", r"line 4 of r.csv: the rating is empty"),
        ("1,2,5\n2,2,nan\n", r"line 2 of r.csv: rating 'nan' is not a number"),
        ("user,item,rating\n1,2,5\n2,2\n", r"line 3 of r.csv: expected 3 fields, as in the header line"),
    ],
)
def test_empty_fields_are_errors_naming_the_line(tmp_path, content, match):
    # issue 8, item 9: an empty id is an error naming the line, never a missing id
    with pytest.raises(ValueError, match=match):
        autofact.read(_write(tmp_path, content))


def test_movielens_ids_stay_ints(ml100k):
    # issue 8, item 9: canonical-int files read as before (u.data, ratings.csv)
    r = autofact.read(ml100k / "u.data")
    assert r.user_ids.dtype == np.int64 and r.item_ids.dtype == np.int64
    assert r.user_ids.tolist() == list(range(1, 944)) and r.timestamps is not None
    r = autofact.read(dataset("ml-latest-small", "ratings.csv"))
    assert r.user_ids.dtype == np.int64 and r.item_ids.dtype == np.int64
    assert r.timestamps is not None and r.timestamps.min() > 800_000_000


@pytest.mark.parametrize("late", ["abc", "007", "99999999999999999999", "1.5", "True", "-0", "+5"])
def test_an_odd_id_far_down_a_long_file_keeps_the_column_as_written(tmp_path, late):
    # issue 8, item 9: the parser reads a long file in chunks; an id written otherwise deep in
    # the file must still keep the whole column as strings (no int 7 for a written "7")
    n = 200_000
    body = "".join(f"{u}\t{u % 13}\t3\n" for u in range(1, n))
    r = autofact.read(_write(tmp_path, body + f"{late}\t1\t4\n", "r.tsv"))
    ids = set(_ids(r))
    assert r.user_ids.dtype == object and late in ids and "7" in ids and len(ids) == n
    r = autofact.read(_write(tmp_path, f"{late}\t1\t4\n" + body, "r.tsv"))
    assert r.user_ids.dtype == object and set(_ids(r)) == ids


def test_double_colon_files_with_a_colon_in_an_id(tmp_path):
    # the fast reading of MovieLens ``::`` files gives way when a field holds a ':'
    r = autofact.read(_write(tmp_path, "1::10::5::100\n2::20::4::200\n", "r.dat"))
    assert _ids(r) == [1, 2] and r.timestamps.tolist() == [100, 200]
    r = autofact.read(_write(tmp_path, "a:b::10::5::100\nc::20::4::200\n", "r.dat"))
    assert _ids(r) == ["a:b", "c"] and r.item_ids.tolist() == [10, 20]
    r = autofact.read(_write(tmp_path, '"1"::10::5::100\n1::20::4::200\n', "r.dat"))
    assert _ids(r) == ['"1"', "1"]  # a "::" file has no quoting: quotes are part of the id


# ---------------------------------------------------------------------------------- columns
def test_a_column_named_w_is_not_weights_unless_named(tmp_path):
    # issue 8, item 9: any column named `w` became loss weights
    p = _write(tmp_path, "user,item,rating,w,weight\n1,2,5,0.5,3\n2,2,3,2,4\n")
    assert autofact.read(p).weights is None
    assert autofact.read(p, weight="w").weights.tolist() == [0.5, 2.0]
    assert autofact.read(p, weight="weight").weights.tolist() == [3.0, 4.0]


@pytest.mark.parametrize(
    "value,match",
    [
        ("-2", r"line 3 of r.csv: weight -2.0 \(column 'w'\) is negative"),
        ("x", r"line 3 of r.csv: weight 'x' \(column 'w'\) is not a number"),
        ("inf", r"line 3 of r.csv: weight inf \(column 'w'\) is not finite"),
        ("", r"line 3 of r.csv: weight nan \(column 'w'\) is missing"),
    ],
)
def test_bad_weights_name_the_line(tmp_path, value, match):
    p = _write(tmp_path, f"user,item,rating,w\n1,2,5,0.5\n2,2,3,{value}\n")
    with pytest.raises(ValueError, match=match):
        autofact.read(p, weight="w")


def test_timestamps_only_when_named_or_movielens_layout(tmp_path):
    # issue 8, item 9: a date column is used only when named, and then it must parse
    p = _write(tmp_path, "user,item,rating,date\n1,2,5,2020-01-01\n2,2,3,2020-01-02 12:00\n")
    assert autofact.read(p).timestamps is None
    assert autofact.read(p, timestamp="date").timestamps.tolist() == [1577836800, 1577966400]
    # MovieLens: a header column called "timestamp", or the 4th field of a headerless line
    p = _write(tmp_path, "userId,movieId,rating,timestamp\n1,2,5,100\n2,2,3,200\n")
    assert autofact.read(p).timestamps.tolist() == [100, 200]
    assert autofact.read(p, timestamp=False).timestamps is None
    p = _write(tmp_path, "1\t2\t5\t100.9\n2\t2\t3\t200\n", "u.data")
    assert autofact.read(p).timestamps.tolist() == [100, 200]  # whole seconds
    assert autofact.read(p, timestamp=False).timestamps is None


def test_timestamp_strings_with_offsets_are_utc(tmp_path):
    p = _write(tmp_path, "user,item,rating,t\n1,2,5,2020-01-01T01:00:00+01:00\n2,2,3,2020-01-01T00:00:00Z\n")
    assert autofact.read(p, timestamp="t").timestamps.tolist() == [1577836800, 1577836800]


@pytest.mark.parametrize(
    "content,kw,match",
    [
        ("user,item,rating,date\n1,2,5,2020-01-01\n2,2,3,yesterday\n", {"timestamp": "date"},
         r"line 3 of r.csv: timestamp 'yesterday' \(column 'date'\) is not a date like the column's "
         r"first entry; fix the value, or pass timestamp=False"),
        ("user,item,rating,timestamp\n1,2,5,100\n\n2,2,3,soon\n", {},
         r"line 4 of r.csv: timestamp 'soon' \(column 'timestamp'\) is not a number of seconds"),
        ("user,item,rating,date\n1,2,5,someday\n", {"timestamp": "date"},
         r"line 2 of r.csv: timestamp 'someday' \(column 'date'\) is neither a date nor a number"),
        ("1\t2\t5\t100\n2\t2\t3\t\n", {},
         r"line 2 of r.csv: timestamp nan \(column 'timestamp'\) is missing"),
        ("user,item,rating,t\n1,2,5,1e30\n", {"timestamp": "t"}, r"timestamp 1e\+30 .* is out of range"),
    ],
)
def test_a_timestamp_that_does_not_parse_is_an_error_not_dropped(tmp_path, content, kw, match):
    # issue 8, item 9: a date column that did not parse was silently dropped
    with pytest.raises(ValueError, match=match):
        autofact.read(_write(tmp_path, content), **kw)


@pytest.mark.parametrize(
    "content,kw,error,match",
    [
        ("user,item,rating\n1,2,5\n", {"weight": "w"}, ValueError,
         r"weight='w' is not a column of r.csv; its columns are \['user', 'item', 'rating'\]"),
        ("1,2,5\n", {"timestamp": "time"}, ValueError, r"timestamp='time' is not a column .*no header line"),
        ("user,item,rating\n1,2,5\n", {"weight": "rating"}, ValueError,
         r"rating and weight both name column 'rating' of r.csv; pass weight= to name another"),
        ("rating,user,thing\n5,1,2\n", {}, ValueError,
         r"cannot tell the item column among \['rating', 'user', 'thing'\]; pass item="),
        ("user,item,rating\n1,2,5\n", {"timestamp": True}, TypeError,
         r"timestamp must be a column name \(str\), False or None, got True"),
        ("user,item,rating\n1,2,5\n", {"weight": 3}, TypeError, r"weight must be a column name"),
        ("user,item,rating\n", {}, ValueError, r"r.csv: no ratings in the file"),
    ],
)
def test_column_choices_are_checked(tmp_path, content, kw, error, match):
    with pytest.raises(error, match=match):
        autofact.read(_write(tmp_path, content), **kw)


def test_named_columns_in_any_order(tmp_path):
    p = _write(tmp_path, "when;stars;who;what;importance\n5;4;u1;i1;2\n6;3;u2;i1;0\n")
    r = autofact.read(p, user="who", item="what", rating="stars", weight="importance",
                      timestamp="when")
    assert _ids(r) == ["u1", "u2"] and r.values.tolist() == [4.0, 3.0]
    assert r.weights.tolist() == [2.0, 0.0] and r.timestamps.tolist() == [5, 6]


# ---------------------------------------------------------------------------------- encoding
def test_latin1_file_error_names_the_file_byte_and_fix(tmp_path):
    # issue 8 (smaller ones): Latin-1 files failed with an error naming no file
    p = _write(tmp_path, "bob,1,3\n\ncaf\xe9,1,5\n".encode("latin-1"), "latin.csv")
    with pytest.raises(ValueError, match=r"latin.csv: byte 12 \(line 3\) is b'\\xe9', not valid "
                                         r"utf-8; pass encoding='latin-1'"):
        autofact.read(p)
    r = autofact.read(p, encoding="latin-1")
    assert _ids(r) == ["bob", "café"]
    with pytest.raises(ValueError, match=r"encoding='klingon' is not a known text encoding"):
        autofact.read(p, encoding="klingon")


def test_utf8_with_bom_and_crlf(tmp_path):
    p = _write(tmp_path, "\ufeffuserId,movieId,rating\r\n007,1,5\r\n7,1,4\r\n".encode())
    assert _ids(autofact.read(p)) == ["007", "7"]
    p = _write(tmp_path, "\ufeff1\t1\t5\r\n7\t1\t4\r\n".encode(), "r.tsv")
    assert _ids(autofact.read(p)) == [1, 7]


# ---------------------------------------------------------------------------------- parquet
def test_parquet_columns_only_when_named(tmp_path):
    # issue 8, item 9: the same rules for Parquet input; its columns keep their stored types
    pytest.importorskip("pyarrow")
    df = pd.DataFrame({"user": ["007", "7", "NA"], "item": [1, 1, 2], "rating": [5.0, 4.0, 3.0],
                       "w": [1.0, 2.0, 3.0], "date": ["2020-01-01", "2020-01-02", "never"]})
    p = tmp_path / "r.parquet"
    df.to_parquet(p)
    r = autofact.read(p)
    assert _ids(r) == ["007", "7", "NA"] and r.weights is None and r.timestamps is None
    assert autofact.read(p, weight="w").weights.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match=r"row 3 of r.parquet: timestamp 'never' \(column 'date'\)"):
        autofact.read(p, timestamp="date")
    df.loc[1, "user"] = None
    df.to_parquet(p)
    with pytest.raises(ValueError, match=r"row 2 of r.parquet: the user id is missing"):
        autofact.read(p)


# ---------------------------------------------------------------------------------- frames
def test_frame_ids_are_kept_as_given():
    # issue 8, item 9: the same rules in Ratings.from_frame
    df = pd.DataFrame({"user": ["007", "7", "NA", "null"], "item": [1, 1, 1, 1],
                       "rating": [1.0, 2.0, 3.0, 4.0]})
    r = Ratings.from_frame(df)
    assert _ids(r) == ["007", "7", "NA", "null"]
    big = pd.DataFrame({"user": np.array([2**63, 2**63 + 1], dtype=np.uint64), "item": [1, 1],
                        "rating": [1.0, 2.0]})
    assert Ratings.from_frame(big).user_ids.tolist() == [2**63, 2**63 + 1]


@pytest.mark.parametrize(
    "column,match",
    [
        ([1, None, 3], r"row 1: the user id is missing \(nan\); every rating needs one"),
        (["a", "", "c"], r"row 1: the user id is missing \(''\)"),
        ([1.0, np.nan, 2.0], r"row 1: the user id is missing \(nan\)"),
    ],
)
def test_frame_missing_ids_name_the_row(column, match):
    df = pd.DataFrame({"user": column, "item": [1, 2, 3], "rating": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match=match):
        Ratings.from_frame(df)


def test_frame_timestamps_of_every_kind():
    base = {"user": [1, 2], "item": [1, 1], "rating": [1.0, 2.0]}
    for t, want in [
        (pd.to_datetime(["2020-01-01", "2020-01-02"]), [1577836800, 1577923200]),
        (pd.to_datetime(["2020-01-01T01:00", "2020-01-02T01:00"]).tz_localize("Europe/Paris"),
         [1577836800, 1577923200]),
        (["2020-01-01", "2020-01-02"], [1577836800, 1577923200]),
        ([10.7, 20.0], [10, 20]),
        (["10", "20"], [10, 20]),
        (np.array([10, 20], dtype=np.uint32), [10, 20]),
    ]:
        r = Ratings.from_frame(pd.DataFrame({**base, "t": t}), timestamp="t")
        assert r.timestamps.tolist() == want, t


@pytest.mark.parametrize(
    "column,match",
    [
        (["2020-01-01", "not a day"], r"row 1: timestamp 'not a day' \(column 't'\) is not a date"),
        ([1.0, np.nan], r"row 1: timestamp nan \(column 't'\) is missing"),
        ([True, False], r"row 0: timestamp True \(column 't'\) is not a time"),
        (np.array([1, 2**63], dtype=np.uint64), r"row 1: timestamp 9223372036854775808 .* out of range"),
    ],
)
def test_frame_bad_timestamps_name_the_row(column, match):
    df = pd.DataFrame({"user": [1, 2], "item": [1, 1], "rating": [1.0, 2.0], "t": column})
    with pytest.raises(ValueError, match=match):
        Ratings.from_frame(df, timestamp="t")


@pytest.mark.parametrize(
    "column,match",
    [
        ([1.0, -1.0], r"row 1: weight -1.0 \(column 'w'\) is negative"),
        ([1.0, np.nan], r"row 1: weight nan \(column 'w'\) is missing"),
        (["1", "heavy"], r"row 1: weight 'heavy' \(column 'w'\) is not a number"),
        ([True, False], r"weights \(column 'w'\) must be numbers, got booleans"),
    ],
)
def test_frame_bad_weights_name_the_row(column, match):
    df = pd.DataFrame({"user": [1, 2], "item": [1, 1], "rating": [1.0, 2.0], "w": column})
    with pytest.raises(ValueError, match=match):
        Ratings.from_frame(df, weight="w")


def test_file_and_frame_agree(tmp_path):
    df = pd.DataFrame({"user": ["007", "7", "x"], "item": [3, 1, 2], "rating": [5.0, 4.0, 3.0],
                       "wt": [1.0, 0.5, 2.0], "t": [30, 10, 20]})
    p = tmp_path / "r.csv"
    df.to_csv(p, index=False)
    from_file = autofact.read(p, weight="wt", timestamp="t")
    from_frame = Ratings.from_frame(df, weight="wt", timestamp="t")
    assert from_file.equals(from_frame)


# ---------------------------------------------------------------------------------- hints
def _provoked_messages(tmp_path: Path) -> list[str]:
    cases = [
        ("1,2\n3,4\n", {}),
        ("1,1,5\n1,1,4\n", {}),
        ("user,item,rating,timestamp\n1,2,5,soon\n", {}),
        ("rating,user,thing\n5,1,2\n", {}),
        ("user,item,rating\n1,2,5\n", {"weight": "rating"}),
        ("caf\xe9,1,5\n".encode("latin-1"), {}),
        ("1,2,5\n", {"encoding": "klingon"}),
    ]
    messages = []
    for k, (content, kw) in enumerate(cases):
        with pytest.raises(ValueError) as info:
            autofact.read(_write(tmp_path, content, f"h{k}.csv"), **kw)
        messages.append(str(info.value))
    return messages


def test_every_pass_hint_names_a_keyword_of_read(tmp_path):
    # issue 8, item 13: an error may only suggest what the caller can pass
    accepted = set(inspect.signature(autofact.read).parameters)
    hints = [h for m in _provoked_messages(tmp_path) for h in re.findall(r"\bpass (\w+)=", m)]
    assert {"sep", "duplicates", "timestamp", "item", "weight", "encoding"} <= set(hints)
    assert set(hints) <= accepted, set(hints) - accepted
    assert {"sep", "header", "user", "item", "rating", "weight", "timestamp", "duplicates",
            "encoding", "format"} <= accepted


def _write_parts(folder, rows, n_parts, header="user,item,rating"):
    folder.mkdir()
    for k in range(n_parts):
        (folder / f"part-{k:05d}.csv").write_text(header + "\n" + "\n".join(rows[k::n_parts]) + "\n")
    (folder / "_SUCCESS").write_text("")  # a marker, not a part
    (folder / ".part-00000.csv.crc").write_text("x")  # hidden, not a part


def test_a_folder_of_part_files_reads_as_their_concatenation(tmp_path):
    # issue 11, item 1: read(DIR) in one process; the id rule spans the parts ('007' in one
    # part makes every user id a string, as in one file)
    rows = [f"{u},{i},{(u * i) % 5 + 1}" for u in range(1, 31) for i in range(0, 20, 3)]
    rows[100] = "007," + rows[100].split(",", 1)[1]
    (tmp_path / "all.csv").write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    _write_parts(tmp_path / "parts", rows, 3)
    one, parts = autofact.read(tmp_path / "all.csv"), autofact.read(tmp_path / "parts")
    assert parts.user_ids.dtype == object and "007" in list(parts.user_ids)
    assert parts.item_ids.dtype.kind == "i"
    for name in ("users", "items", "values"):
        np.testing.assert_array_equal(getattr(parts, name), getattr(one, name))
    assert list(parts.user_ids) == list(one.user_ids)
    assert list(parts.item_ids) == list(one.item_ids)


def test_a_folder_of_parquet_parts_reads(tmp_path):
    pytest.importorskip("pyarrow")
    import pandas as pd

    (tmp_path / "p").mkdir()
    frame = pd.DataFrame({"user": [1, 2, 3, 4], "item": [10, 10, 20, 20],
                          "rating": [1.0, 2.0, 3.0, 4.0]})
    frame.iloc[:2].to_parquet(tmp_path / "p" / "part-0.parquet")
    frame.iloc[2:].to_parquet(tmp_path / "p" / "part-1.parquet")
    r = autofact.read(tmp_path / "p")
    assert len(r) == 4 and list(r.user_ids) == [1, 2, 3, 4] and list(r.item_ids) == [10, 20]


def test_folder_errors_name_the_folder_or_the_part(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="'.*empty' holds no part files"):
        autofact.read(tmp_path / "empty")
    _write_parts(tmp_path / "dup", ["1,1,3", "1,1,4"], 2)
    with pytest.raises(ValueError, match="duplicate"):
        autofact.read(tmp_path / "dup")
    assert autofact.read(tmp_path / "dup", duplicates="last").values.tolist() == [4.0]
    with pytest.raises(ValueError, match="duplicates='mean' is not available for a folder"):
        autofact.read(tmp_path / "dup", duplicates="mean")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.csv").write_text("user,item,rating\n1,1,3\n")
    (tmp_path / "bad" / "b.csv").write_text("user,item,rating\n2,1,x\n")
    with pytest.raises(ValueError, match="b.csv.*rating 'x' is not a number"):
        autofact.read(tmp_path / "bad")
    (tmp_path / "ts").mkdir()
    (tmp_path / "ts" / "a.csv").write_text("user,item,rating,timestamp\n1,1,3,100\n")
    (tmp_path / "ts" / "b.csv").write_text("user,item,rating\n2,1,4\n")
    with pytest.raises(ValueError, match="some part files have timestamps.*'b.csv' lacks"):
        autofact.read(tmp_path / "ts")


def test_cli_fits_a_folder_of_parts(tmp_path, capsys):
    from autofact.cli import main

    rows = [f"u{u},i{i},{(u * i) % 5 + 1}" for u in range(20) for i in range(0, 12, 2)]
    _write_parts(tmp_path / "parts", rows, 2)
    out = tmp_path / "m.npz"
    assert main(["fit", str(tmp_path / "parts"), "--out", str(out), "--epochs", "2",
                 "--rank", "2", "--quiet"]) == 0
    assert autofact.load(out).user_ids_.size == 20


# ------------------------------------------------------------------ the order of the ratings
@pytest.mark.parametrize("bound", [1, 7, 2**16, 2**16 + 1, 6040 * 3706, 2**32, 2**32 + 1])
def test_stable_order_is_numpys_stable_argsort(bound):
    # issue 10 (cold start): Ratings sorts its (user, item) keys by two 16-bit radix passes;
    # the very order of np.argsort(kind="stable"), equal keys in their input order
    from autofact.data import stable_order

    rng = np.random.default_rng(bound % 1000)
    for n in (0, 1, 2, 1000, 100_000):
        key = rng.integers(0, bound, n, dtype=np.int64)
        key[: n // 3] = key[n // 3 : 2 * (n // 3)]  # many equal keys
        np.testing.assert_array_equal(stable_order(key, bound), np.argsort(key, kind="stable"))


def test_ratings_sorted_by_the_radix_passes_keep_duplicates_in_file_order():
    # issue 10: the same Ratings as sorting by lexsort: user-major, items, then input order
    rng = np.random.default_rng(3)
    u = rng.integers(0, 60_000, 50_000)  # keys below 60,000 x 70,000 < 2**32: two passes
    i = rng.integers(0, 70_000, 50_000)
    u[:100], i[:100] = u[100:200], i[100:200]  # 100 pairs rated twice
    v = np.arange(50_000, dtype=np.float64)
    r = Ratings(u, i, v, shape=(60_000, 70_000), duplicates="last")
    order = np.lexsort((i, u))
    keep = np.r_[(u[order][1:] != u[order][:-1]) | (i[order][1:] != i[order][:-1]), True]
    np.testing.assert_array_equal(r.values, v[order][keep])
    np.testing.assert_array_equal(r.users, u[order][keep])
    np.testing.assert_array_equal(r.items, i[order][keep])


# ------------------------------------------------------------------------------ separators
@pytest.mark.parametrize(("text", "name", "said"), [
    ("1 2 3 4 5\n6 7 8 9 10\n", "r.txt", "whitespace"),
    ("1\t2\t3\t4\t5\n6\t7\t8\t9\t10\n", "r.tsv", "tabs"),
    ("1;2;3;4;5\n6;7;8;9;10\n", "r.txt", "';'"),
])
def test_the_separator_is_named_in_words(tmp_path, text, name, said):
    # trust: a whitespace-separated file with 5 fields was "separated by '\\s+'"
    p = _write(tmp_path, text, name)
    with pytest.raises(ValueError, match=re.escape(
            f"line 1 of {name}: expected 3 or 4 fields (user, item, rating[, timestamp]) "
            f"separated by {said}, got 5; pass sep= if the separator is another")):
        autofact.read(p)
