"""Evaluation: seeded train/test splits of :class:`~autofact.Ratings`, error and ranking metrics.

Every split returns ``(train, test)`` built with :meth:`Ratings.subset`, so both keep the full
shape and the same user/item id maps as the input (a model fitted on ``train`` knows every id in
``test``). The same ``seed`` gives the same split.

Ranking metrics are pure functions over ranked lists: ``ranked[u]`` is the list of items shown to
user ``u`` (best first, distinct) and ``relevant[u]`` the set of items that count as hits. With
``hit_j = [ranked[u][j] in relevant[u]]`` and ``R = |relevant[u]|``:

.. math::

    P@k = \\frac{1}{k} \\sum_{j<k} hit_j \\qquad
    R@k = \\frac{1}{R} \\sum_{j<k} hit_j \\qquad
    nDCG@k = \\frac{\\sum_{j<k} hit_j / \\log_2(j+2)}{\\sum_{j<\\min(k,R)} 1/\\log_2(j+2)} \\qquad
    AP@k = \\frac{1}{\\min(k,R)} \\sum_{j<k} hit_j \\, P@(j+1)

each averaged over the users with at least one relevant item (``nan`` when there are none).

>>> train, test = random_split(ratings, test_fraction=0.2, seed=0)
>>> model = MatrixFactorization(rank=10).fit(train)
>>> evaluate(model, test, k=10)
{'rmse': 0.93, 'mae': 0.73, 'precision@10': 0.08, ..., 'n_users': 459, 'n_ratings': 20000}
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from .data import Ratings

__all__ = [
    "random_split",
    "per_user_split",
    "leave_last_out",
    "kfold",
    "rmse",
    "mae",
    "precision_at_k",
    "recall_at_k",
    "ndcg_at_k",
    "map_at_k",
    "evaluate",
    "cross_validate",
]

Split = tuple[Ratings, Ratings]


# ---------------------------------------------------------------------------- argument checks
def _check_ratings(ratings: Any, name: str = "ratings") -> Ratings:
    if not isinstance(ratings, Ratings):
        raise TypeError(
            f"{name} must be an autofact.Ratings, got {type(ratings).__name__}; build one with "
            "Ratings.from_frame / from_sparse / from_dense or autofact.read"
        )
    return ratings


def _is_real(x: Any) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)


def _check_fraction(test_fraction: Any) -> float:
    if not (_is_real(test_fraction) and 0 < test_fraction < 1):
        raise ValueError(
            f"test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}"
        )
    return float(test_fraction)


def _check_int(value: Any, name: str, minimum: int) -> int:
    if not (isinstance(value, int | np.integer) and not isinstance(value, bool)
            and value >= minimum):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _rng(seed: Any) -> np.random.Generator:
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng(_check_int(seed, "seed", 0))


def _split(ratings: Ratings, test: np.ndarray, what: str) -> Split:
    n_test = int(test.sum())
    if n_test == 0:
        raise ValueError(
            f"{what} puts no rating in the test set ({len(ratings)} ratings); use a larger "
            "test_fraction or more ratings per user"
        )
    if n_test == len(ratings):
        raise ValueError(f"{what} puts every rating in the test set; use a smaller test_fraction")
    return ratings.subset(~test), ratings.subset(test)


def _rank_within_user(users: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Position of each rating within its user when sorted by ``keys`` (as in ``np.lexsort``: the
    last key is the primary one)."""
    order = np.lexsort((*keys, users))
    counts = np.bincount(users, minlength=int(users.max()) + 1)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(len(users), dtype=np.int64)
    rank[order] = np.arange(len(users)) - starts[users[order]]
    return rank


# ---------------------------------------------------------------------------- splits
def random_split(ratings: Ratings, test_fraction: float = 0.2, seed: int | None = 0) -> Split:
    """``(train, test)``: ``round(test_fraction * nnz)`` ratings drawn uniformly for ``test``."""
    ratings = _check_ratings(ratings)
    f = _check_fraction(test_fraction)
    n_test = int(round(f * len(ratings)))
    test = np.zeros(len(ratings), dtype=bool)
    test[_rng(seed).permutation(len(ratings))[:n_test]] = True
    return _split(ratings, test, f"random_split(test_fraction={test_fraction!r})")


def per_user_split(ratings: Ratings, test_fraction: float = 0.2, seed: int | None = 0) -> Split:
    """``(train, test)`` split within each user: about ``test_fraction`` of each user's ratings go
    to ``test``, and every user with at least 2 ratings keeps at least one in ``train``.

    A user with ``c`` ratings gives ``floor(test_fraction * c + U)`` of them to ``test``
    (``U`` uniform in ``[0, 1)``, so the expected fraction is exact even for small ``c``), at most
    ``c - 1``; a user with a single rating keeps it in ``train``.
    """
    ratings = _check_ratings(ratings)
    f = _check_fraction(test_fraction)
    rng = _rng(seed)
    counts = np.bincount(ratings.users, minlength=ratings.n_users)
    n_test = np.floor(f * counts + rng.random(len(counts))).astype(np.int64)
    n_test = np.clip(n_test, 0, np.maximum(counts - 1, 0))
    rank = _rank_within_user(ratings.users, rng.random(len(ratings)))
    test = rank < n_test[ratings.users]
    return _split(ratings, test, f"per_user_split(test_fraction={test_fraction!r})")


def leave_last_out(ratings: Ratings, n: int = 1) -> Split:
    """``(train, test)`` with each user's ``n`` latest ratings (by timestamp) in ``test``.

    A user keeps at least one rating in ``train``: one with ``c <= n`` ratings gives only its
    ``c - 1`` latest. Equal timestamps are ordered by item index (the later index counts as later).
    """
    ratings = _check_ratings(ratings)
    n = _check_int(n, "n", 1)
    if ratings.timestamps is None:
        raise ValueError(
            "leave_last_out needs timestamps, but these ratings have none (timestamps is None); "
            "build them with Ratings.from_frame(..., timestamp='column') or read a file with a "
            "timestamp column, or use per_user_split"
        )
    counts = np.bincount(ratings.users, minlength=ratings.n_users)
    # rank 0 is the latest: by decreasing timestamp, ties by decreasing position
    rank = _rank_within_user(ratings.users, -np.arange(len(ratings)), -ratings.timestamps)
    take = np.minimum(n, np.maximum(counts - 1, 0))
    test = rank < take[ratings.users]
    return _split(ratings, test, f"leave_last_out(n={n!r})")


def kfold(ratings: Ratings, folds: int = 5, seed: int | None = 0) -> Iterator[Split]:
    """Yield ``folds`` pairs ``(train, test)``; the test sets partition the ratings.

    The ratings are shuffled once (by ``seed``) and cut into ``folds`` parts of sizes differing
    by at most one; fold ``f`` tests on part ``f`` and trains on the rest.
    """
    ratings = _check_ratings(ratings)
    folds = _check_int(folds, "folds", 2)
    if folds > len(ratings):
        raise ValueError(
            f"folds={folds} is more than the number of ratings ({len(ratings)}); use at most "
            f"{len(ratings)} folds"
        )
    parts = np.array_split(_rng(seed).permutation(len(ratings)), folds)
    for part in parts:
        test = np.zeros(len(ratings), dtype=bool)
        test[part] = True
        yield ratings.subset(~test), ratings.subset(test)


# ---------------------------------------------------------------------------- error metrics
def _pair(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64).ravel()
    t = np.asarray(target, dtype=np.float64).ravel()
    if p.shape != t.shape:
        raise ValueError(
            f"pred and target must have the same length, got {p.size} and {t.size}"
        )
    if p.size == 0:
        raise ValueError("pred and target are empty: at least one pair is needed")
    return p, t


def rmse(pred: Any, target: Any) -> float:
    """Root mean squared error ``sqrt(mean((pred - target)**2))``."""
    p, t = _pair(pred, target)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def mae(pred: Any, target: Any) -> float:
    """Mean absolute error ``mean(|pred - target|)``."""
    p, t = _pair(pred, target)
    return float(np.mean(np.abs(p - t)))


# ---------------------------------------------------------------------------- ranking metrics
def _ranking_pairs(
    ranked: Sequence[Sequence[Any]], relevant: Sequence[Iterable[Any]], k: Any
) -> tuple[int, list[tuple[list[Any], set[Any]]]]:
    k = _check_int(k, "k", 1)
    if len(ranked) != len(relevant):
        raise ValueError(
            f"ranked and relevant must have one entry per user, got {len(ranked)} and "
            f"{len(relevant)}"
        )
    pairs: list[tuple[list[Any], set[Any]]] = []
    for items, rel in zip(ranked, relevant, strict=True):
        rel_set = set(rel)
        if rel_set:
            pairs.append((list(items)[:k], rel_set))
    return k, pairs


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def precision_at_k(
    ranked: Sequence[Sequence[Any]], relevant: Sequence[Iterable[Any]], k: int
) -> float:
    """Mean over users of ``(hits in the top k) / k`` (a list shorter than ``k`` still divides by
    ``k``)."""
    k, pairs = _ranking_pairs(ranked, relevant, k)
    return _mean([sum(i in rel for i in top) / k for top, rel in pairs])


def recall_at_k(
    ranked: Sequence[Sequence[Any]], relevant: Sequence[Iterable[Any]], k: int
) -> float:
    """Mean over users of ``(hits in the top k) / |relevant|``."""
    k, pairs = _ranking_pairs(ranked, relevant, k)
    return _mean([sum(i in rel for i in top) / len(rel) for top, rel in pairs])


def ndcg_at_k(
    ranked: Sequence[Sequence[Any]], relevant: Sequence[Iterable[Any]], k: int
) -> float:
    """Mean over users of DCG@k / IDCG@k with binary relevance and a ``log2(rank + 1)`` discount;
    the ideal list has ``min(k, |relevant|)`` hits."""
    k, pairs = _ranking_pairs(ranked, relevant, k)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    out = []
    for top, rel in pairs:
        dcg = sum(disc[j] for j, i in enumerate(top) if i in rel)
        out.append(float(dcg / disc[: min(k, len(rel))].sum()))
    return _mean(out)


def map_at_k(
    ranked: Sequence[Sequence[Any]], relevant: Sequence[Iterable[Any]], k: int
) -> float:
    """Mean over users of AP@k: the precision at each hit's rank, summed over the hits in the top
    ``k`` and divided by ``min(k, |relevant|)``."""
    k, pairs = _ranking_pairs(ranked, relevant, k)
    out = []
    for top, rel in pairs:
        hits, total = 0, 0.0
        for j, i in enumerate(top):
            if i in rel:
                hits += 1
                total += hits / (j + 1)
        out.append(total / min(k, len(rel)))
    return _mean(out)


# ---------------------------------------------------------------------------- model evaluation
def evaluate(
    model: Any,
    test: Ratings,
    k: int = 10,
    threshold: float = 4.0,
    exclude: Ratings | None = None,
) -> dict[str, float]:
    """Error and top-``k`` ranking metrics of a fitted model on ``test``.

    ``rmse``/``mae`` compare ``model.predict`` with every test rating (an id the model has not
    seen gets the model's usual fallback and warning): the RMSE is ``-model.score(test)``. For the
    ranking metrics each test user known to the model gets the model's top ``k`` over all items
    except those it rated in training (and those it has in ``exclude``, e.g. a validation set,
    when given); its relevant items are its test items rated ``>= threshold``; users with no
    relevant item are left out.

    Returns ``{'rmse', 'mae', 'precision@k', 'recall@k', 'ndcg@k', 'map@k', 'n_users',
    'n_ratings'}`` with ``k`` written out (``'precision@10'``), ``n_users`` the users ranked and
    ``n_ratings`` the test ratings scored. A ``task='ranking'`` model predicts a preference
    score, not a rating, so its result has no ``'rmse'`` and ``'mae'`` (issue 12).
    """
    from .recommend import top_items

    test = _check_ratings(test, "test")
    if exclude is not None:
        exclude = _check_ratings(exclude, "exclude")
    k = _check_int(k, "k", 1)
    if not (_is_real(threshold) and math.isfinite(threshold)):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    if not (hasattr(model, "predict") and hasattr(model, "get_params")):
        raise TypeError(f"model must be a fitted autofact model, got {type(model).__name__}")
    index = getattr(model, "index_", None)
    if index is None:
        raise RuntimeError(
            f"this {type(model).__name__} is not fitted yet; call fit(ratings) first"
        )

    test_users = test.user_ids[test.users]
    test_items = test.item_ids[test.items]
    out: dict[str, float] = {}
    if getattr(model, "task", "rating") != "ranking":  # a preference score is not a rating
        pred = model.predict(test_users, test_items)
        out.update(rmse=rmse(pred, test.values), mae=mae(pred, test.values))

    u = index.user_index(test_users, strict=False)
    i = index.item_index(test_items, strict=False)
    good = (test.values >= threshold) & (u >= 0) & (i >= 0)
    users = np.unique(u[good])
    ranked: list[list[int]] = []
    relevant: list[set[int]] = []
    if len(users):
        extra = None
        if exclude is not None:
            eu = index.user_index(exclude.user_ids[exclude.users], strict=False)
            ei = index.item_index(exclude.item_ids[exclude.items], strict=False)
            keep = (eu >= 0) & (ei >= 0)
            extra = (eu[keep], ei[keep])
        tops, _ = top_items(model, users, k, exclude_seen=True, extra=extra)
        order = np.argsort(u[good], kind="stable")
        gu, gi = u[good][order], i[good][order]
        bounds = np.searchsorted(gu, users, side="left"), np.searchsorted(gu, users, side="right")
        for row, (a, b) in enumerate(zip(*bounds, strict=True)):
            ranked.append(tops[row].tolist())
            relevant.append(set(gi[a:b].tolist()))
    nan = math.nan
    out[f"precision@{k}"] = precision_at_k(ranked, relevant, k) if ranked else nan
    out[f"recall@{k}"] = recall_at_k(ranked, relevant, k) if ranked else nan
    out[f"ndcg@{k}"] = ndcg_at_k(ranked, relevant, k) if ranked else nan
    out[f"map@{k}"] = map_at_k(ranked, relevant, k) if ranked else nan
    out["n_users"] = len(ranked)
    out["n_ratings"] = len(test)
    return out


def cross_validate(
    model: Any,
    ratings: Ratings,
    folds: int = 5,
    seed: int | None = 0,
    k: int = 10,
    threshold: float = 4.0,
) -> dict[str, Any]:
    """:func:`evaluate` a fresh clone of ``model`` (same parameters, unfitted) on each of
    :func:`kfold`'s folds.

    Returns a dict with, for every metric of :func:`evaluate` plus ``fit_time`` (seconds), the
    list of per-fold values under its own name (``'rmse'``) and their mean under ``'mean_'`` +
    name (``'mean_rmse'``); ``nan`` folds are skipped in the ranking means.
    """
    ratings = _check_ratings(ratings)
    if not hasattr(model, "get_params"):
        raise TypeError(
            f"model must be an estimator with get_params() (e.g. MatrixFactorization), got "
            f"{type(model).__name__}"
        )
    results: dict[str, Any] = {}
    for train, test in kfold(ratings, folds=folds, seed=seed):
        clone = type(model)(**model.get_params())
        start = time.perf_counter()
        clone.fit(train)
        fit_time = time.perf_counter() - start
        scores = evaluate(clone, test, k=k, threshold=threshold)
        scores["fit_time"] = fit_time
        for name, value in scores.items():
            results.setdefault(name, []).append(value)
    for name in list(results):
        if name in ("n_users", "n_ratings"):
            continue
        vals = [v for v in results[name] if not math.isnan(v)]
        results[f"mean_{name}"] = float(np.mean(vals)) if vals else math.nan
    return results
