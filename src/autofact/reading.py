"""``autofact.read``: ratings files (CSV, TSV, Parquet, MovieLens) into :class:`Ratings`.

The rules, in one place (each overridable by a keyword of :func:`read`):

- **Layout.** Parquet is told by its magic bytes. A text file's separator is sniffed from its
  first line (``::``, tab, ``,``, ``;``, ``|``, else whitespace; ``sep=``); it has a header line
  when the first line's third field is not a number (``header=``). With a header, the user, item
  and rating columns are found by name (``user``/``userId``/…, ``item``/``movieId``/…,
  ``rating``/…; ``user=``, ``item=``, ``rating=``), else they are the first three. Without one, a
  line holds ``user, item, rating[, timestamp]`` (MovieLens ``u.data``, ``ratings.dat``).
- **Ids** are read as the text written in the file, never as missing (``NA`` and ``null`` are
  ids). A column of ids becomes int64 only when *every* id is a canonical integer (``-`` allowed;
  no ``+``, spaces or leading zeros; within int64); otherwise all its ids stay strings exactly as
  written, so ``007`` and ``7`` are two users and nothing overflows. An empty id is an error.
  Parquet columns keep their stored type.
- **Weights and timestamps** are used only when named: ``weight="w"``; ``timestamp="date"``.
  The one default is MovieLens's: the 4th field of a headerless line, or a column called
  ``timestamp``, is the timestamp; ``timestamp=False`` reads without one. Timestamps are seconds
  since 1970 or dates (naive ones taken as UTC), kept as whole seconds.
- **Two readers, one result.** A plain text file (UTF-8, a one-character separator, no quotes,
  no weight column) is parsed by pyarrow's C++ reader when pyarrow is installed (no pandas: a
  fast cold start, issue 10); whatever it does not take as plain (a quote, an empty field, a row
  of another length, a rating that is not a finite number...) sends the file to the general
  reader (pandas), which reads or reports it. Both give the same Ratings.
- **Errors** name the file, the line and the value: a rating that is not a finite number, a
  weight that is not a finite number >= 0, a timestamp that cannot be read, bytes that are not
  valid in ``encoding=`` (default ``"utf-8"``), duplicate (user, item) pairs
  (``duplicates="mean"``/``"last"`` combine them).
"""

from __future__ import annotations

import codecs
import csv
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._memory import release_freed_memory
from ._optional import optional_import
from .data import Duplicates, Ratings, factorize_ids, parse_timestamps, parse_weights, stable_order

__all__ = ["read", "read_in_background", "read_parts", "part_files"]

_USER_COLS = ("user", "userid", "user_id", "userId", "uid", "u")
_ITEM_COLS = ("item", "itemid", "item_id", "itemId", "movieid", "movie_id", "movieId", "iid", "i")
_RATING_COLS = ("rating", "ratings", "score", "value", "r")
_HEADERLESS = ("user", "item", "rating", "timestamp")
_NO_TIMESTAMP_FIX = "or pass timestamp=False to read the file without timestamps"


def read(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    sep: str | None = None,
    header: bool | None = None,
    user: str | None = None,
    item: str | None = None,
    rating: str | None = None,
    weight: str | None = None,
    timestamp: str | Literal[False] | None = None,
    duplicates: Duplicates = "error",
    encoding: str = "utf-8",
) -> Ratings:
    """Read a ratings file, or a folder of part files, into :class:`Ratings`.

    A folder (issue 11) is read part by part, its files in name order (names starting with
    ``.`` or ``_``, such as Spark's ``_SUCCESS``, are skipped), each by the rules below with
    the same keywords; the parts must agree on their columns. The id rule spans the parts: ids
    stay ints only when every part's are, and a pair rated in two parts is a duplicate.

    Detected from the content, each overridable: Parquet (``format="parquet"``); the separator
    (``sep=``); a header line (``header=``); the user, item and rating columns by name
    (``user=``, ``item=``, ``rating=``). MovieLens ``u.data``, ``ratings.dat`` and
    ``ratings.csv`` read as they are.

    Ids stay exactly as written: a column is int64 only when every id is a canonical integer
    (``7``, ``-3``; not ``007``, ``+7`` or one past int64), else every id is a string, so ``007``
    and ``7`` are two users. ``NA``, ``null`` or ``nan`` are ids like any other.

    Weights are used only when named (``weight="w"``); timestamps when named
    (``timestamp="date"``), or by MovieLens's layout: the 4th field of a headerless file or a
    column called ``timestamp`` (``timestamp=False`` ignores it). A value of a used column that
    cannot be read, an empty id, or bytes not valid in ``encoding`` raise ``ValueError`` naming
    the file and the line. Duplicate (user, item) pairs are an error unless
    ``duplicates="mean"`` or ``"last"``.

    A plain text file (UTF-8, no quotes, no weight column: MovieLens ``u.data`` and
    ``ratings.csv``) is parsed by pyarrow when it is installed, without pandas (issue 10: a cold
    start); a file with anything it does not take as plain goes to the general reader, so the
    Ratings, and every error, are the same.

    >>> ratings = autofact.read("ml-100k/u.data")
    >>> ratings = autofact.read("log.csv", user="customer", item="sku", rating="clicks",
    ...                         timestamp="day", encoding="latin-1")
    >>> ratings = autofact.read("ratings/")        # ratings/part-00000.parquet, ...
    """
    return _prepare(path, format=format, sep=sep, header=header, user=user, item=item,
                    rating=rating, weight=weight, timestamp=timestamp, duplicates=duplicates,
                    encoding=encoding)()


def _prepare(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    sep: str | None = None,
    header: bool | None = None,
    user: str | None = None,
    item: str | None = None,
    rating: str | None = None,
    weight: str | None = None,
    timestamp: str | Literal[False] | None = None,
    duplicates: Duplicates = "error",
    encoding: str = "utf-8",
) -> _Job:
    """:func:`read`'s checks of its arguments and of the file's layout (raised here), and the
    job that reads the rest."""
    if Path(path).is_dir():
        folder = Path(path)
        return _Job(lambda: _read_parts(
            folder, dict(format=format, sep=sep, header=header, user=user, item=item,
                         rating=rating, weight=weight, timestamp=timestamp,
                         encoding=encoding), duplicates))
    p = _existing_file(path)
    for arg, given in (("user", user), ("item", item), ("rating", rating), ("weight", weight)):
        if given is not None and not isinstance(given, str):
            raise TypeError(f"{arg} must be a column name (str) or None, got {given!r}")
    if not (timestamp is None or timestamp is False or isinstance(timestamp, str)):
        raise TypeError(f"timestamp must be a column name (str), False or None, got {timestamp!r}")
    names = _Names(user, item, rating, weight, timestamp)
    fmt = _format(p, format)
    if fmt == "parquet":
        return _Job(lambda: _to_ratings(_read_parquet(p, names), duplicates))
    sep, header = _text_layout(p, sep=sep or {"csv": ",", "tsv": "\t"}.get(fmt), header=header,
                               encoding=encoding)
    return _Job(
        lambda: _to_ratings(_read_text(p, names, sep=sep, header=header, encoding=encoding),
                            duplicates),
        quick=_plain_reader(p, names, sep, header, encoding, duplicates),
    )


def read_in_background(path: str | os.PathLike[str], **kwargs: Any) -> Callable[[], Ratings]:
    """Start :func:`read` (same arguments) and return the function that waits for its
    :class:`Ratings` (or raises its error).

    Issue 10 (cold start): a plain file (see :func:`read`) is parsed on a background thread,
    by pyarrow's C++ reader, which releases the GIL, while the caller goes on (``autofact fit``
    imports torch meanwhile). What may import a module or raise a usage error (the arguments,
    the file's layout, its columns) runs here first, in the caller's thread; a file that is
    not plain, or that the fast path hands over, is read when the function is called.

    >>> wait = read_in_background("u.data")
    >>> import torch                                 # meanwhile, u.data is parsed
    >>> ratings = wait()
    """
    job = _prepare(path, **kwargs)
    if job.quick is None:
        return job
    got: dict[str, Any] = {}

    def parse() -> None:
        try:
            # one thread: the caller keeps the other core (torch's import, for the CLI)
            got["ratings"] = job.quick(False) if job.quick is not None else None
        except BaseException as exc:  # raised to the caller by wait()
            got["error"] = exc

    thread = threading.Thread(target=parse, name="autofact-read", daemon=True)
    thread.start()

    def wait() -> Ratings:
        thread.join()
        if "error" in got:
            raise got.pop("error")
        ratings = got.pop("ratings", None)
        return ratings if ratings is not None else job.slow()

    return wait


@dataclass
class _Job:
    """How one file is read: ``quick`` (the fast path: None when it does not apply, or when it
    returns None: it met something only ``slow`` reads or reports) runs first; it imports
    nothing and warns of nothing, so that it may run on another thread."""

    slow: Callable[[], Ratings]
    quick: Callable[[bool], Ratings | None] | None = None

    def __call__(self) -> Ratings:
        ratings = self.quick(True) if self.quick is not None else None
        return ratings if ratings is not None else self.slow()


def part_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The part files of a folder of ratings, in name order (hidden files, ``_``-prefixed
    markers such as ``_SUCCESS`` and sub-folders left out)."""
    p = Path(folder)
    parts = sorted(f for f in p.iterdir()
                   if f.is_file() and not f.name.startswith((".", "_")))
    if not parts:
        raise ValueError(
            f"folder {str(folder)!r} holds no part files (CSV, TSV or Parquet); give a folder of "
            "ratings files or a file"
        )
    return parts


def read_parts(
    files: Sequence[str | os.PathLike[str]],
    *,
    keep_users: Callable[[np.ndarray], np.ndarray] | None = None,
    duplicates: Duplicates = "error",
    dtype: Any = None,
    **kwargs: Any,
) -> Ratings:
    """Part files read one by one by :func:`read` (its keywords) and joined into one
    :class:`Ratings`, by the rules of a folder: the parts agree on their columns, the id rule
    spans them, and a pair rated in two parts is a duplicate.

    ``keep_users`` (issue 11): given distinct user ids (sorted: a part's, or those of a batch
    of a Parquet part's rows), a boolean mask of the users whose ratings are kept; each part
    is filtered as it is read, so memory holds what was kept and one part (one batch of rows
    of a Parquet part: :func:`autofact.distributed.read_local` keeps its own users). A pair
    rated twice by a user not kept is not looked for in Parquet parts (the process that keeps
    the user reports it).

    ``dtype`` (issue 11): ``"float32"`` keeps the values in 4 bytes instead of 8 (what a
    float32 fit uses: it then shares them rather than copying them); None or ``"float64"``: 8.

    >>> ratings = read_parts(["ratings/part-00000.parquet", "ratings/part-00003.parquet"])
    """
    paths = [Path(f) for f in files]
    if not paths:
        raise ValueError("files is empty: give at least one part file")
    return _read_parts(paths[0].parent, kwargs, duplicates, paths, keep_users,
                       values_dtype(dtype))


def values_dtype(dtype: Any) -> np.dtype[Any]:
    """The dtype of the values of ratings read with ``dtype=`` (None: float64)."""
    if dtype is None:
        return np.dtype(np.float64)
    try:
        got = np.dtype(dtype)
    except TypeError:
        got = np.dtype(np.int8)  # refused below (np.dtype compares None equal to float64)
    if got.kind != "f" or got.itemsize not in (4, 8):
        raise ValueError(
            f"dtype must be 'float32' or 'float64' (the ratings' values), got {dtype!r}; "
            "'float32' halves their memory and is what a float32 fit uses"
        )
    return got


def _read_parts(folder: Path, kwargs: dict[str, Any], duplicates: Duplicates,
                files: list[Path] | None = None,
                keep_users: Callable[[np.ndarray], np.ndarray] | None = None,
                dtype: np.dtype[Any] | None = None) -> Ratings:
    """Every part file of ``folder`` (or ``files`` of it) read by :func:`read` and joined into
    one :class:`Ratings` (ids by the one rule over all the parts; see :func:`read`).

    Parquet parts with int64 ids, a numeric rating, int timestamps or none and no weight
    column are streamed (:func:`_stream_parquet`: issue 11, no part is ever held whole); any other
    folder, or one in which the stream meets anything to report, is read part by part below,
    which gives the same Ratings and raises the error."""
    if duplicates == "mean":  # a mean of each part's means would weigh the parts wrongly
        raise ValueError(
            f"duplicates='mean' is not available for a folder of part files ({str(folder)!r}); "
            "pass duplicates='last' (the last part's rating wins) or combine them beforehand"
        )
    paths = part_files(folder) if files is None else files
    streamed = _stream_parquet(paths, kwargs, duplicates, keep_users, dtype)
    if streamed is not None:
        return streamed
    parts = []
    for f in paths:
        r = read(f, duplicates=duplicates, **kwargs)
        if keep_users is not None:
            kept = np.asarray(keep_users(r.user_ids), dtype=bool)[r.users]
            if not kept.any():
                continue
            r = r.subset(kept)
        if dtype is not None and r.values.dtype != dtype:  # held until joined: hold it narrow
            r.values = r.values.astype(dtype)
        parts.append((f, r))
        release_freed_memory()  # what reading the part freed, before the next part (issue 11)
    if not parts:
        raise ValueError(
            f"no ratings were kept from the {len(files or [])} part files of {str(folder)!r}"
        )
    for what in ("weights", "timestamps"):
        have = [getattr(r, what) is not None for _, r in parts]
        if any(have) and not all(have):
            odd = parts[have.index(not have[0])][0].name if have[0] else parts[0][0].name
            raise ValueError(
                f"folder {str(folder)!r}: some part files have {what} and some do not (e.g. "
                f"{odd!r} {'lacks' if have[0] else 'has'} them); give every part the same "
                "columns" + (", or pass timestamp=False" if what == "timestamps" else "")
            )

    held: list[Ratings | None] = [r for _, r in parts]
    parts.clear()
    users, user_ids = _merged_ids(held, "user")
    items, item_ids = _merged_ids(held, "item")
    out = _join(held, users, items, user_ids, item_ids, duplicates, dtype)
    release_freed_memory()  # the parts' and the Parquet reader's freed memory (issue 11)
    return out


def _merged_ids(parts: list[Ratings | None], which: str) -> tuple[list[np.ndarray], np.ndarray]:
    """For each part, the map from its codes to codes into the sorted union of the parts' rated
    ids, and that union (issue 11: merged from each part's distinct ids, so no sort over all the
    ratings). The maps are increasing: a part sorted by its codes stays sorted by the new ones."""
    maps, rated = [], []
    for r in parts:
        assert r is not None
        codes, full = getattr(r, f"{which}s"), np.asarray(getattr(r, f"{which}_ids"))
        present = np.flatnonzero(np.bincount(codes, minlength=len(full)))
        maps.append(full[present])
        rated.append(present)
    text = not all(m.dtype.kind in "iu" for m in maps)
    if text:  # some part has ids that are not canonical ints: every id stays text, as written
        maps = [np.asarray([str(x) for x in m] if m.dtype.kind in "iu" else m, dtype=object
                           ).astype(str) for m in maps]
    uniq = maps[0]
    for m in maps[1:]:
        uniq = np.union1d(uniq, m)
    luts = []
    for m, present, size in zip(maps, rated, (len(getattr(r, f"{which}_ids")) for r in parts),
                                strict=True):
        lut = np.zeros(size, dtype=np.int32)
        lut[present] = np.searchsorted(uniq, m)
        luts.append(lut)
    return luts, np.asarray(uniq.tolist(), dtype=object) if text else uniq


def _join(parts: list[Ratings | None], user_luts: list[np.ndarray],
          item_luts: list[np.ndarray], user_ids: np.ndarray, item_ids: np.ndarray,
          duplicates: Duplicates, dtype: np.dtype[Any] | None = None) -> Ratings:
    """The parts as one :class:`Ratings` sorted by (user, item), with no sort over all the
    ratings (issue 11: memory). Each part is sorted by user and item already and its maps are
    increasing, so its ratings go straight to their places (a user's from the ratings per user
    over all the parts), one column at a time: each part's column is dropped as soon as it is
    placed, so the memory holds the parts' columns not yet placed and the joined ones (at most
    20 bytes a rating beside the 16 of the result, never a sorted copy). The users rated in
    several parts get their ratings sorted by item afterwards (stable: a pair rated in two parts
    keeps the parts' order, for ``duplicates='last'``). ``dtype``: the values' (None: as read)."""
    m = len(user_ids)
    first = parts[0]
    assert first is not None
    names = [what for what in ("values", "weights", "timestamps")
             if getattr(first, what) is not None]
    columns: dict[str, list[np.ndarray | None]] = {
        what: [getattr(r, what) for r in parts]  # type: ignore[union-attr]
        for what in (*names, "items")}
    codes: list[np.ndarray | None] = [r.users for r in parts]  # type: ignore[union-attr]
    sizes = [len(r) for r in parts]  # type: ignore[arg-type]
    del first
    parts.clear()  # the parts' arrays are held by the lists above only: each goes when placed
    # the runs of each part (its users, their ratings, and where the first goes: the ratings
    # of that user in the parts before it), from the users, which then go
    runs: list[tuple[np.ndarray, np.ndarray]] = []
    counts = np.zeros(m, dtype=np.int64)
    sources = np.zeros(m, dtype=np.int32)  # the parts that rated each user
    for k, lut in enumerate(user_luts):
        local = codes[k]
        assert local is not None
        starts = np.flatnonzero(np.r_[True, local[1:] != local[:-1]])
        who = lut[local[starts]]
        lengths = np.diff(np.r_[starts, len(local)])
        runs.append((who, lengths))
        counts[who] += lengths  # a part's users are distinct
        sources[who] += 1
        codes[k] = None
    release_freed_memory()
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    fill = indptr[:-1].copy()
    firsts = []
    for who, lengths in runs:
        firsts.append(fill[who])
        fill[who] += lengths
    del fill

    def places(k: int) -> np.ndarray:
        who, lengths = runs[k]
        starts = np.cumsum(lengths) - lengths
        return np.repeat(firsts[k] - starts, lengths) + np.arange(sizes[k], dtype=np.int64)

    total = int(indptr[-1])
    out: dict[str, np.ndarray] = {}
    for what, held in columns.items():  # values first: the largest goes first
        kind = np.int32 if what == "items" else dtype if what == "values" and dtype is not None \
            else held[0].dtype  # type: ignore[union-attr]
        joined = out[what] = np.empty(total, dtype=kind)
        for k in range(len(held)):
            col = held[k]
            assert col is not None
            joined[places(k)] = item_luts[k][col] if what == "items" else col
            held[k] = None
            del col
            release_freed_memory()  # the heap keeps a freed column of up to 32 MiB otherwise
    items = out.pop("items")
    mixed = np.flatnonzero(sources > 1)  # users rated in several parts: sort their items
    if len(mixed):
        rows = np.repeat(mixed, counts[mixed])
        at = np.repeat(indptr[mixed] - np.r_[0, np.cumsum(counts[mixed])[:-1]],
                       counts[mixed]) + np.arange(len(rows))
        order = at[np.lexsort((items[at], rows))]  # stable: equal pairs in the parts' order
        items[at] = items[order]
        for arr in out.values():
            arr[at] = arr[order]
    users = np.repeat(np.arange(m, dtype=np.int32), counts)
    return Ratings(users, items, out["values"], shape=(m, len(item_ids)), user_ids=user_ids,
                   item_ids=item_ids, weights=out.get("weights"),
                   timestamps=out.get("timestamps"), duplicates=duplicates, _sorted=True)


# ---------------------------------------------------------------------------- Parquet, streamed
#: Rows of a Parquet part converted at a time (issue 11: what a batch costs beside the ratings
#: held, ~100 bytes a row, stays a few MiB), ratings sorted at a time within their users, and
#: the distinct ids of batches (beyond the merged ones) merged at a time (~70 bytes each).
_BATCH_ROWS = 1 << 16
_SORT_STEP = 1 << 18
_MERGE_IDS = 1 << 16


def _stream_parquet(files: list[Path], kwargs: dict[str, Any], duplicates: Duplicates,
                    keep_users: Callable[[np.ndarray], np.ndarray] | None,
                    dtype: np.dtype[Any] | None) -> Ratings | None:
    """The part files as :func:`_read_parts` joins them, read a batch of rows at a time and
    never whole (issue 11, item 3: a process's peak while it reads stays near the 12 bytes a
    rating it then holds), or None where the part-by-part reader must read them: a part that
    is not Parquet, ids that are not int64, a rating that is not a number, timestamps that
    are not ints (or in some parts only), a weight column, or anything that reader reports (a
    missing id, rating or timestamp, a rating that is not finite, a duplicate under
    ``duplicates='error'``, no ratings kept): it then raises its own error, naming the part
    and the row.

    Two passes over each part's batches. The first reads the id columns only: the sorted
    distinct user ids kept (``keep_users`` is asked about each batch's distinct users) with
    their numbers of ratings, and the distinct items they rated: the id maps, as the joined
    parts have them. The second converts each batch straight to int32 codes and values of
    ``dtype`` and places them where they go in the result (the ratings of each user in the
    parts' order, then row order), so that nothing but the result is held; the ratings of each
    user are then sorted by item, a few users at a time, stably (a pair rated twice keeps that
    order: ``duplicates='last'`` keeps the last one)."""
    plan = _parquet_plan(files, kwargs)
    if plan is None:
        return None
    try:
        return _streamed(plan, duplicates, keep_users,
                         np.dtype(np.float64) if dtype is None else dtype)
    finally:
        release_freed_memory()  # the batches' freed memory and pyarrow's pool


def _parquet_plan(files: list[Path], kwargs: dict[str, Any]
                  ) -> list[tuple[Path, _Choice]] | None:
    """Each part and the columns :func:`read` takes from it, when every part is one that
    :func:`_stream_parquet` reads as :func:`read` does (the columns pandas shows, their plain
    numpy types: int64 ids, an int or float rating, int timestamps in every part or in none,
    no weight column, rows); else None. Each part is opened only while it is looked at (a
    folder may hold thousands)."""
    fmt = kwargs.get("format")
    given = [kwargs.get(k) for k in ("user", "item", "rating", "weight")]
    timestamp = kwargs.get("timestamp")
    if fmt not in (None, "parquet") or any(g is not None and not isinstance(g, str)
                                           for g in given) \
            or not (timestamp is None or timestamp is False or isinstance(timestamp, str)):
        return None  # read() refuses these: its error, from the part-by-part reader
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401  (pa.parquet below)
    except ImportError:  # the part-by-part reader names the extra to install
        return None
    names = _Names(given[0], given[1], given[2], given[3], timestamp)
    plan: list[tuple[Path, _Choice]] = []
    for f in files:
        try:
            if _format(f, fmt) != "parquet":
                return None
            with _open_parquet(f) as handle:
                choice = _plain_columns(handle, names, f.name, pa)
                if choice is None or handle.metadata.num_rows == 0:
                    return None
        except (OSError, ValueError, pa.ArrowException):
            return None
        plan.append((f, choice))
    if len({c.timestamp is None for _, c in plan}) > 1:
        return None  # some parts have timestamps, some not: the part-by-part reader says so
    return plan


@contextmanager
def _open_parquet(path: Path) -> Iterator[Any]:
    """A part as a ``pyarrow.parquet.ParquetFile`` read a page at a time (not a row group's
    column chunks at once: a few MiB less), closed after."""
    import pyarrow.parquet as pq

    handle = pq.ParquetFile(path, buffer_size=1 << 16, pre_buffer=False)
    try:
        yield handle
    finally:
        handle.close()


def _plain_columns(handle: Any, names: _Names, name: str, pa: Any) -> _Choice | None:
    """The user, item, rating (and timestamp) columns of a Parquet part, chosen from the
    columns pandas would show (:func:`_read_parquet`), when they read as plain int64 ids, a
    plain numeric rating and int seconds (int64 at most) and there is no weight column; else
    None."""
    schema = handle.schema_arrow
    meta = schema.pandas_metadata or {}
    if any(not isinstance(c, dict) for c in meta.get("index_columns", [])):
        return None  # an index stored as columns: pandas would not show them as columns
    columns = list(schema.names)
    if len(set(columns)) != len(columns):
        return None
    choice = _choose(columns, names, name, headerless=False)  # its ValueError: not streamed
    if choice.weight is not None:
        return None
    stored = {c.get("field_name", c.get("name")): c.get("numpy_type")
              for c in meta.get("columns", []) if isinstance(c, dict)}
    for col, what in ((choice.user, "id"), (choice.item, "id"), (choice.rating, "rating"),
                      (choice.timestamp, "seconds")):
        if col is None:
            continue
        kind = schema.field(col).type
        if not _plain_type(pa, kind, what):
            return None
        if col in stored and stored[col] != np.dtype(kind.to_pandas_dtype()).name:
            return None  # pandas would restore another type (nullable, categorical...)
    return choice


def _plain_type(pa: Any, kind: Any, what: str) -> bool:
    """Whether a Parquet column of Arrow type ``kind`` reads as ``what`` without a check the
    stream does not make: an ``"id"`` is int64, ``"seconds"`` any int within int64, a
    ``"rating"`` any int or a float32/float64."""
    if what == "id":
        return bool(pa.types.is_int64(kind))
    if what == "seconds":
        return bool(pa.types.is_signed_integer(kind)
                    or kind in (pa.uint8(), pa.uint16(), pa.uint32()))
    return bool(pa.types.is_integer(kind) or pa.types.is_float32(kind)
                or pa.types.is_float64(kind))


def _streamed(plan: list[tuple[Path, _Choice]], duplicates: Duplicates,
              keep_users: Callable[[np.ndarray], np.ndarray] | None,
              kind: np.dtype[Any]) -> Ratings | None:
    """:func:`_stream_parquet`'s two passes over the parts."""
    import pandas as pd  # its hash tables: a batch's distinct ids without a sort

    users_seen, items_seen = _Distinct(counted=True), _Distinct(counted=False)
    for c, batch in _batches(plan, rating=False):  # first pass: the ids only
        user_col, item_col = batch.column(c.user), batch.column(c.item)
        if user_col.null_count or item_col.null_count:
            return None  # a missing id: the part-by-part reader names its row
        users, items = user_col.to_numpy(), item_col.to_numpy()
        if keep_users is None:
            users_seen.add_all(users)
            items_seen.add_all(items)
            continue
        where, ids = pd.factorize(users)
        counts = np.bincount(where, minlength=len(ids))
        order = np.argsort(ids)  # keep_users is asked about sorted ids, as of a part's
        kept = np.empty(len(ids), dtype=bool)
        kept[order] = np.asarray(keep_users(ids[order]), dtype=bool)
        users_seen.add(ids[kept], counts[kept])
        items_seen.add(pd.unique(items[kept[where]]))
        del batch, user_col, item_col, users, items, where
    user_ids, counts = users_seen.result()
    item_ids, _ = items_seen.result()
    m, n = len(user_ids), len(item_ids)
    if m == 0:
        return None  # no ratings kept: the part-by-part reader says so (or what it meets first)
    release_freed_memory()
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    del counts
    # the result's columns: np.empty's pages are only taken as they are written
    items_out = np.empty(int(indptr[-1]), dtype=np.int32)
    values_out = np.empty(int(indptr[-1]), dtype=kind)
    timed = plan[0][1].timestamp is not None  # every part, or none (_parquet_plan)
    times_out = np.empty(int(indptr[-1]), dtype=np.int64) if timed else None
    fill = indptr[:-1].copy()  # where each user's next rating goes
    user_code, item_code = _Codes(user_ids), _Codes(item_ids)
    for c, batch in _batches(plan, rating=True):  # second pass: to codes and values, placed
        rating_col = batch.column(c.rating)
        if rating_col.null_count:
            return None  # a missing rating: the part-by-part reader names its row
        users = batch.column(c.user).to_numpy()
        items = batch.column(c.item).to_numpy()
        # float64 first, as the part-by-part reader converts a rating, then ``kind``
        values = np.asarray(rating_col.to_numpy(), dtype=np.float64)
        if not np.isfinite(values).all():
            return None
        columns = [(values, values_out)]
        if times_out is not None:
            assert c.timestamp is not None
            time_col = batch.column(c.timestamp)
            if time_col.null_count:
                return None  # a missing timestamp: the part-by-part reader names its row
            columns.append((np.asarray(time_col.to_numpy(), dtype=np.int64), times_out))
        rows = user_code(users)
        if keep_users is not None:
            mine = rows >= 0
            if not mine.all():
                rows, items = rows[mine], items[mine]
                columns = [(col[mine], out) for col, out in columns]
        if not len(rows):
            continue  # no user of this batch is kept
        cols = item_code(items)
        if rows.min() < 0 or cols.min() < 0:
            return None  # a part changed between the passes: read again, part by part
        _place(rows, fill, [(cols, items_out), *columns])
        del batch, rating_col, users, items, values, rows, cols, columns
    if not np.array_equal(fill, indptr[1:]):
        return None  # a part changed between the passes: read again, part by part
    del fill, user_code, item_code
    release_freed_memory()  # the batches' temporaries, kept on the heap otherwise
    twice = _sort_within_users(indptr, items_out,
                               [values_out] if times_out is None else [values_out, times_out],
                               n)
    release_freed_memory()  # before the checks of Ratings allocate theirs
    if twice and duplicates == "error":
        return None  # the part-by-part reader names the first pair, in the part that has it
    users_out = np.repeat(np.arange(m, dtype=np.int32), np.diff(indptr))
    del indptr
    return Ratings(users_out, items_out, values_out, shape=(m, n), user_ids=user_ids,
                   item_ids=item_ids, timestamps=times_out, duplicates=duplicates,
                   _sorted=True)


def _batches(plan: list[tuple[Path, _Choice]], rating: bool) -> Iterator[tuple[_Choice, Any]]:
    """The parts' record batches of :data:`_BATCH_ROWS` rows, their id columns (and their
    rating column), each part open only while it is read."""
    for path, c in plan:
        with _open_parquet(path) as handle:
            columns = [c.user, c.item]
            if rating:
                columns += [c.rating] if c.timestamp is None else [c.rating, c.timestamp]
            for batch in handle.iter_batches(batch_size=_BATCH_ROWS, columns=columns,
                                             use_threads=False):
                yield c, batch
        release_freed_memory()  # the part's batches: the heap keeps them otherwise


def _place(rows: np.ndarray, fill: np.ndarray,
           columns: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """A batch's ratings (``rows``: their users' codes) written at their users' next places
    ``fill`` (advanced), in the batch's order within each user: each of ``columns`` (the
    batch's column, the result's) in its place."""
    order = stable_order(rows, len(fill))
    rows = rows[order]
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    lengths = np.diff(np.r_[starts, len(rows)])
    at = fill[rows] + (np.arange(len(rows)) - np.repeat(starts, lengths))
    fill[rows[starts]] += lengths
    for col, out in columns:
        out[at] = col[order]


def _sort_within_users(indptr: np.ndarray, items: np.ndarray, others: list[np.ndarray],
                       n_items: int) -> bool:
    """Each user's ratings (``indptr``'s rows) sorted by item in place, stably, ``others``
    (their values, timestamps) alike, the users of about :data:`_SORT_STEP` ratings at a
    time; whether a (user, item) pair is rated twice."""
    m = len(indptr) - 1
    twice = False
    a = 0
    while a < m:
        b = int(np.searchsorted(indptr, indptr[a] + _SORT_STEP, side="right")) - 1
        b = min(max(b, a + 1), m)
        lo, hi = int(indptr[a]), int(indptr[b])
        key = np.repeat(np.arange(b - a, dtype=np.int64) * n_items, np.diff(indptr[a : b + 1]))
        key += items[lo:hi]
        if not bool((key[1:] >= key[:-1]).all()):
            order = stable_order(key, (b - a) * n_items)
            key = key[order]
            for col in (items, *others):
                col[lo:hi] = col[lo:hi][order]
            del order
        twice = twice or bool((key[1:] == key[:-1]).any())
        a = b
    return twice


class _Codes:
    """The codes of int64 ids into ``ids`` (sorted, distinct), -1 for an id not in them: by a
    table over the ids' range where it is at most 4 times their number, else by pandas' hash
    table (a binary search costs 5-10 times more)."""

    def __init__(self, ids: np.ndarray) -> None:
        self.low = int(ids[0])
        span = int(ids[-1]) - self.low + 1
        if span <= 4 * len(ids):
            self.table: np.ndarray | None = np.full(span, -1, dtype=np.int32)
            self.table[ids - self.low] = np.arange(len(ids))
            self.index = None
        else:
            import pandas as pd

            self.table, self.index = None, pd.Index(ids)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        if self.table is None:
            assert self.index is not None
            return np.asarray(self.index.get_indexer(ids), dtype=np.int64)
        at = ids - self.low
        inside = (at >= 0) & (at < len(self.table))
        if inside.all():
            return self.table[at]
        out = np.full(len(ids), -1, dtype=np.int64)
        out[inside] = self.table[at[inside]]
        return out


class _Distinct:
    """The sorted distinct int64 ids of the batches added (and how many ratings each has, when
    ``counted``).

    A batch's every id (:meth:`add_all`) is counted in a table over the ids' range while that
    range is at most twice the ids seen (4 bytes an id of it: no more than the id map); past
    that, and for a batch's distinct ids (:meth:`add`), the ids wait and are merged whenever
    they outnumber the merged ones (each id is then hashed a logarithmic number of times, and
    the waiting ones take at most as much memory)."""

    def __init__(self, counted: bool) -> None:
        self.counted = counted
        self.ids = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.int64)
        self.waiting: list[tuple[np.ndarray, np.ndarray | None]] = []
        self.size = 0
        self.low = 0
        self.table: np.ndarray | None = np.zeros(0, dtype=np.int32)  # None: not dense

    def add_all(self, values: np.ndarray) -> None:
        """Every id of a batch (an id as often as it is rated)."""
        if self.table is not None and len(values):
            low, high = int(values.min()), int(values.max())
            if len(self.table):
                low, high = min(low, self.low), max(high, self.low + len(self.table) - 1)
            span = high - low + 1
            if span > len(self.table) and span > max(
                    1 << 16, 2 * (int(np.count_nonzero(self.table)) + len(values))):
                self._table_to_waiting()
            else:
                if span > len(self.table):
                    grown = np.zeros(span, dtype=np.int32)
                    grown[self.low - low : self.low - low + len(self.table)] = self.table
                    self.table, self.low = grown, low
                self.table += np.bincount(values - self.low, minlength=len(self.table))
                return
        import pandas as pd

        where, ids = pd.factorize(values)
        self.add(ids, np.bincount(where, minlength=len(ids)) if self.counted else None)

    def _table_to_waiting(self) -> None:
        if self.table is not None and len(self.table):
            seen = np.flatnonzero(self.table)
            self.add(seen + self.low, self.table[seen].astype(np.int64))
        self.table = None

    def add(self, ids: np.ndarray, counts: np.ndarray | None = None) -> None:
        self.waiting.append((ids, counts))
        self.size += len(ids)
        if self.size >= max(len(self.ids), _MERGE_IDS):
            self._merge()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self._table_to_waiting()
        self._merge()
        return self.ids, self.counts

    def _merge(self) -> None:
        import pandas as pd  # hashing the ids, then sorting the distinct ones only

        if not self.waiting:
            return
        ids = np.concatenate([self.ids, *(i for i, _ in self.waiting)])
        where, distinct = pd.factorize(ids)
        order = np.argsort(distinct)
        self.ids = distinct[order]
        if self.counted:
            counts = np.concatenate([self.counts, *(c for _, c in self.waiting)])  # type: ignore[misc]
            # float64 sums of counts: exact below 2**53
            self.counts = np.bincount(where, weights=counts, minlength=len(distinct)
                                      ).astype(np.int64)[order]
        self.waiting, self.size = [], 0


# ---------------------------------------------------------------------------------- columns
@dataclass(frozen=True)
class _Names:
    """The columns the caller named (None: find it; timestamp False: none)."""

    user: str | None
    item: str | None
    rating: str | None
    weight: str | None
    timestamp: str | Literal[False] | None


@dataclass(frozen=True)
class _Choice:
    """The columns of the file that are read."""

    user: str
    item: str
    rating: str
    weight: str | None
    timestamp: str | None


@dataclass
class _Table:
    frame: Any  # pandas DataFrame with the file's column names
    choice: _Choice
    name: str  # the file's name
    where: Callable[[int], str]  # "line 17 of ratings.csv"
    text: bool  # ids are the strings of a text file
    explain_gap: Callable[[int, str, str], str] | None = None  # text files: why a field is empty


def _find(columns: list[str], wanted: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in columns}
    for w in wanted:
        if w.lower() in lower:
            return lower[w.lower()]
    return None


def _choose(columns: list[str], names: _Names, name: str, headerless: bool) -> _Choice:
    def named(arg: str, given: str) -> str:
        if given not in columns:
            where = (
                " (it has no header line, so its fields are user, item, rating[, timestamp]; "
                "add a header line to name others)" if headerless else ""
            )
            raise ValueError(
                f"{arg}={given!r} is not a column of {name}; its columns are {columns!r}{where}"
            )
        return given

    found = {
        arg: named(arg, given) if given is not None else _find(columns, wanted)
        for arg, given, wanted in (("user", names.user, _USER_COLS), ("item", names.item, _ITEM_COLS),
                                   ("rating", names.rating, _RATING_COLS))
    }
    if None in found.values():
        if all(v is None for v in found.values()) and len(columns) >= 3:
            found = dict(zip(("user", "item", "rating"), columns[:3], strict=True))
        else:
            lacking = [arg for arg, v in found.items() if v is None]
            raise ValueError(
                f"{name}: cannot tell the {' and '.join(lacking)} column among {columns!r}; "
                + ", ".join(f"pass {arg}=" for arg in lacking)
            )
    weight = None if names.weight is None else named("weight", names.weight)
    if isinstance(names.timestamp, str):
        timestamp: str | None = named("timestamp", names.timestamp)
    elif names.timestamp is None:  # MovieLens: u.data's 4th field, ratings.csv's "timestamp"
        timestamp = _find(columns, ("timestamp",))
        if timestamp in found.values() or timestamp == weight:
            timestamp = None
    else:
        timestamp = None
    used = [(arg, col) for arg, col in (*found.items(), ("weight", weight), ("timestamp", timestamp))
            if col is not None]
    for k, (arg, col) in enumerate(used):
        for other, col2 in used[:k]:
            if col == col2:
                raise ValueError(
                    f"{other} and {arg} both name column {col!r} of {name}; pass {arg}= to name "
                    "another column"
                )
    return _Choice(found["user"], found["item"], found["rating"], weight, timestamp)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- files
def _existing_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise ValueError(f"path {str(path)!r} does not exist")
    if p.is_dir():
        raise ValueError(f"path {str(path)!r} is a directory; give the ratings file itself")
    return p


def _format(p: Path, format: str | None) -> str:
    if format is None:
        with open(p, "rb") as fh:
            return "parquet" if fh.read(4) == b"PAR1" else "text"
    if format not in ("parquet", "text", "csv", "tsv"):
        raise ValueError(f"format must be 'parquet', 'csv', 'tsv' or 'text', got {format!r}")
    return format


def _read_parquet(p: Path, names: _Names) -> _Table:
    import pandas as pd

    optional_import("pyarrow", extra="parquet", purpose="reading Parquet")
    try:
        df = pd.read_parquet(p)
    except Exception as exc:
        raise ValueError(f"{p.name}: cannot read as Parquet: {exc}") from exc
    release_freed_memory()  # pyarrow's pool keeps the table it converted (issue 11)
    df.columns = [str(c) for c in df.columns]
    choice = _choose(list(df.columns), names, p.name, headerless=False)
    return _Table(df, choice, p.name, lambda k: f"row {k + 1} of {p.name}", text=False)


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


def _sep_name(sep: str) -> str:
    """The separator as a message names it: ``whitespace`` for the sniffed ``\\s+`` (trust: a
    message said "separated by '\\\\s+'"), ``tabs``, else its repr (``';'``)."""
    return {r"\s+": "whitespace", "\t": "tabs"}.get(sep, repr(sep))


def _split(line: str, sep: str) -> list[str]:
    """One line's fields, for error messages."""
    if sep == r"\s+":
        return line.split()
    if len(sep) == 1:
        return next(csv.reader([line], delimiter=sep))
    return re.split(sep, line) if sep != "::" else line.split("::")


def _text_layout(p: Path, *, sep: str | None, header: bool | None, encoding: str
                 ) -> tuple[str, bool]:
    """The separator and whether there is a header line, from the first line unless given."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(
            f"encoding={encoding!r} is not a known text encoding; pass encoding='utf-8' or "
            "encoding='latin-1'"
        ) from None
    with open(p, "rb") as fh:
        head = fh.read(65536)
    text_head = head.decode(encoding, errors="replace")
    if "\0" in text_head:
        raise ValueError(f"{p.name}: this looks like a binary file, not a ratings text file")
    lines = [ln for ln in text_head.splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{p.name}: the file is empty; expected lines of user, item, rating")
    first = lines[0].lstrip("\ufeff")
    if sep is None:
        sep = _sniff(first)
    fields = _split(first.strip(), sep)
    if header is None:
        # ids may be strings: call it a header only when the rating field is not a number
        rating = fields[2].strip().strip('"') if len(fields) >= 3 else ""
        header = len(fields) >= 3 and not _is_number(rating)
        if header and all(_is_number(f.strip().strip('"')) for f in fields[:2]):
            # issue 8: "1,2,x" was taken for a header (columns '1', '2', 'x') and its rating
            # silently dropped; a header does not name its columns with numbers
            number = next(k for k, ln in enumerate(text_head.splitlines(), 1) if ln.strip())
            raise ValueError(
                f"line {number} of {p.name}: rating {rating!r} is not a number (its user and item "
                "fields are numbers, so it is not taken for a header line); fix the line, or "
                "pass header=True if it is a header"
            )
    return sep, bool(header)


def _read_text(p: Path, names: _Names, *, sep: str, header: bool, encoding: str) -> _Table:
    """The general reader (pandas), for a layout :func:`_text_layout` found."""
    import pandas as pd

    engine = "python" if len(sep) > 1 and sep != r"\s+" else "c"
    common: dict[str, Any] = dict(
        sep=sep, engine=engine, skip_blank_lines=True, comment=None, on_bad_lines="error",
        encoding=encoding, keep_default_na=False,
    )
    if sep == "::":
        common["quoting"] = csv.QUOTE_NONE  # as the python engine splits: quotes are text

    def parse(**kw: Any) -> Any:
        try:
            return pd.read_csv(p, **common, **kw)
        except pd.errors.ParserError as exc:
            m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
            if m:
                expected, line, saw = m.groups()
                raise ValueError(
                    f"line {line} of {p.name}: expected {expected} fields, got {saw}"
                ) from None
            raise ValueError(f"{p.name}: cannot parse: {exc}") from None
        except pd.errors.EmptyDataError:
            raise ValueError(
                f"{p.name}: the file is empty; expected lines of user, item, rating"
            ) from None
        except UnicodeDecodeError as exc:
            raise _decode_error(p, encoding, exc) from None

    if header:
        columns = [str(c) for c in parse(header=0, nrows=0).columns]
    else:
        columns = [str(c) for c in parse(header=None, nrows=1).columns]
        if not 3 <= len(columns) <= 4:
            raise ValueError(
                f"line 1 of {p.name}: expected 3 or 4 fields (user, item, rating[, timestamp]) "
                f"separated by {_sep_name(sep)}, got {len(columns)}; pass sep= if the separator "
                "is another"
            )
        columns = list(_HEADERLESS[: len(columns)])
    choice = _choose(columns, names, p.name, headerless=not header)
    ids = [columns.index(choice.user), columns.index(choice.item)]
    rest = [k for k in range(len(columns)) if k not in ids]

    def key(k: int) -> Any:
        return columns[k] if header else k

    def read_all(id_dtype: Any) -> Any:
        """The whole file; id columns as ``id_dtype`` (None: as the parser infers)."""
        if not header and sep == "::":  # MovieLens ratings.dat: the C engine on ":", ~10x faster
            df = _read_double_colon(p, len(columns), ids, rest, common, id_dtype)
            if df is not None or id_dtype is None:
                return df
        return parse(
            header=0 if header else None,
            dtype=None if id_dtype is None else {key(k): id_dtype for k in ids},
            na_values={key(k): [""] for k in rest},
        )

    # Fast path: let the C parser read the ids as numbers, and keep them only where the bytes
    # show that every id that became an int64 was written canonically; else read ids as text.
    df = None
    if (engine == "c" or (sep == "::" and not header)) and _ascii_compatible(encoding):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)
            df = read_all(None)
        if df is not None and not _ids_as_written(
            [df[key(k)] for k in ids],
            lambda: _canonical_integers_only(p, bool(header), ":" if sep == "::" else sep),
        ):
            df = None
    if df is None:
        df = read_all(object)
    if not header:
        df.columns = columns
    locate = _LineFinder(p, bool(header), encoding)

    def where(k: int) -> str:
        return f"line {locate(k)[0]} of {p.name}"

    def explain_gap(k: int, column: str, what: str) -> str:
        """Why row ``k`` of ``column`` is empty: a short line, or an empty field."""
        line, text = locate(k)
        # a separator that is not whitespace: strip nothing (a tab file's empty first field)
        got = _split(text.strip() if sep == r"\s+" else text, sep)
        position = columns.index(column)
        if len(got) <= position:
            need = (
                f"at least {position + 1} fields (user, item, rating)" if position < 3 and not header
                else f"{len(columns)} fields, as in the header line"
            )
            return f"line {line} of {p.name}: expected {need}, got fewer ({len(got)})"
        if got[position].strip():
            return f"line {line} of {p.name}: {what} {got[position]!r} is not a number"
        return f"line {line} of {p.name}: the {what} is empty; every line needs a user, an item and a rating"

    return _Table(df, choice, p.name, where, text=True, explain_gap=explain_gap)


def _read_double_colon(
    p: Path, n: int, ids: list[int], rest: list[int], common: dict[str, Any], id_dtype: Any
) -> Any:
    """A headerless ``::`` file read by the C engine on ``:``, or None when a field holds a
    ``:`` (then the python engine reads it, and reports any error)."""
    import pandas as pd

    kw = dict(common, sep=":", engine="c")
    try:
        df = pd.read_csv(
            p, header=None, dtype=None if id_dtype is None else {2 * k: id_dtype for k in ids},
            na_values={j: [""] for j in range(2 * n - 1) if j % 2 or j // 2 in rest}, **kw,
        )
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError):
        return None
    if df.shape[1] != 2 * n - 1 or not df.iloc[:, 1::2].isna().all().all():
        return None
    df = df.iloc[:, ::2]
    df.columns = range(n)
    return df


# ---------------------------------------------------------------------------------- fast path
_PLAIN_FIELD = re.compile(r'[^\s"]+')  # a first-line field the fast path takes as plain


def _plain_reader(p: Path, names: _Names, sep: str, header: bool, encoding: str,
                  duplicates: Duplicates) -> Callable[[bool], Ratings | None] | None:
    """The fast path (issue 10, cold start): a function parsing the file with pyarrow (its
    C++ reader, which releases the GIL), or None when the file is not plain.

    Plain: UTF-8, a one-character separator, a first line of fields without spaces or quotes
    (3 or 4 fields without a header line; distinct names with one), every column read (no
    weight column, none ignored: the general reader checks their bytes). The function returns
    None for whatever the general reader would read otherwise or report: a quote or a NUL in an
    id, an empty field, a row of another length, bytes that are not UTF-8, a rating that is not
    a finite number, a timestamp that is not an integer (or is written ``0x...``). It reads the
    file itself (pyarrow streams it: no copy of the file in memory). So the Ratings are
    those of the general reader: ids by the same rule (int64 when every id of the column is
    a canonical integer, else the strings as written, sorted the same way), ratings parsed to
    the nearest float as pandas does, the same duplicate handling. Here, in the caller's
    thread: pyarrow's import and the checks of the columns (their errors); the function
    itself imports nothing (its argument: whether pyarrow may use its pool of threads)."""
    if (len(sep) != 1 or sep in '"\r\n' or names.weight is not None
            or codecs.lookup(encoding).name != "utf-8"):
        return None
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
    except ImportError:
        return None
    with open(p, "rb") as fh:
        head = fh.read(65536)
    line, newline, _ = head.partition(b"\n")
    if not newline and len(head) == 65536:
        return None  # a first line this long is no plain file
    try:
        fields = line.removesuffix(b"\r").decode("utf-8").split(sep)
    except UnicodeDecodeError:
        return None
    if head.startswith(codecs.BOM_UTF8) or not all(_PLAIN_FIELD.fullmatch(f) for f in fields):
        return None
    if header:
        columns = fields
        if len(set(columns)) != len(columns):
            return None  # pandas renames a repeated name
    elif 3 <= len(fields) <= 4:
        columns = list(_HEADERLESS[: len(fields)])
    else:
        return None  # the general reader says what it expected
    choice = _choose(columns, names, p.name, headerless=not header)
    used = [choice.user, choice.item, choice.rating, choice.timestamp]
    if any(c not in used for c in columns):
        return None
    ids = pa.dictionary(pa.int32(), pa.string())
    types = {choice.user: ids, choice.item: ids, choice.rating: pa.float64()}
    if choice.timestamp is not None:
        types[choice.timestamp] = pa.int64()
    parse_options = pacsv.ParseOptions(delimiter=sep, quote_char=False, double_quote=False,
                                       escape_char=False, ignore_empty_lines=True)
    convert_options = pacsv.ConvertOptions(
        column_types=types, null_values=[], true_values=[], false_values=[],
        strings_can_be_null=False, quoted_strings_can_be_null=False)

    def parse(threads: bool = True) -> Ratings | None:
        try:
            read_options = pacsv.ReadOptions(column_names=columns, skip_rows=int(header),
                                             use_threads=threads)
            table = pacsv.read_csv(str(p), read_options=read_options,
                                   parse_options=parse_options, convert_options=convert_options)
        except (pa.ArrowException, ValueError):  # a row pandas reads otherwise, or reports
            return None
        if table.num_rows == 0:
            return None
        if choice.timestamp is not None and _hex_written(p):
            return None  # arrow reads "0x10" as the integer 16; the general reader refuses it
        user_codes = _plain_ids(table.column(choice.user))
        item_codes = _plain_ids(table.column(choice.item))
        values = _plain_array(table.column(choice.rating).chunks, np.float64)
        stamps = None if choice.timestamp is None else _plain_array(
            table.column(choice.timestamp).chunks, np.int64)
        del table
        if user_codes is None or item_codes is None or values is None or (
                choice.timestamp is not None and stamps is None):
            return None
        # pandas reads "-0" in a column of integers as 0.0: leave a negative zero to it
        if not np.isfinite(values).all() or np.signbit(values[values == 0]).any():
            return None
        (users, user_ids), (items, item_ids) = user_codes, item_codes
        return Ratings(users, items, values, shape=(len(user_ids), len(item_ids)),
                       user_ids=user_ids, item_ids=item_ids, timestamps=stamps,
                       duplicates=duplicates)

    return parse


def _hex_written(p: Path) -> bool:
    """Whether ``0x`` or ``0X`` occurs in the file: arrow's integer parser takes it for a
    hexadecimal number (issue 10). Conservative: a True only sends the file to the general
    reader."""
    with open(p, "rb") as fh:
        while chunk := fh.read(1 << 24):
            chunk += fh.readline()  # whole lines: no "0x" spans two chunks
            # a one-byte search first: memchr's speed (a two-byte one is ~20x slower)
            if (b"x" in chunk or b"X" in chunk) and (b"0x" in chunk or b"0X" in chunk):
                return True
    return False


def _plain_array(chunks: list[Any], dtype: Any) -> np.ndarray | None:
    """Arrow arrays joined into one numpy array, from their data buffers (arrow's own
    ``to_numpy`` imports pandas); None if one holds a null (none is expected: no field is read
    as one)."""
    if any(c.null_count for c in chunks):
        return None
    size = np.dtype(dtype).itemsize
    parts = [np.frombuffer(c.buffers()[1], dtype=dtype, count=len(c), offset=c.offset * size)
             for c in chunks if len(c)]
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


def _plain_ids(column: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """``(codes, ids)`` of a dictionary-encoded id column, as :func:`factorize_ids` gives them
    for the same strings: int64 ids when every id is a canonical integer (``str(int(s)) ==
    s``, within int64), else the strings; sorted; int32 codes. None for an empty id, or one
    with a quote or a NUL (the general reader reads or reports them)."""
    column = column.unify_dictionaries()
    if column.num_chunks == 0:
        return None
    text = column.chunk(0).dictionary.to_pylist()
    codes = _plain_array([chunk.indices for chunk in column.chunks], np.int32)
    if codes is None or not text or any(not s or '"' in s or "\0" in s for s in text) or \
            np.bincount(codes, minlength=len(text)).min() == 0:
        return None
    words = np.asarray(text, dtype=str)
    try:
        numbers = words.astype(np.int64)
        canonical = bool(np.array_equal(numbers.astype(str), words))
    except (ValueError, OverflowError, TypeError):
        canonical = False
    if canonical:
        order = np.argsort(numbers, kind="stable")
        ids = numbers[order]
    else:  # as the general reader: the strings as written, sorted by code point
        order = np.argsort(words, kind="stable")
        ids = np.asarray(text, dtype=object)[order]
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return rank[codes], ids


def _ascii_compatible(encoding: str) -> bool:
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig", "ascii", "iso8859-1", "cp1252")


def _ids_as_written(cols: list[Any], canonical: Callable[[], bool]) -> bool:
    """Whether the id columns the parser inferred hold the ids as written: strings, or int64
    when the file's bytes show no integer written otherwise than canonically."""
    import pandas as pd

    ints = False
    for col in cols:
        if col.dtype == np.int64:
            ints = True
        elif isinstance(col.dtype, pd.StringDtype):
            continue
        elif col.dtype != object or pd.api.types.infer_dtype(col, skipna=True) != "string":
            return False  # floats, bools, or ints and strings mixed across parser chunks
    return not ints or canonical()


def _canonical_integers_only(p: Path, header: bool, sep: str) -> bool:
    """Whether no field of the data lines could be an integer written non-canonically that the
    C parser reads as int64: no ``+``, quote, or space (but a separator), and no field that
    starts with ``0`` and a digit or with ``-0``. Conservative: a False only costs a reread."""
    blank = b" \t\x0b\x0c"
    delims = np.zeros(256, dtype=bool)
    if sep == r"\s+":
        delims[list(blank + b"\r\n")] = True
        odd = [b'+', b'"']
    else:
        delims[list(sep.encode() + b"\r\n")] = True
        odd = [b'+', b'"'] + [bytes([c]) for c in blank if c not in sep.encode()]
    with open(p, "rb") as fh:
        if fh.read(3) != b"\xef\xbb\xbf":
            fh.seek(0)
        if header:  # skip blank lines and the header line
            while (line := fh.readline()) and not line.strip():
                pass
        while chunk := fh.read(1 << 24):
            chunk = b"\n" + chunk + fh.readline()  # whole lines: no field spans two chunks
            if any(c in chunk for c in odd):
                return False
            a = np.frombuffer(chunk + b"\n", dtype=np.uint8)
            for lead, low, high in ((48, 48, 57), (45, 48, 48)):  # "0" and a digit; "-0"
                at = np.flatnonzero(a[1:-1] == lead) + 1
                after = a[at + 1]
                if (delims[a[at - 1]] & (after >= low) & (after <= high)).any():
                    return False
    return True


class _LineFinder:
    """The line number and text of data row ``k`` (rereads the file: for error messages only)."""

    def __init__(self, path: Path, header: bool, encoding: str) -> None:
        self.path, self.header, self.encoding = path, header, encoding

    def __call__(self, k: int) -> tuple[int, str]:
        row = -2 if self.header else -1
        with open(self.path, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                text = raw.decode(self.encoding, errors="replace").rstrip("\r\n")
                if text.strip():
                    row += 1
                    if row == k:
                        return number, text
        return k + 1 + int(self.header), ""  # pragma: no cover - the parser saw the row


def _decode_error(p: Path, encoding: str, exc: UnicodeDecodeError) -> ValueError:
    """A decode error as the byte offset and line of the first undecodable byte."""
    offset = 0
    with open(p, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError as err:
                bad = raw[err.start : err.end]
                return ValueError(
                    f"{p.name}: byte {offset + err.start} (line {number}) is {bad!r}, not valid "
                    f"{encoding}; pass encoding='latin-1' (or the file's encoding)"
                )
            offset += len(raw)
    return ValueError(  # pragma: no cover - a multi-byte encoding split across lines
        f"{p.name}: not valid {encoding} ({exc}); pass encoding='latin-1' (or the file's encoding)"
    )


# ---------------------------------------------------------------------------------- ratings
def _to_ratings(t: _Table, duplicates: Duplicates) -> Ratings:
    import pandas as pd

    df, c = t.frame, t.choice
    if len(df) == 0:
        raise ValueError(f"{t.name}: no ratings in the file")
    explain = t.explain_gap
    if explain is not None:  # an empty rating in a text file: a short line, or an empty field
        gap = _empty(df[c.rating])
        if gap.any():
            raise ValueError(explain(int(np.flatnonzero(gap)[0]), c.rating, "rating"))
    uidx, uids = factorize_ids(
        df[c.user], "user", t.where, text=t.text,
        missing=None if explain is None else lambda k: explain(k, c.user, "user id"),
    )
    iidx, iids = factorize_ids(
        df[c.item], "item", t.where, text=t.text,
        missing=None if explain is None else lambda k: explain(k, c.item, "item id"),
    )
    col = df[c.rating]
    if col.dtype.kind in "iufb":
        vals = col.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        vals = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.isnan(vals) & col.notna().to_numpy()
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{t.where(k)}: rating {col.iloc[k]!r} is not a number")
    nonfinite = ~np.isfinite(vals)
    if nonfinite.any():
        k = int(np.flatnonzero(nonfinite)[0])
        what = "is missing" if np.isnan(vals[k]) else "is not finite"
        raise ValueError(f"{t.where(k)}: rating {float(vals[k])!r} {what}")
    w = None if c.weight is None else parse_weights(df[c.weight], c.weight, t.where)
    ts = None if c.timestamp is None else parse_timestamps(
        df[c.timestamp], c.timestamp, t.where, _NO_TIMESTAMP_FIX
    )
    t.frame = df = col = None  # issue 11: the frame goes before the ratings are sorted
    # pandas hands out its columns read-only; the frame is gone, so they are the Ratings' own:
    # writeable, as those of the fast path (issue 10) and of a file that needed a sort
    vals = _writeable(vals)
    w, ts = (None if a is None else _writeable(a) for a in (w, ts))
    return Ratings(
        uidx, iidx, vals, shape=(len(uids), len(iids)), user_ids=uids, item_ids=iids,
        weights=w, timestamps=ts, duplicates=duplicates,
    )


def _writeable(a: np.ndarray) -> np.ndarray:
    """``a``, writeable: its flag set back where its memory allows it, else a copy."""
    if not a.flags.writeable:
        try:
            a.flags.writeable = True
        except ValueError:
            a = a.copy()
    return a


def _empty(col: Any) -> np.ndarray:
    """Which entries of a column read from text are missing or the empty string."""
    mask = col.isna().to_numpy()
    if col.dtype.kind not in "iufb":
        mask = mask | (col.to_numpy() == "")
    return np.asarray(mask, dtype=bool)
