"""Ratings: the one data type at autofact's boundary.

Every input form (masked array, dense array with NaN, scipy.sparse matrix, DataFrame, file) becomes a
:class:`Ratings` once. A ``Ratings`` holds only the observed entries, as COO arrays sorted by
(user, item), plus the maps between the user's own ids and the 0-based indices the model uses.
Nothing here ever builds an ``m x n`` dense matrix.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import scipy.sparse as sp

from .errors import UnknownIdError

__all__ = ["Ratings"]

Duplicates = Literal["error", "mean", "last"]
_INDEX_DTYPE = np.int32


def _as_float(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiub":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be numeric, got values of dtype {arr.dtype}") from exc
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    return arr


def _dense_weights(weights: Any, shape: tuple[int, ...]) -> np.ndarray:
    w = np.asarray(weights)
    if w.shape != tuple(shape):
        raise ValueError(
            f"weights must have the shape of D {tuple(shape)}, got {w.shape}; give one weight per "
            "cell (cells that are missing are ignored)"
        )
    return w


def py_scalar(x: Any) -> Any:
    """A numpy scalar as the Python value, so messages read ``'u42'``, not ``np.str_('u42')``."""
    return x.item() if isinstance(x, np.generic) else x


def _check_finite(values: np.ndarray, name: str, where: Any = None) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        loc = where(k) if where is not None else f"position {k}"
        raise ValueError(
            f"{name} must be finite, got {py_scalar(values[k])!r} at {loc}; drop or impute missing ratings "
            "before building Ratings"
        )


def stable_order(key: np.ndarray, bound: int) -> np.ndarray:
    """``np.argsort(key, kind="stable")`` for integer keys in ``[0, bound)``, the same order.

    Issue 10 (cold start): below 2**32, by two stable passes over 16-bit digits, low then high
    (numpy sorts 16-bit keys by radix: 1M keys in 0.05 s instead of 0.11 s); a stable sort by
    the high digit keeps the low digit's order among equal high digits, so the result is the
    stable sort by the whole key."""
    if bound > 1 << 32:
        return np.argsort(key, kind="stable")
    order = np.argsort((key & 0xFFFF).astype(np.uint16), kind="stable")
    if bound > 1 << 16:
        order = order[np.argsort((key[order] >> 16).astype(np.uint16), kind="stable")]
    return order


class Ratings:
    """Observed entries of an ``n_users x n_items`` ratings matrix.

    Attributes
    ----------
    users, items : int32 arrays of 0-based row and column indices, sorted by (user, item).
    values : float array of ratings.
    weights : optional float array of per-entry weights (multiplying the loss), or ``None``.
    timestamps : optional int64 array, or ``None``.
    user_ids, item_ids : arrays mapping index -> the user's own id.
    shape : ``(n_users, n_items)``.

    Build one with a named constructor: :meth:`from_coo`, :meth:`from_masked`, :meth:`from_dense`,
    :meth:`from_sparse`, :meth:`from_frame`, or :func:`autofact.read`.

    >>> r = Ratings.from_dense(np.array([[5.0, np.nan], [np.nan, 1.0]]))
    >>> r
    <Ratings (2 users x 2 items x 2 ratings)>
    """

    __slots__ = (
        "users",
        "items",
        "values",
        "weights",
        "timestamps",
        "user_ids",
        "item_ids",
        "shape",
        "_user_lookup",
        "_item_lookup",
    )

    def __init__(
        self,
        users: np.ndarray,
        items: np.ndarray,
        values: np.ndarray,
        *,
        shape: tuple[int, int],
        user_ids: np.ndarray | None = None,
        item_ids: np.ndarray | None = None,
        weights: np.ndarray | None = None,
        timestamps: np.ndarray | None = None,
        duplicates: Duplicates = "error",
        _sorted: bool = False,
    ) -> None:
        m, n = int(shape[0]), int(shape[1])
        users = np.asarray(users)
        items = np.asarray(items)
        values = _as_float(values, "values")
        if users.ndim != 1 or items.ndim != 1 or values.ndim != 1:
            raise ValueError(
                "users, items and values must be 1-D arrays, got shapes "
                f"{users.shape}, {items.shape}, {values.shape}"
            )
        if not (len(users) == len(items) == len(values)):
            raise ValueError(
                "users, items and values must have the same length, got "
                f"{len(users)}, {len(items)}, {len(values)}"
            )
        for name, arr in (("weights", weights), ("timestamps", timestamps)):
            if arr is not None and np.shape(arr) != values.shape:
                raise ValueError(
                    f"{name} must have one entry per rating ({len(values)}), "
                    f"got shape {np.shape(arr)}"
                )
        if len(values) == 0:
            raise ValueError("ratings are empty: at least one observed rating is needed")
        if m <= 0 or n <= 0:
            raise ValueError(f"shape must be positive, got {shape!r}")
        for name, arr, lim in (("users", users, m), ("items", items, n)):
            if arr.dtype.kind not in "iu":
                raise ValueError(f"{name} must be integer indices, got dtype {arr.dtype}")
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= lim:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"{name} index {bad} is out of range for shape {(m, n)}: "
                    f"expected 0 <= index < {lim}"
                )
        _check_finite(values, "ratings")
        if weights is not None:
            weights = _as_float(weights, "weights")
            _check_finite(weights, "weights")
            if (weights < 0).any():
                k = int(np.flatnonzero(weights < 0)[0])
                raise ValueError(f"weights must be >= 0, got {py_scalar(weights[k])!r} at position {k}")
        if timestamps is not None:
            timestamps = np.asarray(timestamps).astype(np.int64, copy=False)

        users = users.astype(_INDEX_DTYPE, copy=False)
        items = items.astype(_INDEX_DTYPE, copy=False)
        if not _sorted:
            # one int64 key (user-major), sorted stably: equal pairs keep their input order;
            # the same order as np.lexsort((items, users)) in about half the time (issue 10)
            key = users.astype(np.int64) * max(n, 1) + items
            if len(key) > 1 and not bool((key[1:] >= key[:-1]).all()):
                order = stable_order(key, m * max(n, 1))
                users, items, values = users[order], items[order], values[order]
                weights = None if weights is None else weights[order]
                timestamps = None if timestamps is None else timestamps[order]
        dup = (users[1:] == users[:-1]) & (items[1:] == items[:-1])
        if dup.any():
            users, items, values, weights, timestamps = _combine_duplicates(
                users, items, values, weights, timestamps, dup, duplicates, user_ids, item_ids
            )

        self.users = users
        self.items = items
        self.values = values
        self.weights = weights
        self.timestamps = timestamps
        self.shape = (m, n)
        self.user_ids = np.arange(m) if user_ids is None else np.asarray(user_ids)
        self.item_ids = np.arange(n) if item_ids is None else np.asarray(item_ids)
        if len(self.user_ids) != m or len(self.item_ids) != n:
            raise ValueError(
                f"user_ids/item_ids must have {m}/{n} entries to match shape {(m, n)}, "
                f"got {len(self.user_ids)}/{len(self.item_ids)}"
            )
        self._user_lookup: Any = None
        self._item_lookup: Any = None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_coo(
        cls,
        users: Any,
        items: Any,
        values: Any,
        *,
        shape: tuple[int, int] | None = None,
        weights: Any = None,
        timestamps: Any = None,
        duplicates: Duplicates = "error",
    ) -> Ratings:
        """From 0-based index arrays (``users[k], items[k]`` holds ``values[k]``)."""
        users, items = np.asarray(users), np.asarray(items)
        if shape is None:
            if len(users) == 0:
                raise ValueError("ratings are empty: at least one observed rating is needed")
            shape = (int(np.max(users)) + 1, int(np.max(items)) + 1)
        return cls(
            users,
            items,
            np.asarray(values),
            shape=shape,
            weights=None if weights is None else np.asarray(weights),
            timestamps=None if timestamps is None else np.asarray(timestamps),
            duplicates=duplicates,
        )

    @classmethod
    def from_masked(cls, D: np.ma.MaskedArray | np.ndarray, *, weights: Any = None) -> Ratings:
        """From a 2-D numpy masked array: masked entries are missing.

        A plain ndarray is taken as fully observed (use :meth:`from_dense` for NaN-as-missing).
        """
        if not isinstance(D, np.ndarray):
            raise TypeError(
                f"D must be a numpy masked array or ndarray, got {type(D).__name__}; "
                "use Ratings.from_sparse or Ratings.from_frame for other forms"
            )
        if D.ndim != 2:
            raise ValueError(f"D must be 2-D (users x items), got shape {D.shape}")
        mask = np.ma.getmaskarray(D)
        data = np.ma.getdata(D)
        rows, cols = np.nonzero(~mask)
        vals = _as_float(data[rows, cols], "D")
        _check_finite(vals, "D", lambda k: f"row {rows[k]}, column {cols[k]} (mask it if missing)")
        w = None if weights is None else _dense_weights(weights, D.shape)[rows, cols]
        return cls(rows, cols, vals, shape=D.shape, weights=w, _sorted=True)

    @classmethod
    def from_dense(cls, D: Any, *, weights: Any = None) -> Ratings:
        """From a 2-D array in which NaN marks a missing rating."""
        D = _as_float(D, "D")
        if D.ndim != 2:
            raise ValueError(f"D must be 2-D (users x items), got shape {D.shape}")
        observed = ~np.isnan(D)
        rows, cols = np.nonzero(observed)
        vals = D[rows, cols]
        _check_finite(vals, "D", lambda k: f"row {rows[k]}, column {cols[k]}")
        w = None if weights is None else _dense_weights(weights, D.shape)[rows, cols]
        return cls(rows, cols, vals, shape=D.shape, weights=w, _sorted=True)

    @classmethod
    def from_sparse(cls, S: Any, *, duplicates: Duplicates = "error") -> Ratings:
        """From a scipy.sparse matrix or array: stored entries are the observed ratings.

        An explicitly stored zero is a rating of 0; absent entries are missing.
        """
        if not _issparse(S):
            raise TypeError(
                f"S must be a scipy.sparse matrix, got {type(S).__name__}; "
                "use Ratings.from_dense or Ratings.from_masked for dense arrays"
            )
        import scipy.sparse as sp

        coo = sp.coo_matrix(S)  # keeps explicit zeros and any duplicates
        return cls(coo.row, coo.col, coo.data, shape=coo.shape, duplicates=duplicates)

    @classmethod
    def from_frame(
        cls,
        df: Any,
        *,
        user: str = "user",
        item: str = "item",
        rating: str = "rating",
        weight: str | None = None,
        timestamp: str | None = None,
        duplicates: Duplicates = "error",
    ) -> Ratings:
        """From a pandas DataFrame with user, item and rating columns.

        Ids keep their column's type and value exactly (``"007"`` and ``"7"`` are two users, and
        no string is read as missing); a missing id (None/NaN) or an empty string is an error.
        Ids are mapped to 0-based indices in sorted order (order of first appearance when the ids
        cannot be sorted); the maps are kept in ``user_ids`` / ``item_ids``.

        Weights and timestamps are used only when their column is named: ``weight=`` (finite
        numbers >= 0) and ``timestamp=`` (integer or float seconds since 1970, datetimes, or
        strings of either; naive times are taken as UTC; kept as whole seconds). A value that
        cannot be read is an error naming its row.
        """
        import pandas as pd

        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
        for arg, col in (("user", user), ("item", item), ("rating", rating),
                         ("weight", weight), ("timestamp", timestamp)):
            if col is not None and col not in df.columns:
                raise ValueError(
                    f"{arg}={col!r} is not a column of the DataFrame; its columns are "
                    f"{list(df.columns)!r}"
                )
        if len(df) == 0:
            raise ValueError("ratings are empty: the DataFrame has no rows")

        def where(k: int) -> str:
            return f"row {py_scalar(df.index[k])!r}"

        uidx, uids = factorize_ids(df[user], "user", where)
        iidx, iids = factorize_ids(df[item], "item", where)
        for what, col, ids in (("user", user, uids), ("item", item, iids)):
            _check_one_kind(ids, what, col)
        vals = _as_float(df[rating].to_numpy(), f"column {rating!r}")
        _check_finite(
            vals, f"column {rating!r}",
            lambda k: f"row {py_scalar(df.index[k])!r} (user {py_scalar(df[user].iloc[k])!r})",
        )
        w = None if weight is None else parse_weights(df[weight], weight, where)
        ts = None if timestamp is None else parse_timestamps(
            df[timestamp], timestamp, where, "or leave out timestamp="
        )
        return cls(
            uidx, iidx, vals, shape=(len(uids), len(iids)), user_ids=uids, item_ids=iids,
            weights=w, timestamps=ts, duplicates=duplicates,
        )

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.values)

    @property
    def n_users(self) -> int:
        return self.shape[0]

    @property
    def n_items(self) -> int:
        return self.shape[1]

    @property
    def nnz(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return f"<Ratings ({self.shape[0]} users x {self.shape[1]} items x {len(self)} ratings)>"

    def equals(self, other: Ratings) -> bool:
        """True when both hold the same entries, weights, shape and id maps."""
        if not isinstance(other, Ratings) or self.shape != other.shape:
            return False
        same = (
            np.array_equal(self.users, other.users)
            and np.array_equal(self.items, other.items)
            and np.array_equal(self.values, other.values)
            and np.array_equal(self.user_ids, other.user_ids)
            and np.array_equal(self.item_ids, other.item_ids)
        )
        for a, b in ((self.weights, other.weights), (self.timestamps, other.timestamps)):
            same = same and ((a is None and b is None) or (
                a is not None and b is not None and np.array_equal(a, b)))
        return bool(same)

    def subset(self, index: Any) -> Ratings:
        """The ratings selected by a boolean mask or integer index, with the same shape and ids."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != self.values.shape:
                raise ValueError(
                    f"a boolean index must have one entry per rating ({len(self)}), "
                    f"got shape {idx.shape}"
                )
            idx = np.flatnonzero(idx)
        else:
            idx = np.sort(idx.astype(np.int64))
        new = object.__new__(Ratings)
        new.users, new.items, new.values = self.users[idx], self.items[idx], self.values[idx]
        new.weights = None if self.weights is None else self.weights[idx]
        new.timestamps = None if self.timestamps is None else self.timestamps[idx]
        new.shape, new.user_ids, new.item_ids = self.shape, self.user_ids, self.item_ids
        new._user_lookup, new._item_lookup = self._user_lookup, self._item_lookup
        if len(new.values) == 0:
            raise ValueError("the selection is empty: at least one rating must remain")
        return new

    def to_csr(self) -> sp.csr_matrix:
        """The ratings as a scipy CSR matrix (entries are the observed values)."""
        import scipy.sparse as sp

        indptr = np.zeros(self.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.users, minlength=self.shape[0]), out=indptr[1:])
        return sp.csr_matrix((self.values, self.items, indptr), shape=self.shape)

    def to_frame(self) -> Any:
        """A DataFrame with columns user, item, rating (and weight, timestamp), in the user's ids."""
        import pandas as pd

        cols: dict[str, Any] = {
            "user": self.user_ids[self.users],
            "item": self.item_ids[self.items],
            "rating": self.values,
        }
        if self.weights is not None:
            cols["weight"] = self.weights
        if self.timestamps is not None:
            cols["timestamp"] = self.timestamps
        return pd.DataFrame(cols)

    # ------------------------------------------------------------------ id maps
    def user_index(self, ids: Any, *, strict: bool = True) -> np.ndarray:
        """0-based indices for user ids (``-1`` for unknown ids when ``strict=False``)."""
        if self._user_lookup is None:
            self._user_lookup = _index(self.user_ids)
        return _lookup(self._user_lookup, ids, "user", strict)

    def item_index(self, ids: Any, *, strict: bool = True) -> np.ndarray:
        """0-based indices for item ids (``-1`` for unknown ids when ``strict=False``)."""
        if self._item_lookup is None:
            self._item_lookup = _index(self.item_ids)
        return _lookup(self._item_lookup, ids, "item", strict)

    def with_ids(self, user_ids: np.ndarray, item_ids: np.ndarray) -> Ratings:
        """Re-index these ratings onto other id maps (e.g. a training set's), dropping nothing.

        Raises ``ValueError`` naming the first id that the target maps lack.
        """
        target = Ratings.__new__(Ratings)
        target.user_ids, target.item_ids = np.asarray(user_ids), np.asarray(item_ids)
        target._user_lookup = target._item_lookup = None
        u = target.user_index(self.user_ids[self.users])
        i = target.item_index(self.item_ids[self.items])
        return Ratings(
            u, i, self.values, shape=(len(user_ids), len(item_ids)), user_ids=user_ids,
            item_ids=item_ids, weights=self.weights, timestamps=self.timestamps,
        )


def _index(ids: np.ndarray) -> Any:
    import pandas as pd

    return pd.Index(ids)


def _lookup(index: Any, ids: Any, what: str, strict: bool) -> np.ndarray:
    scalar = np.ndim(ids) == 0 and not isinstance(ids, list | tuple)
    seq = np.asarray([ids] if scalar else list(ids) if not isinstance(ids, np.ndarray) else ids)
    if seq.ndim != 1:
        raise ValueError(f"{what} ids must be a scalar or a 1-D sequence, got shape {seq.shape}")
    out = np.asarray(index.get_indexer(seq), dtype=np.int64)
    if strict and (out < 0).any():
        k = int(np.flatnonzero(out < 0)[0])
        raise UnknownIdError(f"{what} {py_scalar(seq[k])!r} is not in the training data")
    return out


# ------------------------------------------------------------------ columns (shared with reading.py)
Where = Callable[[int], str]
"""Says where entry ``k`` of a column came from: ``"line 17 of ratings.csv"``, ``"row 'a'"``."""


def _check_one_kind(ids: np.ndarray, what: str, col: str) -> None:
    """Refuse a column of ids that mixes numbers and strings (trust: ``1`` and ``"1"`` made
    two users without a word; a file's ids are all ints or all strings, so a model fitted on
    one matches them by their text, but one column holding both is ambiguous)."""
    if ids.dtype.kind != "O":
        return
    import pandas as pd

    if "mixed" not in pd.api.types.infer_dtype(ids, skipna=True):
        return  # all strings, or all numbers: pandas' scan in C, not one in Python an id
    number = text = None
    for v in ids.tolist():
        if isinstance(v, str | bytes):
            text = v if text is None else text
        elif isinstance(v, int | float | np.number) and not isinstance(v, bool | np.bool_):
            number = v if number is None else number
        if number is not None and text is not None:
            raise ValueError(
                f"column {col!r} mixes numbers and strings as {what} ids (for example "
                f"{py_scalar(number)!r} and {text!r}), which would be different {what}s; cast "
                f"the column to one type first, e.g. df[{col!r}] = df[{col!r}].astype(str)"
            )


def factorize_ids(
    col: Any,
    what: str,
    where: Where,
    *,
    text: bool = False,
    missing: Callable[[int], str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, ids)``: int32 codes into ``ids``, the distinct ids in sorted order.

    Nothing is merged, dropped or turned into missing: a missing (None/NaN) or empty id is an
    error naming ``where(k)`` (or the message ``missing(k)``). With ``text=True`` the ids are the
    strings read from a text file, and they become int64 only if *every* one is a canonical
    integer (an optional ``-``, no leading zeros, no ``+`` or spaces, within int64:
    ``str(int(s)) == s``); otherwise every id stays the string as written, so ``"007"`` and
    ``"7"`` are two ids. Without it ids keep their type (numbers sort numerically, strings
    lexicographically, mixed types in order of first appearance).
    """
    import pandas as pd

    text = text and col.dtype.kind not in "iu"  # ints a reader proved canonical stay ints
    if text:
        if not isinstance(col.dtype, pd.StringDtype):
            col = pd.Series(np.asarray(col.to_numpy(), dtype=object))
        codes, uniques = pd.factorize(col, sort=False)
    else:
        try:
            codes, uniques = pd.factorize(col, sort=True)
        except TypeError:  # ids of mixed, unorderable types: keep first-appearance order
            codes, uniques = pd.factorize(col, sort=False)
    ids = np.asarray(uniques, dtype=object) if text else np.asarray(uniques)
    bad = codes < 0  # None / NaN
    if ids.dtype.kind in "OUS":
        empty = np.flatnonzero(ids == "")
        if empty.size:
            bad = bad | (codes == empty[0])
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(
            missing(k) if missing is not None
            else f"{where(k)}: the {what} id is missing ({py_scalar(col.iloc[k])!r}); every rating needs one"
        )
    if not text:
        return codes.astype(_INDEX_DTYPE), ids
    as_int = _canonical_ints(ids)
    # strings sort by code point; as a numpy unicode array that is a C sort, not a Python one
    order = np.argsort(ids.astype(str) if as_int is None else as_int, kind="stable")
    if as_int is not None:
        ids = as_int
    rank = np.empty(len(order), dtype=_INDEX_DTYPE)
    rank[order] = np.arange(len(order), dtype=_INDEX_DTYPE)
    return rank[codes], ids[order]


_CANONICAL_INT = re.compile(r"-?(0|[1-9][0-9]*)")


def canonical_int(text: str) -> int | str:
    """``text`` as an int when it is one written canonically (``str(int(text)) == text``) within
    int64's range, else ``text`` itself: the rule by which files' ids are read (``196`` and
    ``-3`` are ints; ``007``, ``+7``, `` 7`` and ``1_96``, which Python's ``int()`` also reads,
    stay strings, so ``007`` is never user 7)."""
    try:
        value = int(text)
    except ValueError:
        return text
    if str(value) != text or not -(2**63) <= value < 2**63:
        return text
    return value


def _canonical_ints(ids: np.ndarray) -> np.ndarray | None:
    """The string ids as int64 when every one reads ``str(int(id))`` within int64, else None."""
    import pandas as pd

    if not all(isinstance(s, str) and _CANONICAL_INT.fullmatch(s) for s in ids[:100]):
        return None
    num = np.asarray(pd.to_numeric(ids, errors="coerce"))  # float/uint64 past int64, NaN if not
    if num.dtype != np.int64:
        return None
    if not np.array_equal(num.astype(str), ids.astype(str)):  # "007", "+7", " 7", "-0"
        return None
    return num


def parse_weights(col: Any, column: str, where: Where) -> np.ndarray:
    """A named weight column as float64: every entry a finite number >= 0, else an error."""
    import pandas as pd

    if col.dtype.kind == "b":
        raise ValueError(f"weights (column {column!r}) must be numbers, got booleans")
    num = col if col.dtype.kind in "iuf" else pd.to_numeric(col, errors="coerce")
    vals = pd.Series(num).to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(vals) | (vals < 0)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        why = (
            "is negative" if vals[k] < 0 else "is not finite" if np.isinf(vals[k])
            else "is missing" if pd.isna(col.iloc[k]) else "is not a number"
        )
        raise ValueError(
            f"{where(k)}: weight {py_scalar(col.iloc[k])!r} (column {column!r}) {why}; weights must be "
            "finite numbers >= 0"
        )
    return vals


_INT64_LIMIT = 2.0**63


def parse_timestamps(col: Any, column: str, where: Where, fix: str) -> np.ndarray:
    """A named timestamp column as int64 seconds since 1970 (UTC), else an error naming the entry.

    Accepted: integer or float seconds (a fraction of a second is dropped), datetimes
    (timezone-aware ones converted to UTC, naive ones taken as UTC) and strings of either.
    ``fix`` ends the error message: how to go on without the column.
    """
    import pandas as pd

    def fail(k: int, why: str) -> ValueError:
        return ValueError(
            f"{where(k)}: timestamp {py_scalar(col.iloc[k])!r} (column {column!r}) {why}; "
            f"fix the value, {fix}"
        )

    missing = col.isna().to_numpy()
    if missing.any():
        raise fail(int(np.flatnonzero(missing)[0]), "is missing")
    kind = col.dtype.kind
    if pd.api.types.is_datetime64_any_dtype(col):
        when = col
    elif kind in "iu":
        arr = col.to_numpy(dtype=np.uint64 if kind == "u" else np.int64)
        if kind == "u" and arr.max() >= _INT64_LIMIT:
            raise fail(int(np.argmax(arr)), "is out of range")
        return np.asarray(arr, dtype=np.int64)
    elif kind == "f":
        vals = col.to_numpy(dtype=np.float64)
        bad = ~(np.abs(vals) < _INT64_LIMIT)  # inf, or past int64
        if bad.any():
            raise fail(int(np.flatnonzero(bad)[0]), "is out of range")
        return np.floor(vals).astype(np.int64)
    elif kind in "bmc":
        raise fail(0, f"is not a time (the column holds {col.dtype})")
    else:  # text: numbers of seconds, or dates; the first entry tells which
        num = pd.to_numeric(col, errors="coerce")
        is_num = num.notna().to_numpy()
        if is_num.all():
            return parse_timestamps(num, column, where, fix)
        if is_num[0]:
            k = int(np.flatnonzero(~is_num)[0])
            raise fail(k, "is not a number of seconds since 1970, as the column's first entry is")
        import warnings

        with warnings.catch_warnings():  # "could not infer format": then each string alone
            warnings.simplefilter("ignore", UserWarning)
            when = None
            for form in (None, "ISO8601"):  # the first entry's format, else ISO 8601 entry by entry
                try:
                    when = pd.to_datetime(col, errors="coerce", utc=True, format=form)
                except (TypeError, ValueError, OverflowError):
                    continue
                if not when.isna().any():
                    break
        if when is None:
            raise fail(0, "is neither a date nor a number of seconds since 1970")
        bad = when.isna().to_numpy()
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            why = "is not a date like the column's first entry" if k else (
                "is neither a date nor a number of seconds since 1970")
            raise fail(k, why)
    if when.dt.tz is not None:
        when = when.dt.tz_convert("UTC").dt.tz_localize(None)
    return np.asarray(when.to_numpy().astype("datetime64[s]").astype(np.int64))


def _combine_duplicates(
    users: np.ndarray,
    items: np.ndarray,
    values: np.ndarray,
    weights: np.ndarray | None,
    timestamps: np.ndarray | None,
    dup: np.ndarray,
    how: str,
    user_ids: np.ndarray | None,
    item_ids: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    if how == "error":
        k = int(np.flatnonzero(dup)[0])
        u = users[k] if user_ids is None else user_ids[users[k]]
        i = items[k] if item_ids is None else item_ids[items[k]]
        raise ValueError(
            f"duplicate rating for (user {py_scalar(u)!r}, item {py_scalar(i)!r}) "
            f"({int(dup.sum())} duplicate pair(s) in all); pass duplicates='mean' or "
            "duplicates='last' to combine them"
        )
    if how not in ("mean", "last"):
        raise ValueError(f"duplicates must be 'error', 'mean' or 'last', got {how!r}")
    starts = np.flatnonzero(np.concatenate(([True], ~dup)))
    if how == "last":
        ends = np.concatenate((starts[1:], [len(values)])) - 1
        pick = ends
        vals = values[pick]
    else:
        pick = starts
        counts = np.diff(np.concatenate((starts, [len(values)])))
        vals = np.add.reduceat(values.astype(np.float64), starts) / counts
        vals = vals.astype(values.dtype)
    w = None if weights is None else weights[pick]
    ts = None if timestamps is None else timestamps[pick]
    return users[pick], items[pick], vals, w, ts


def _issparse(x: Any) -> bool:
    """Whether ``x`` is a scipy.sparse matrix or array; scipy is imported only when it is
    (issue 10: ``import autofact`` leaves scipy out; a scipy object means scipy is loaded)."""
    sparse = sys.modules.get("scipy.sparse")
    return sparse is not None and bool(sparse.issparse(x))


def as_ratings(x: Any, name: str = "ratings") -> Ratings:
    """``x`` as :class:`Ratings`: a Ratings, scipy.sparse matrix, masked array, NaN-dense array,
    or a DataFrame with columns ``user``, ``item``, ``rating``."""
    if isinstance(x, Ratings):
        return x
    if _issparse(x):
        return Ratings.from_sparse(x)
    if isinstance(x, np.ma.MaskedArray):
        return Ratings.from_masked(x)
    if isinstance(x, np.ndarray):
        return Ratings.from_dense(x)
    try:
        import pandas as pd

        if isinstance(x, pd.DataFrame):
            return Ratings.from_frame(x)
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    raise TypeError(
        f"{name} must be an autofact.Ratings (or a scipy.sparse matrix, a masked or NaN-dense "
        f"array, or a DataFrame with user/item/rating columns), got {type(x).__name__}"
    )
