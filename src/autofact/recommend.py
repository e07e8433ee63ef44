"""Recommendation from a fitted model: top-n items, similar items, and folding in a new user.

Items are ranked by the model's raw score ``mu + b_u + b_i + p_u . q_i`` (for all items at once
``P[u] @ Q.T + b^i + mu + b_u``, one matrix product per block of users), and the scores reported
are :meth:`~autofact.MatrixFactorization.predict`'s: the mean response (a rating clipped to the
training range, a rate, a probability; :meth:`~autofact.index.ModelIndex.response`). The ranking
is made on the raw scores, so a monotone link or the clipping never reorders it. By default the
items a user rated in training are left out.

This module works from the model's public attributes: its
:class:`~autofact.index.ModelIndex` (``index_``: ids, seen items, counts, the unknown-id rule,
the inverse link and clipping) and its factors.

:func:`fold_in` gives a user who was not in the training data (or new ratings of one who was) a
factor vector and bias without refitting: with the item factors ``Q``, item biases ``b^i`` and
global mean ``mu`` frozen, it solves

.. math::

    \\min_{p, b} \\sum_{i \\in I} \\ell(\\mu + b + b^i_i + p \\cdot q_i,\\ r_i) + R(p) + R(b)

with the model's own loss ``ell`` and regularizer ``R`` (the user's slice of the training
objective), by damped Newton steps with gradient and Hessian from autograd. The result, a
:class:`FoldedUser`, goes wherever a user id goes in :meth:`~autofact.MatrixFactorization.recommend` and
:meth:`~autofact.MatrixFactorization.score_items`.

>>> model.recommend(196, n=5)
<Recommendations for user 196: 5 items [1449, 1398, 408, 318, 169]>
>>> new = model.fold_in({50: 5, 181: 4, 1: 1}, user="alice")
>>> model.recommend(new, n=5).to_frame()
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ._imports import NotLoaded
from ._newton import damped_newton
from .data import py_scalar
from .errors import FitError, UnknownIdError
from .index import ModelIndex
from .losses import get_loss
from .regularizers import get_regularizer

__all__ = [
    "off_scale",
    "Recommendations",
    "SimilarItems",
    "FoldedUser",
    "recommend",
    "recommend_batch",
    "similar_items",
    "score_items",
    "fold_in",
    "top_items",
]

# scores of at most this many floats are held at once by recommend_batch (64 MiB in float64)
_BLOCK_FLOATS = 2**23


class FittedModel(Protocol):
    """What recommendation reads from a fitted model (all public attributes)."""

    index_: ModelIndex
    user_factors_: np.ndarray
    item_factors_: np.ndarray
    user_bias_: np.ndarray
    item_bias_: np.ndarray
    global_mean_: float
    loss: Any
    regularization: Any
    beta: float
    bias: bool


def _index(model: FittedModel) -> ModelIndex:
    index = getattr(model, "index_", None)
    if not isinstance(index, ModelIndex) or not hasattr(model, "user_factors_"):
        raise RuntimeError(
            f"this {type(model).__name__} is not fitted yet; call fit(ratings) first"
        )
    return index


def _short(values: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(repr(v.item() if isinstance(v, np.generic) else v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


@dataclass(frozen=True, eq=False, repr=False)
class Recommendations:
    """The top items for one user, best first.

    ``user`` is the user's id (a :class:`FoldedUser`'s ``label``), ``items`` the item ids,
    ``scores`` the model's predictions for them (as :meth:`~autofact.MatrixFactorization.predict`:
    the mean response), and ``fallback`` ``None`` or how the list was made without the user's
    factors (``'popularity'``: the items with the most training ratings, scored by that count).
    """

    user: Any
    items: np.ndarray
    scores: np.ndarray
    fallback: str | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        fb = f", fallback={self.fallback!r}" if self.fallback else ""
        return (f"<Recommendations for user {py_scalar(self.user)!r}: {len(self)} items "
                f"{_short(self.items)}{fb}>")

    def to_frame(self) -> Any:
        """A DataFrame with columns user, rank (1 = best), item, score."""
        import pandas as pd

        return pd.DataFrame({
            "user": [self.user] * len(self),
            "rank": np.arange(1, len(self) + 1),
            "item": self.items,
            "score": self.scores,
        })


@dataclass(frozen=True, eq=False, repr=False)
class SimilarItems:
    """The items closest to ``item`` by cosine similarity of factor vectors, most similar first."""

    item: Any
    items: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return (f"<SimilarItems to item {py_scalar(self.item)!r}: {len(self)} items "
                f"{_short(self.items)}>")

    def to_frame(self) -> Any:
        """A DataFrame with columns item, rank (1 = most similar), similar, score."""
        import pandas as pd

        return pd.DataFrame({
            "item": [self.item] * len(self),
            "rank": np.arange(1, len(self) + 1),
            "similar": self.items,
            "score": self.scores,
        })


@dataclass(frozen=True, eq=False, repr=False)
class FoldedUser:
    """A user fitted against a model's frozen item side by :func:`fold_in`.

    ``factors`` (length ``rank``) and ``bias`` play the roles of a row of ``user_factors_`` and
    ``user_bias_``; ``seen`` holds the indices of the items the user rated (left out of their
    recommendations), ``label`` whatever was passed as ``user``, and ``n_iter`` the Newton
    iterations taken.
    """

    factors: np.ndarray
    bias: float
    seen: np.ndarray
    label: Any = None
    n_iter: int = field(default=0)

    def __repr__(self) -> str:
        return (f"<FoldedUser {py_scalar(self.label)!r} ({len(self.factors)} factors, "
                f"{len(self.seen)} rated items)>")


# ---------------------------------------------------------------------------- argument checks
def _check_n(n: Any) -> int:
    if not (isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 1):
        raise ValueError(f"n must be a positive int, got {n!r}")
    return int(n)


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _is_many(x: Any) -> bool:
    return isinstance(x, list | tuple | set | frozenset) or (
        isinstance(x, np.ndarray) and x.ndim != 0
    )


def _check_folded(model: FittedModel, user: FoldedUser) -> None:
    k = model.user_factors_.shape[1]
    if np.shape(user.factors) != (k,):
        raise ValueError(
            f"this FoldedUser has {np.size(user.factors)} factors but the model has rank {k}; "
            "fold the user in with this model (model.fold_in(ratings))"
        )
    if len(user.seen) and int(np.max(user.seen)) >= model.index_.n_items:
        raise ValueError(
            "this FoldedUser rated item indices beyond this model's items; fold the user in "
            "with this model (model.fold_in(ratings))"
        )


def _unknown_user(user: Any) -> UnknownIdError:
    return UnknownIdError(
        f"user {py_scalar(user)!r} is not in the training data; pass fallback=True for the most "
        "popular items, or model.fold_in(their_ratings) to score them"
    )


# ---------------------------------------------------------------------------- scoring core
def _item_side(model: FittedModel) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray(model.item_factors_, dtype=np.float64),
            np.asarray(model.item_bias_, dtype=np.float64))


def _user_scores(model: FittedModel, users: np.ndarray) -> np.ndarray:
    """Raw scores ``(len(users), n_items)`` for user indices: ``P[u] @ Q.T + b^i + mu + b_u``."""
    Q, bi = _item_side(model)
    P = np.asarray(model.user_factors_[users], dtype=np.float64)
    S = P @ Q.T
    S += bi
    S += (model.global_mean_ + np.asarray(model.user_bias_[users], dtype=np.float64))[:, None]
    return S


def _folded_scores(model: FittedModel, user: FoldedUser) -> np.ndarray:
    Q, bi = _item_side(model)
    return Q @ np.asarray(user.factors, dtype=np.float64) + bi + (model.global_mean_ + user.bias)


def _unrated_items(model: FittedModel) -> np.ndarray:
    """Indices of the items with no training rating (possible when the shape was given larger
    than the data): their factors are the random start, so they are never ranked."""
    return np.flatnonzero(~model.index_.known_items())


def _top_rows(S: np.ndarray, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per row, the indices of the ``n`` largest finite entries, best first (ties: lower index)."""
    n_cols = S.shape[1]
    n = min(n, n_cols)
    if n < n_cols:
        part = np.argpartition(-S, n - 1, axis=1)[:, :n]
    else:
        part = np.broadcast_to(np.arange(n_cols), S.shape).copy()
    vals = np.take_along_axis(S, part, axis=1)
    order = np.lexsort((part, -vals), axis=-1)
    part = np.take_along_axis(part, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    items, scores = [], []
    for row_i, row_v in zip(part, vals, strict=True):
        ok = np.isfinite(row_v)
        items.append(row_i[ok])
        scores.append(row_v[ok])
    return items, scores


def top_items(
    model: FittedModel,
    users: np.ndarray,
    n: int,
    *,
    exclude_seen: bool = True,
    extra: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Item indices and raw scores (the link scale) of the top ``n`` for each user index in
    ``users``.

    One matrix product per block of users (at most ``2**23`` scores at once); training items are
    left out when ``exclude_seen``, and so are the ``(user index, item index)`` pairs in ``extra``.
    A list is shorter than ``n`` when fewer items remain.
    """
    import scipy.sparse as sp

    index = _index(model)
    users = np.asarray(users, dtype=np.int64)
    n_items = index.n_items
    if exclude_seen:  # trust (issue 11): never as if another process's user rated nothing
        index.require_seen(users, action="leave out the users' rated items")
    seen = index.seen if exclude_seen else None
    extra_csr = None
    if extra is not None and len(extra[0]):
        extra_csr = sp.csr_matrix(
            (np.ones(len(extra[0]), dtype=bool), (extra[0], extra[1])),
            shape=(index.n_users, n_items),
        )
    block = max(1, _BLOCK_FLOATS // max(n_items, 1))
    unrated = _unrated_items(model)
    items: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for start in range(0, len(users), block):
        u = users[start : start + block]
        S = _user_scores(model, u)
        S[:, unrated] = -np.inf
        for mask in (seen, extra_csr):
            if mask is not None:
                coo = mask[u].tocoo()
                S[coo.row, coo.col] = -np.inf
        it, sc = _top_rows(S, n)
        items += it
        scores += sc
    return items, scores


def _popular(model: FittedModel, n: int) -> tuple[np.ndarray, np.ndarray]:
    counts = model.index_.item_counts.astype(np.float64)
    it, sc = _top_rows(counts[None, :], n)
    return it[0], sc[0]


# ---------------------------------------------------------------------------- public functions
def recommend(
    model: FittedModel,
    user: Any,
    n: int = 10,
    *,
    exclude_seen: bool = True,
    fallback: bool = False,
) -> Recommendations:
    """The ``n`` highest-scoring items for one user id or :class:`FoldedUser`.

    ``exclude_seen`` leaves out the items the user rated in training (a FoldedUser: the items it
    was folded in with). An id that is not in the training data raises
    :class:`~autofact.UnknownIdError`, unless ``fallback=True``: then the result is the ``n`` most
    popular items (most training ratings) with ``fallback='popularity'``.
    """
    index = _index(model)
    n = _check_n(n)
    exclude_seen = _check_bool(exclude_seen, "exclude_seen")
    fallback = _check_bool(fallback, "fallback")
    if isinstance(user, FoldedUser):
        _check_folded(model, user)
        S = _folded_scores(model, user)
        S[_unrated_items(model)] = -np.inf
        if exclude_seen:
            S[user.seen] = -np.inf
        it, sc = _top_rows(S[None, :], n)
        return Recommendations(user.label, index.item_ids[it[0]], index.response(sc[0]))
    if _is_many(user):
        raise TypeError(
            f"user must be one user id or a FoldedUser, got a {type(user).__name__}; use "
            "recommend_batch(users) for several users"
        )
    idx = int(index.user_index(user, strict=False)[0])
    if idx < 0:
        if not fallback:
            raise _unknown_user(user)
        items, counts = _popular(model, n)
        return Recommendations(user, index.item_ids[items], counts, fallback="popularity")
    its, scs = top_items(model, np.array([idx]), n, exclude_seen=exclude_seen)
    return Recommendations(user, index.item_ids[its[0]], index.response(scs[0]))


def recommend_batch(
    model: FittedModel,
    users: Iterable[Any],
    n: int = 10,
    *,
    exclude_seen: bool = True,
    fallback: bool = False,
) -> list[Recommendations]:
    """:func:`recommend` for each of ``users`` (ids), computed a block of users at a time with one
    matrix product per block; the same result as one call per user."""
    index = _index(model)
    n = _check_n(n)
    exclude_seen = _check_bool(exclude_seen, "exclude_seen")
    fallback = _check_bool(fallback, "fallback")
    if isinstance(users, str | bytes | FoldedUser) or not isinstance(users, Iterable) or (
        isinstance(users, np.ndarray) and users.ndim != 1
    ):
        raise TypeError(
            f"users must be a sequence of user ids, got {type(users).__name__}; use "
            "recommend(user) for one user"
        )
    ids = users if isinstance(users, np.ndarray) else list(users)
    if len(ids) == 0:
        return []
    if any(isinstance(u, FoldedUser) for u in ids):
        raise TypeError(
            "users must be user ids; pass a FoldedUser to recommend(folded_user) one at a time"
        )
    idx = index.user_index(ids, strict=False)
    known = np.flatnonzero(idx >= 0)
    if len(known) < len(idx):
        if not fallback:
            raise _unknown_user(ids[int(np.flatnonzero(idx < 0)[0])])
        pop_items, pop_counts = _popular(model, n)
    out: list[Recommendations | None] = [None] * len(idx)
    its, scs = top_items(model, idx[known], n, exclude_seen=exclude_seen)
    for row, j in enumerate(known):
        out[j] = Recommendations(ids[j], index.item_ids[its[row]], index.response(scs[row]))
    for j in np.flatnonzero(idx < 0):
        out[j] = Recommendations(ids[j], index.item_ids[pop_items], pop_counts.copy(),
                                 fallback="popularity")
    return out  # type: ignore[return-value]


def similar_items(model: FittedModel, item: Any, n: int = 10) -> SimilarItems:
    """The ``n`` items whose factor vectors have the highest cosine similarity with ``item``'s
    (the item itself left out; an all-zero factor vector has similarity 0 with everything)."""
    index = _index(model)
    n = _check_n(n)
    if _is_many(item):
        raise TypeError(f"item must be one item id, got a {type(item).__name__}")
    idx = int(index.item_index(item, strict=False)[0])
    if idx < 0:
        raise UnknownIdError(f"item {py_scalar(item)!r} is not in the training data")
    Q = np.asarray(model.item_factors_, dtype=np.float64)
    norms = np.linalg.norm(Q, axis=1)
    Qn = Q / np.where(norms > 0, norms, 1.0)[:, None]
    S = Qn @ Qn[idx]
    S[idx] = -np.inf
    S[_unrated_items(model)] = -np.inf
    it, sc = _top_rows(S[None, :], n)
    return SimilarItems(item, index.item_ids[it[0]], sc[0])


def score_items(model: FittedModel, user: Any, items: Any = None) -> np.ndarray:
    """Predictions of one user id or :class:`FoldedUser` for ``items`` (ids; ``None``: every
    item, in the order of ``model.item_ids_``), the same as
    :meth:`~autofact.MatrixFactorization.predict` (the mean response, clipped for regression
    losses). Unknown ids raise :class:`~autofact.UnknownIdError`; with ``items=None``, an item
    without training ratings gets predict's fallback (the index's unknown-id rule)."""
    index = _index(model)
    if isinstance(user, FoldedUser):
        _check_folded(model, user)
        P = np.asarray(user.factors, dtype=np.float64)[None, :]
        bu = np.array([user.bias], dtype=np.float64)
        idx = 0
    else:
        if _is_many(user):
            raise TypeError(
                f"user must be one user id or a FoldedUser, got a {type(user).__name__}; use "
                "predict(users, items) for pairs"
            )
        idx = int(index.user_index(user, strict=False)[0])
        if idx < 0:
            raise UnknownIdError(
                f"user {py_scalar(user)!r} is not in the training data; use "
                "model.fold_in(their_ratings) to score them"
            )
        P, bu = model.user_factors_, model.user_bias_
    if items is None:  # items with no training rating: -1, the fallback of the one rule
        cols = np.where(index.known_items(), np.arange(index.n_items), -1)
    else:
        cols = index.item_index(items, strict=True)
    S = index.link_scores(np.full(len(cols), idx), cols, P, model.item_factors_, bu,
                          model.item_bias_, float(model.global_mean_))
    return index.response(S)


def _parse_ratings(ratings: Any) -> tuple[list[Any], np.ndarray]:
    """``(item ids, values)`` from a dict, a DataFrame with item/rating columns, or pairs."""
    try:
        import pandas as pd

        is_frame = isinstance(ratings, pd.DataFrame)
    except ImportError:  # pragma: no cover - pandas is a dependency
        is_frame = False
    if isinstance(ratings, dict):
        items, vals = list(ratings.keys()), list(ratings.values())
    elif is_frame:
        missing = [c for c in ("item", "rating") if c not in ratings.columns]
        if missing:
            raise ValueError(
                f"a ratings DataFrame needs columns 'item' and 'rating'; it lacks {missing!r} "
                f"(its columns are {list(ratings.columns)!r}); rename them first"
            )
        items, vals = ratings["item"].tolist(), ratings["rating"].tolist()
    elif isinstance(ratings, Sequence | np.ndarray) and not isinstance(ratings, str | bytes):
        items, vals = [], []
        for k, pair in enumerate(ratings):
            if isinstance(pair, str | bytes) or np.ndim(pair) != 1 or len(pair) != 2:
                raise ValueError(
                    f"ratings[{k}] must be an (item, rating) pair, got {pair!r}; pass a dict "
                    "item -> rating, a list of (item, rating) pairs, or a DataFrame"
                )
            items.append(pair[0])
            vals.append(pair[1])
    else:
        raise TypeError(
            f"ratings must be a dict item -> rating, a sequence of (item, rating) pairs or a "
            f"DataFrame with item and rating columns, got {type(ratings).__name__}"
        )
    if not items:
        raise ValueError("ratings is empty: fold_in needs at least one (item, rating)")
    for item, v in zip(items, vals, strict=True):
        if isinstance(v, str | bytes):  # trust: "5" was read as 5.0 without a word
            raise TypeError(
                f"the rating of item {py_scalar(item)!r} is the string {v!r}; ratings must be "
                f"numbers: convert them first (for example {{{py_scalar(item)!r}: "
                f"float({v!r})}})"
            )
    try:
        values = np.asarray(vals, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"ratings must be numbers, got {vals[:5]!r}") from exc
    bad = ~np.isfinite(values)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"the rating of item {py_scalar(items[k])!r} must be finite, got {vals[k]!r}")
    return items, values


def off_scale(values: Any, rating_range: tuple[float, float]) -> np.ndarray:
    """Which of ``values`` are off the scale of a model's training ratings ``rating_range``
    (``(low, high)``): beyond it by more than a tenth of its width (a 5 for continuous training
    ratings up to 4.99 is no alarm, a 50 for a 1-5 model is), or by any amount where every
    training rating had one value. Fold-in warns about these (trust), and so does the CLI."""
    low, high = float(rating_range[0]), float(rating_range[1])
    slack = 0.1 * (high - low)
    v = np.asarray(values, dtype=np.float64)
    return (v < low - slack) | (v > high + slack)


def fold_in(
    model: FittedModel,
    ratings: Any,
    user: Any = None,
    *,
    max_iter: int = 50,
) -> FoldedUser:
    """Fit one user's factor vector and bias to ``ratings`` against the model's frozen items.

    ``ratings``: a dict ``item id -> rating``, a sequence of ``(item id, rating)`` pairs, or a
    DataFrame with ``item`` and ``rating`` columns. Items the model does not know are ignored
    (with one warning); if none is known this raises ``ValueError``. ``user`` is a label kept on
    the result. Minimizes the objective in the module docstring (with the fit's unobserved term,
    over every item, when the model has ``unobserved_weight > 0``) by damped Newton steps in
    float64 (gradient and Hessian from autograd; at most ``max_iter`` iterations), so it needs
    no optimizer and a first call in a fresh process costs milliseconds.
    """
    index = _index(model)
    if not (isinstance(max_iter, int | np.integer) and not isinstance(max_iter, bool)
            and max_iter >= 1):
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    for what in (model.loss, model.regularization):
        if isinstance(what, NotLoaded):  # a loaded model's user function: ask for it
            raise ValueError(f"fold_in needs the model's {what.what}: {what.message}")
    items, values = _parse_ratings(ratings)
    ids = np.empty(len(items), dtype=object)  # keeps mixed id types apart (110 vs 'new')
    ids[:] = items
    idx = index.item_index(ids, strict=False)
    unknown = idx < 0
    if unknown.all():
        raise ValueError(
            f"none of the {len(items)} rated items is in the training data (first: "
            f"{py_scalar(items[0])!r}); fold_in needs ratings of items the model knows"
        )
    if unknown.any():
        first = py_scalar(items[int(np.flatnonzero(unknown)[0])])
        warnings.warn(
            f"{int(unknown.sum())} of {len(items)} rated items are not in the training data "
            f"(first: {first!r}); they are ignored",
            UserWarning,
            stacklevel=3,
        )
    kept_items = [it for it, u in zip(items, unknown.tolist(), strict=True) if not u]
    idx, values = idx[~unknown], values[~unknown]
    low, high = index.rating_range
    outside = np.flatnonzero(off_scale(values, (low, high)))
    if len(outside) and getattr(model, "task", "rating") == "rating":
        # trust: ratings on another scale (50 for a 1-5 model) were folded in silently, and
        # every score of that user then clipped to the top of the range
        j = int(outside[0])
        warnings.warn(
            f"{len(outside)} of the {len(values)} ratings lie outside the training ratings' "
            f"range [{low:g}, {high:g}] (first: {values[j]:g} for item "
            f"{py_scalar(kept_items[j])!r}); give them on the scale the model was fitted on",
            UserWarning,
            stacklevel=3,
        )
    uniq, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        dup = index.item_ids[uniq[np.flatnonzero(counts > 1)[0]]]
        raise ValueError(f"item {py_scalar(dup)!r} is rated more than once; give each item once")
    if getattr(model, "task", "rating") == "ranking":
        return _fold_in_ranking(model, idx, values, user)

    loss = get_loss(model.loss)
    reg = get_regularizer(model.regularization, model.beta)
    f64 = torch.float64
    Q = torch.from_numpy(np.asarray(model.item_factors_[idx], dtype=np.float64))
    offset = torch.from_numpy(np.asarray(model.item_bias_[idx], dtype=np.float64)
                              + model.global_mean_)
    r = torch.from_numpy(values).to(f64)
    k = Q.shape[1]
    x = torch.zeros(k + int(bool(model.bias)), dtype=f64)
    # issue 9: with SVD++'s implicit term the user's factor is the free part x[:k] plus the
    # normalized sum of the implicit factors y_j of the items they rated (the free part is
    # regularized, as in the fit)
    Y = getattr(model, "implicit_factors_", None)
    base = torch.zeros(k, dtype=f64) if Y is None else torch.from_numpy(
        np.asarray(Y[idx], dtype=np.float64).sum(0) / math.sqrt(len(idx)))
    # issue 12: the fit's unobserved term, w0 times the sum over the items the user did not
    # rate of their prediction squared (every item's prediction, less the rated ones')
    w0 = float(getattr(model, "unobserved_weight", 0.0) or 0.0)
    if w0:
        Qall = torch.from_numpy(np.asarray(model.item_factors_, dtype=np.float64))
        offset_all = torch.from_numpy(np.asarray(model.item_bias_, dtype=np.float64)
                                      + model.global_mean_)

    def objective(x: torch.Tensor) -> torch.Tensor:
        p = x[:k] + base
        pred = Q @ p + offset
        penalty = reg(x[:k])
        if model.bias:
            pred = pred + x[k]
            penalty = penalty + reg(x[k:])
        if w0:
            every = Qall @ p + offset_all + (x[k] if model.bias else 0.0)
            penalty = penalty + w0 * ((every * every).sum() - (pred * pred).sum())
        return loss(pred, r).sum() + penalty

    with torch.enable_grad():
        final, n_iter = damped_newton(lambda z: float(objective(z)),
                                      lambda z: _gradient_and_hessian(objective, z), x, max_iter)
    sol = x.detach().numpy().copy()
    if not (math.isfinite(final) and np.isfinite(sol).all()):
        raise FitError(
            f"fold_in's objective became non-finite ({final!r}); check the ratings' scale "
            "against the model's loss"
        )
    return FoldedUser(
        factors=sol[:k] + base.numpy(),
        bias=float(sol[k]) if model.bias else 0.0,
        seen=np.sort(idx).astype(np.int64),
        label=user,
        n_iter=n_iter,
    )



def _fold_in_ranking(model: FittedModel, idx: np.ndarray, values: np.ndarray,
                     user: Any) -> FoldedUser:
    """fold_in for ``task='ranking'`` (issue 12): the exact implicit-ALS row solve against every
    item (the all-unobserved term included), as the fit's own user half-sweep."""
    from .ranking import RANKING_DEFAULTS, fold_in_row

    if model.loss != "squared":
        raise ValueError(
            f"fold_in for task='ranking' solves the implicit-feedback ALS row; a model trained "
            f"with loss={model.loss!r} has no such row: refit with the user's interactions, or "
            "use loss='squared' (the ranking default)"
        )
    alpha = float(getattr(model, "alpha", RANKING_DEFAULTS["alpha"]))
    x = fold_in_row(model.item_factors_, idx, values, alpha=alpha, beta=float(model.beta))
    return FoldedUser(factors=x, bias=0.0, seen=np.sort(idx).astype(np.int64), label=user,
                      n_iter=1)


def _gradient_and_hessian(f: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from torch.autograd.functional import hessian

    xg = x.detach().requires_grad_()
    (g,) = torch.autograd.grad(f(xg), xg)
    return g, hessian(f, x.detach())
