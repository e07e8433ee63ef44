"""``ModelIndex``: what turns a fitted model's factors into answers about ids.

One small public object, built by :meth:`MatrixFactorization.fit` from the training ratings,
saved by :mod:`autofact.io` and read by :mod:`autofact.recommend` and
:mod:`autofact.evaluation`. It holds

- the id maps (``user_ids``, ``item_ids``) and their lookup (:meth:`user_index`),
- the training pattern ``seen`` (a boolean scipy CSR, users x items) and the ``user_counts`` /
  ``item_counts`` derived from it,
- the ``rating_range`` of the training ratings and ``clip``, the range predictions are clipped to
  (``None`` for a loss whose predictions are not ratings),
- the loss's ``inverse_link`` (raw score to mean response; ``None``: the identity),
- and the one rule for unknown users and items (:meth:`link_scores`): a user or item that is not
  in the id map, or is in it with no training rating, is *unknown*. A pair with one unknown side
  is scored as the average item (or user): the known user's mean score over the known items,
  ``global_mean + b_u + mean(b^i) + p_u . mean(Q)`` (the score is linear in the item's factor and
  bias, so this is the average of that user's scores), and likewise for an unknown user; a pair
  with both sides unknown gets ``fallback``, the global mean (a model with biases) or the best
  constant (one without). Issue 9: on validation splits carved from training data (10% of
  ml-100k u1/u3.base, ml-latest-small and filmtrust 90% parts) it lowered the default model's
  RMSE by 0.0004-0.0019 against the earlier ``fallback + (the known side's bias)``, and left
  ALS's equal or lower (by up to 0.0001); for the sampler it is its own prior's prediction (the
  items' prior mean is the mean of their factors).

Every score the library reports goes through :meth:`link_scores` and :meth:`response`: predict,
score, evaluation, the validation history during fit, and recommend (whose top-n lists rank known
users over known items with the same formula as one matrix product per block of users, then pass
the chosen scores through :meth:`response`).

>>> index = model.index_
>>> index.user_index(["u1", "nobody"], strict=False)
array([ 0, -1])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    import scipy.sparse as sp

    from .sharding import ShardPlan

from ._memory import bincount_sliced
from .data import Ratings, canonical_int, py_scalar
from .errors import UnknownIdError

__all__ = ["ModelIndex", "pattern_dtype"]

# pairs scored at once: the gathered factor rows stay small whatever the number of pairs
_STEP = 1 << 16


#: Codes counted at once (:func:`~autofact._memory.bincount_sliced`: its int64 copy of a slice, 8 MB).
_COUNT_SLICE = 1 << 20
#: The same for the gathered pattern's check (:meth:`ModelIndex.with_pattern`), beside every
#: process's ratings' pattern on rank 0 (issue 11, item 3: a 0.5 MB copy, not 8).
_PATTERN_COUNT_SLICE = 1 << 16


def pattern_dtype(n_items: int) -> np.dtype:
    """The dtype of a training pattern's column (item) indices for ``n_items`` items: uint16
    when every index fits (``n_items <= 65536``: 2 bytes a rating), int32 otherwise (issue 11,
    item 3: rank 0 holds every process's pattern after a rank-local fit)."""
    return np.dtype(np.uint16) if n_items <= 1 << 16 else np.dtype(np.int32)


def _is_int(v: Any) -> bool:
    """Whether ``v`` is an int id (a Python or NumPy integer, not a bool)."""
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


class ModelIndex:
    """Id maps, seen items, counts, clipping range, inverse link and the unknown-id rule.

    Parameters
    ----------
    user_ids, item_ids : the ids of the factor rows, in order.
    seen : boolean ``len(user_ids) x len(item_ids)`` CSR of the training ratings (or a function
        building it on first use, with ``counts``: the ratings per user and per item).
    rating_range : ``(min, max)`` of the training ratings.
    fallback : the score of a pair whose user and item are both unknown (link scale).
    clip : the range mean-response predictions are clipped to, or ``None``.
    inverse_link : raw score (a tensor) to mean response, or ``None`` for the identity.
    """

    def __init__(
        self,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        seen: sp.csr_matrix | Callable[[], sp.csr_matrix],
        *,
        rating_range: tuple[float, float],
        fallback: float,
        clip: tuple[float, float] | None = None,
        inverse_link: Callable[[torch.Tensor], torch.Tensor] | None = None,
        counts: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.user_ids = np.asarray(user_ids)
        self.item_ids = np.asarray(item_ids)
        shape = (len(self.user_ids), len(self.item_ids))
        self._seen: sp.csr_matrix | None = None
        self._make_seen: Callable[[], sp.csr_matrix] | None = None
        self._pattern: tuple[np.ndarray, np.ndarray] | None = None  # (indptr, indices)
        if callable(seen):
            if counts is None:
                raise ValueError("a seen pattern built on demand needs counts=(users, items)")
            self._make_seen = seen
            self.user_counts, self.item_counts = counts
        else:
            if seen.shape != shape:
                raise ValueError(f"seen has shape {seen.shape}, expected {shape} from the id maps")
            self._seen = seen
            self.user_counts = np.diff(seen.indptr).astype(np.int64)
            self.item_counts = np.bincount(seen.indices, minlength=shape[1]).astype(np.int64)
        self.rating_range = (float(rating_range[0]), float(rating_range[1]))
        self.fallback = float(fallback)
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))
        self.inverse_link = inverse_link
        self._lookups: dict[str, Any] = {}

    @classmethod
    def from_ratings(
        cls,
        ratings: Ratings,
        *,
        fallback: float,
        clip: bool,
        inverse_link: Callable[[torch.Tensor], torch.Tensor] | None = None,
        plan: ShardPlan | None = None,
    ) -> ModelIndex:
        """The index of a model fitted on ``ratings``; ``clip``: clip predictions to the
        ratings' range. ``plan`` (issue 11): when each process holds only its own ratings
        (``plan.local``), the counts and the rating range are taken over every process (the same
        on each), and ``seen`` holds this process's ratings (:meth:`with_pattern` completes
        it)."""
        m, n = ratings.shape
        users, items = ratings.users, ratings.items  # sorted by (user, item)
        indptr = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(bincount_sliced(users, m, _COUNT_SLICE), out=indptr[1:])

        def make_seen() -> sp.csr_matrix:  # built on first use: recommendation, save
            import scipy.sparse as sp  # issue 10: not on import autofact

            return sp.csr_matrix((np.ones(len(items), dtype=bool), items, indptr), shape=(m, n))

        rating_range = (float(ratings.values.min()), float(ratings.values.max()))
        counts = (np.diff(indptr), bincount_sliced(items, n, _COUNT_SLICE))
        if plan is not None and plan.local:
            totals = [torch.from_numpy(counts[0].copy()), torch.from_numpy(counts[1].copy())]
            plan.all_sum(totals)
            counts = (totals[0].numpy(), totals[1].numpy())
            ends = torch.tensor([-rating_range[0], rating_range[1]], dtype=torch.float64)
            plan.all_max([ends])
            rating_range = (-float(ends[0]), float(ends[1]))
        index = cls(ratings.user_ids, ratings.item_ids, make_seen, rating_range=rating_range,
                    fallback=fallback, clip=rating_range if clip else None,
                    inverse_link=inverse_link, counts=counts)
        index._pattern = (indptr, items)
        return index

    def with_pattern(self, indptr: np.ndarray, indices: np.ndarray, *,
                     partial: bool = False) -> ModelIndex:
        """This index with the training pattern ``(indptr, indices)`` (CSR arrays, sorted
        indices: every process's, gathered after a fit on rank-local ratings: issue 11); it must
        give the index's counts (``partial=True``: at most them, per user and per item: some
        users' seen items only, :meth:`require_seen`). ``indices`` is kept as given, uint16 or
        int32 (see :func:`pattern_dtype`; no copy: issue 11, item 3)."""
        m, n = self.n_users, self.n_items
        indptr = np.asarray(indptr, dtype=np.int64)
        cols = np.asarray(indices)
        if cols.dtype not in (np.uint16, np.int32) or cols.ndim != 1:
            raise TypeError(
                f"indices must be a 1-D uint16 or int32 array, got {cols.dtype} with shape "
                f"{cols.shape}; convert it with .astype(autofact.index.pattern_dtype(n_items))"
            )
        if len(cols) and (int(cols.min()) < 0 or int(cols.max()) >= n):
            raise ValueError(
                f"indices must lie in [0, {n}) (the index's items), got "
                f"{int(cols.min())}..{int(cols.max())}"
            )
        per_item = bincount_sliced(cols, n, _PATTERN_COUNT_SLICE)
        if indptr.shape != (m + 1,):
            raise ValueError(f"indptr must have {m + 1} entries, got shape {indptr.shape}")
        per_user = np.diff(indptr)
        if partial:
            fits = bool((per_user <= self.user_counts).all() and (per_user >= 0).all()
                        and (per_item <= self.item_counts).all())
        else:
            fits = (np.array_equal(per_user, self.user_counts)
                    and np.array_equal(per_item, self.item_counts))
        if not fits:
            raise ValueError("the pattern's ratings per user and item differ from the index's")

        def make_seen() -> sp.csr_matrix:
            import scipy.sparse as sp

            return sp.csr_matrix((np.ones(len(cols), dtype=bool), cols, indptr), shape=(m, n))

        out = type(self)(self.user_ids, self.item_ids, make_seen,
                         rating_range=self.rating_range, fallback=self.fallback, clip=self.clip,
                         inverse_link=self.inverse_link,
                         counts=(self.user_counts, self.item_counts))
        out._pattern = (indptr, cols)
        return out

    def seen_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The training pattern's CSR arrays ``(indptr, indices)``, without building the scipy
        matrix when it is not built yet (saving a model needs no scipy: issue 10, cold start);
        the arrays the index was built from when it has them, even once the scipy matrix is built
        (that one's indices are int32: a model saves its compact uint16 pattern as it is,
        issue 11, item 3)."""
        if self._pattern is not None:
            return self._pattern
        return self.seen.indptr, self.seen.indices

    @property
    def pattern_complete(self) -> bool:
        """Whether this index holds every training rating's (user, item) pair. It holds only
        some after a fit on rank-local ratings (:func:`autofact.distributed.fit`: each process
        knows its own users' seen items; issue 11, item 3): such a model is saved with
        :func:`autofact.distributed.save`, and recommends only for the users it holds."""
        indptr, _ = self.seen_arrays()
        return int(indptr[-1]) == self._n_ratings()

    def _n_ratings(self) -> int:
        """The training ratings (summed once: :meth:`require_seen` runs at every
        recommendation)."""
        total = self._lookups.get("n_ratings")
        if total is None:
            total = self._lookups["n_ratings"] = int(self.user_counts.sum())
        return int(total)

    def require_seen(self, users: np.ndarray | None = None, *, action: str) -> None:
        """Raise ``ValueError`` (naming ``action``) unless this index holds every seen item of
        the user indices ``users`` (default: of every user). Trust, issue 11: a model fitted on
        rank-local ratings holds only its own users' seen items; recommending for another
        process's user, or saving or updating such a model, would silently treat that user's
        rated items as unrated."""
        if self.pattern_complete:
            return
        indptr, _ = self.seen_arrays()
        held = np.diff(np.asarray(indptr, dtype=np.int64))
        rows = np.arange(self.n_users) if users is None else np.asarray(users, dtype=np.int64)
        rows = rows[(rows >= 0) & (rows < self.n_users)]
        short = rows[held[rows] < self.user_counts[rows]]
        if len(short) == 0:
            return
        first = py_scalar(self.user_ids[short[0]])
        raise ValueError(
            f"cannot {action}: this model holds the seen items of {int(indptr[-1])} of its "
            f"{self._n_ratings()} training ratings (fitted on rank-local ratings by "
            f"autofact.distributed.fit, it holds its own users' and those gathered with "
            f"gather_seen=); user {first!r} and {len(short) - 1} more rated items that live on "
            "another process. Save it with "
            "autofact.distributed.save(model, path), called on every process, or pass "
            "gather_seen=True (every user) or gather_seen=<user ids> to distributed.fit"
        )

    @property
    def seen(self) -> sp.csr_matrix:
        """The training pattern: a boolean ``n_users x n_items`` CSR, sorted indices."""
        if self._seen is None and self._make_seen is not None:
            self._seen, self._make_seen = self._make_seen(), None
        return self._seen

    def __repr__(self) -> str:
        return (f"<ModelIndex ({len(self.user_ids)} users x {len(self.item_ids)} items, "
                f"{int(self.user_counts.sum())} training ratings)>")

    # ------------------------------------------------------------------ ids
    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def user_index(self, ids: Any, *, strict: bool = True) -> np.ndarray:
        """0-based indices of user ids; an unknown user (not in the id map, or in it with no
        training rating) raises :class:`~autofact.UnknownIdError`, or is ``-1`` when
        ``strict=False``. A scalar id gives an array of one."""
        return self._index(ids, "user", strict)

    def item_index(self, ids: Any, *, strict: bool = True) -> np.ndarray:
        """0-based indices of item ids (``-1`` for unknown when ``strict=False``; see
        :meth:`user_index`)."""
        return self._index(ids, "item", strict)

    def _index(self, ids: Any, what: str, strict: bool) -> np.ndarray:
        scalar = np.ndim(ids) == 0 and not isinstance(ids, list | tuple)
        seq = np.asarray([ids] if scalar else ids if isinstance(ids, np.ndarray) else list(ids))
        if seq.ndim != 1:
            raise ValueError(f"{what} ids must be a scalar or a 1-D sequence, got shape {seq.shape}")
        known = self.user_ids if what == "user" else self.item_ids
        given, seq = seq, self.as_kind_of(seq, what)
        if known.dtype.kind in "iu" and seq.dtype.kind in "iu" \
                and np.can_cast(seq.dtype, known.dtype, "safe"):
            out = self._integer_index(known, seq, what)
        else:  # strings, floats, mixed kinds: pandas' lookup (imported only here, issue 10)
            lookup = self._lookups.get(what)
            if lookup is None:
                import pandas as pd

                lookup = self._lookups[what] = pd.Index(known)
            out = np.asarray(lookup.get_indexer(seq), dtype=np.int64)
        counts = self.user_counts if what == "user" else self.item_counts
        no_rating = (out >= 0) & (counts[np.maximum(out, 0)] == 0)
        if strict and ((out < 0) | no_rating).any():
            k = int(np.flatnonzero((out < 0) | no_rating)[0])
            extra = (" (it is in the id map but has no training rating)" if no_rating[k]
                     else "")
            raise UnknownIdError(f"{what} {py_scalar(given[k])!r} is not in the training data{extra}")
        out[no_rating] = -1
        return out

    def as_kind_of(self, seq: np.ndarray, what: str) -> np.ndarray:
        """``seq`` with each id of the other kind than the id map's (an int where the map holds
        strings, a string where it holds ints) replaced by the id of the map's kind with the same
        canonical text: ``'60'`` becomes ``60`` for an int map, ``60`` becomes ``'60'`` for a
        string map, and ``'007'`` stays ``'007'`` (``str(int('007'))`` is ``'7'``), so it matches
        only ``'007'``, never ``7``.

        Trust: a file's ids are ints only when every one is a canonical integer, so one id such
        as ``007`` in the training file made every training id a string, and a test file of
        plain ``1, 2, 3`` then matched none of them: every pair was "unknown" and the score that
        of the global mean, with only a warning. The text of an id is what the user wrote, and a
        canonical integer's text and its int determine each other, so the match is never
        ambiguous (the CLI's ids reach the model through this too). A map that mixes
        ints and strings (which :meth:`Ratings.from_frame` refuses) is left as it is.
        ``what``: ``'user'`` or ``'item'``, the id map to match."""
        seq = np.asarray(seq)
        known = self.user_ids if what == "user" else self.item_ids
        kind = self._lookups.get(what + ".kind")
        if kind is None:
            if known.dtype.kind in "iu":
                kind = "int"
            elif known.dtype.kind == "U" or (
                    known.dtype.kind == "O" and all(isinstance(k, str) for k in known.tolist())):
                kind = "str"
            else:
                kind = "other"
            self._lookups[what + ".kind"] = kind
        if kind == "int" and seq.dtype.kind in "UO":
            words = seq.tolist()
            if not any(isinstance(w, str) for w in words):
                return seq
            out = np.empty(len(words), dtype=object)
            out[:] = [canonical_int(w) if isinstance(w, str) else w for w in words]
            if all(isinstance(v, int) for v in out.tolist()):
                return out.astype(np.int64)
            return out
        if kind == "str" and seq.dtype.kind in "iu":
            return seq.astype(str).astype(object)
        if kind == "str" and seq.dtype.kind == "O":
            out = np.empty(len(seq), dtype=object)
            out[:] = [str(int(v)) if _is_int(v) else v for v in seq.tolist()]
            return out
        return seq

    def _integer_index(self, known: np.ndarray, seq: np.ndarray, what: str) -> np.ndarray:
        """Positions of integer ids in the (distinct) integer id map ``known``, ``-1`` where
        absent: a binary search in the sorted ids, without importing pandas (its import is 1-2.5
        s of a cold process that validates or predicts; issue 10)."""
        order = self._lookups.get(what + ".order")
        if order is None:
            order = self._lookups[what + ".order"] = (
                None if bool(np.all(known[1:] > known[:-1])) else np.argsort(known, kind="stable"))
        ranked = known if order is None else known[order]
        q = seq.astype(known.dtype, copy=False)
        pos = np.searchsorted(ranked, q)
        hit = pos < len(ranked)
        hit[hit] = ranked[pos[hit]] == q[hit]
        out = np.full(len(q), -1, dtype=np.int64)
        out[hit] = pos[hit] if order is None else order[pos[hit]]
        return out

    def known_items(self) -> np.ndarray:
        """Boolean mask of the items with at least one training rating."""
        return self.item_counts > 0

    # ------------------------------------------------------------------ the scoring rule
    def link_scores(
        self,
        users: np.ndarray,
        items: np.ndarray,
        user_factors: np.ndarray,
        item_factors: np.ndarray,
        user_bias: np.ndarray,
        item_bias: np.ndarray,
        global_mean: float,
    ) -> np.ndarray:
        """Raw scores (float64) of pairs of indices, ``-1`` marking an unknown user or item.

        Known pairs: ``global_mean + user_bias[u] + item_bias[i] + user_factors[u] .
        item_factors[i]`` (in float64, as recommendation's matrix products); a pair with one
        unknown side: the same with the unknown side's factors and bias replaced by their means
        over the known users or items (the known side's average score); both unknown:
        ``fallback``. This is the library's one rule for unknown ids (module docstring).
        """
        u = np.asarray(users, dtype=np.int64)
        i = np.asarray(items, dtype=np.int64)
        if u.shape != i.shape:
            raise ValueError(
                f"users and items must have the same length, got {len(u)} and {len(i)}"
            )
        ku, ki = u >= 0, i >= 0
        uu, ii = np.where(ku, u, 0), np.where(ki, i, 0)
        out = np.empty(len(u), dtype=np.float64)
        for s in range(0, len(u), _STEP):
            a, b = uu[s : s + _STEP], ii[s : s + _STEP]
            out[s : s + _STEP] = np.einsum("ij,ij->i", user_factors[a].astype(np.float64),
                                           item_factors[b].astype(np.float64))
        out += global_mean
        out += user_bias[uu]
        out += item_bias[ii]
        # one side unknown: that side is the average known user or item (issue 9)
        for unknown, known_rows, factors, bias, other, other_rows, other_bias in (
            (~ku & ki, self.user_counts > 0, user_factors, user_bias, item_factors, ii,
             item_bias),
            (ku & ~ki, self.item_counts > 0, item_factors, item_bias, user_factors, uu,
             user_bias),
        ):
            if unknown.any():
                mean_f = np.asarray(factors, dtype=np.float64)[known_rows].mean(0)
                mean_b = float(np.asarray(bias, dtype=np.float64)[known_rows].mean())
                rows = other_rows[unknown]
                out[unknown] = (global_mean + mean_b + other_bias[rows]
                                + np.asarray(other[rows], dtype=np.float64) @ mean_f)
        out[~ku & ~ki] = self.fallback
        return out

    def response(self, scores: np.ndarray) -> np.ndarray:
        """Mean responses from raw scores: the inverse link, then the clipping range."""
        out = np.asarray(scores, dtype=np.float64)
        if self.inverse_link is not None:
            out = self.inverse_link(torch.from_numpy(out)).numpy()
        if self.clip is not None:
            out = np.clip(out, *self.clip)
        return out
