"""``autofact.read``: ratings files (CSV, TSV, Parquet, MovieLens) into :class:`Ratings`."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ._optional import optional_import
from .data import Duplicates, Ratings

__all__ = ["read"]

_USER_COLS = ("user", "userid", "user_id", "userId", "uid", "u")
_ITEM_COLS = ("item", "itemid", "item_id", "itemId", "movieid", "movie_id", "movieId", "iid", "i")
_RATING_COLS = ("rating", "ratings", "score", "value", "r")
_TS_COLS = ("timestamp", "time", "ts", "date")
_WEIGHT_COLS = ("weight", "w")


def _sniff(first: str) -> str:
    if "::" in first:
        return "::"
    for sep in ("\t", ",", ";", "|"):
        if sep in first:
            return sep
    return r"\s+"


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _pick(columns: list[str], wanted: tuple[str, ...], given: str | None, arg: str) -> str | None:
    if given is not None:
        if given not in columns:
            raise ValueError(f"{arg}={given!r} is not a column of the file; its columns are {columns!r}")
        return given
    lower = {c.lower(): c for c in columns}
    for w in wanted:
        if w.lower() in lower:
            return lower[w.lower()]
    return None


def read(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    sep: str | None = None,
    header: bool | None = None,
    user: str | None = None,
    item: str | None = None,
    rating: str | None = None,
    duplicates: Duplicates = "error",
) -> Ratings:
    """Read a ratings file into :class:`Ratings`.

    Detected from the content (each overridable): Parquet (by its magic bytes); MovieLens
    ``ratings.dat`` (``::``); MovieLens ``u.data`` (tab, no header); ``ratings.csv`` (header
    ``userId,movieId,rating,timestamp``); any CSV/TSV/space-separated file with 3 or 4 fields per
    line (user, item, rating[, timestamp]) with or without a header. With a header, the user,
    item and rating columns are found by name (``user``/``userId``/…, ``item``/``movieId``/…,
    ``rating``/…) or named by ``user=``, ``item=``, ``rating=``.

    >>> ratings = autofact.read("ml-100k/u.data")
    """
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise ValueError(f"path {str(path)!r} does not exist")
    if p.is_dir():
        raise ValueError(f"path {str(path)!r} is a directory; give the ratings file itself")
    with open(p, "rb") as fh:
        head = fh.read(4096)
    if format is None:
        format = "parquet" if head[:4] == b"PAR1" else "text"
    if format not in ("parquet", "text", "csv", "tsv"):
        raise ValueError(f"format must be 'parquet', 'csv', 'tsv' or 'text', got {format!r}")
    if format == "parquet":
        optional_import("pyarrow", extra="parquet", purpose="reading Parquet")
        try:
            df = pd.read_parquet(p)
        except Exception as exc:
            raise ValueError(f"{p.name}: cannot read as Parquet: {exc}") from exc
        return _from_columns(df, p.name, user, item, rating, duplicates)

    if b"\0" in head:
        raise ValueError(f"{p.name}: this looks like a binary file, not a ratings text file")
    text_head = head.decode("utf-8", errors="replace")
    lines = [ln for ln in text_head.splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{p.name}: the file is empty; expected lines of user, item, rating")
    first = lines[0]
    if sep is None:
        sep = {"csv": ",", "tsv": "\t"}.get(format) or _sniff(first)
    fields = re.split(sep, first.strip()) if sep == r"\s+" else first.strip().split(sep)
    if header is None:
        # ids may be strings: call it a header only when the rating field is not a number
        header = len(fields) >= 3 and not _is_number(fields[2].strip().strip('"'))
    engine = "python" if len(sep) > 1 and sep != r"\s+" else "c"
    try:
        df = pd.read_csv(
            p,
            sep=sep,
            header=0 if header else None,
            engine=engine,
            skip_blank_lines=True,
            dtype=str if header else None,
            comment=None,
            on_bad_lines="error",
        )
    except pd.errors.ParserError as exc:
        m = re.search(r"line (\d+), saw (\d+)", str(exc))
        if m:
            raise ValueError(
                f"line {m.group(1)} of {p.name}: expected {len(fields)} fields, got {m.group(2)}"
            ) from None
        raise ValueError(f"{p.name}: cannot parse: {exc}") from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{p.name}: the file is empty; expected lines of user, item, rating") from None
    if header:
        return _from_columns(df, p.name, user, item, rating, duplicates, header_lines=1)
    ncol = df.shape[1]
    if ncol < 3 or ncol > 4:
        raise ValueError(
            f"line 1 of {p.name}: expected 3 or 4 fields (user, item, rating[, timestamp]) "
            f"separated by {sep!r}, got {ncol}; pass sep= if the separator is another"
        )
    names = ["user", "item", "rating", "timestamp"][:ncol]
    df.columns = names
    return _from_columns(df, p.name, "user", "item", "rating", duplicates, header_lines=0)


def _from_columns(
    df: Any,
    name: str,
    user: str | None,
    item: str | None,
    rating: str | None,
    duplicates: Duplicates,
    header_lines: int = 0,
) -> Ratings:
    import pandas as pd

    cols = [str(c) for c in df.columns]
    df.columns = cols
    ucol = _pick(cols, _USER_COLS, user, "user")
    icol = _pick(cols, _ITEM_COLS, item, "item")
    rcol = _pick(cols, _RATING_COLS, rating, "rating")
    if ucol is None or icol is None or rcol is None:
        if len(cols) >= 3 and user is None and item is None and rating is None:
            ucol, icol, rcol = cols[0], cols[1], cols[2]
        else:
            raise ValueError(
                f"{name}: cannot tell the user, item and rating columns among {cols!r}; "
                "pass user=, item= and rating="
            )
    tcol = _pick(cols, _TS_COLS, None, "timestamp")
    wcol = _pick(cols, _WEIGHT_COLS, None, "weight")
    if len(df) == 0:
        raise ValueError(f"{name}: no ratings in the file")
    # every line must have a user, an item and a numeric rating
    for col in (ucol, icol, rcol):
        missing = df[col].isna().to_numpy()
        if missing.any():
            k = int(np.flatnonzero(missing)[0])
            raise ValueError(
                f"line {k + 1 + header_lines} of {name}: expected at least 3 fields "
                "(user, item, rating), got fewer"
            )
    values = pd.to_numeric(df[rcol], errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"line {k + 1 + header_lines} of {name}: rating {df[rcol].iloc[k]!r} is not a number"
        )
    vals = values.to_numpy(dtype=np.float64)
    nonfinite = ~np.isfinite(vals)
    if nonfinite.any():
        k = int(np.flatnonzero(nonfinite)[0])
        raise ValueError(f"line {k + 1 + header_lines} of {name}: rating {float(vals[k])!r} is not finite")
    frame = pd.DataFrame({"user": _ids(df[ucol]), "item": _ids(df[icol]), "rating": vals})
    ts = None
    if tcol is not None and tcol not in (ucol, icol, rcol):
        t = pd.to_numeric(df[tcol], errors="coerce")
        if not t.isna().any():
            frame["timestamp"] = t.to_numpy(dtype=np.int64)
            ts = "timestamp"
    weight = None
    if wcol is not None and wcol not in (ucol, icol, rcol):
        frame["weight"] = pd.to_numeric(df[wcol], errors="raise").to_numpy(dtype=np.float64)
        weight = "weight"
    return Ratings.from_frame(
        frame, user="user", item="item", rating="rating", timestamp=ts, weight=weight,
        duplicates=duplicates,
    )


def _ids(col: Any) -> Any:
    """Integer ids stay integers (so ``196`` and ``"196"`` agree); other ids stay strings."""
    import pandas as pd

    if col.dtype.kind in "iu":
        return col
    num = pd.to_numeric(col, errors="coerce")
    if not num.isna().any() and np.all(np.mod(num.to_numpy(dtype=np.float64), 1) == 0):
        return num.astype(np.int64)
    return col.astype(str)
