"""Splits (invariants, seeding), metrics (hand-computed cases), evaluate and cross_validate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autofact import MatrixFactorization, Ratings
from autofact.evaluation import (
    cross_validate,
    evaluate,
    kfold,
    leave_last_out,
    mae,
    map_at_k,
    ndcg_at_k,
    per_user_split,
    precision_at_k,
    random_split,
    recall_at_k,
    rmse,
)


def _ratings(m: int = 40, n: int = 25, density: float = 0.4, seed: int = 0,
             timestamps: bool = True) -> Ratings:
    """A planted rank-3 matrix on a 1..5 scale with ids that are not 0..m-1, and timestamps."""
    rng = np.random.default_rng(seed)
    U, V = rng.normal(size=(m, 3)), rng.normal(size=(n, 3))
    full = np.clip(np.round(3 + U @ V.T), 1, 5)
    mask = rng.random((m, n)) < density
    mask[np.arange(m), rng.integers(0, n, m)] = True  # every user has a rating
    mask[0, :] = False
    mask[0, 3] = True  # user 0 has exactly one rating
    rows, cols = np.nonzero(mask)
    ts = rng.permutation(len(rows)) * 10 + 1_000_000_000 if timestamps else None
    r = Ratings.from_coo(rows, cols, full[rows, cols], shape=(m, n), timestamps=ts)
    r.user_ids = np.array([f"u{j}" for j in range(m)])
    r.item_ids = np.arange(n) * 10 + 100
    return r


def _keys(r: Ratings) -> list[tuple[int, int]]:
    return list(zip(r.users.tolist(), r.items.tolist(), strict=True))


def _pairs(r: Ratings) -> set[tuple[int, int]]:
    return set(_keys(r))


def _first_fold(r: Ratings, seed: int = 0):
    return next(kfold(r, folds=4, seed=seed))


SPLITS = {
    "random_split": lambda r, seed=0: random_split(r, 0.25, seed=seed),
    "per_user_split": lambda r, seed=0: per_user_split(r, 0.25, seed=seed),
    "kfold": _first_fold,
    "leave_last_out": lambda r, seed=0: leave_last_out(r, n=2),
}


# ---------------------------------------------------------------------------- splits
@pytest.mark.parametrize("name", SPLITS)
def test_split_is_a_partition_with_the_same_ids(name):
    r = _ratings()
    train, test = SPLITS[name](r)
    a, b = _pairs(train), _pairs(test)
    assert a.isdisjoint(b)
    assert a | b == _pairs(r)
    assert len(train) + len(test) == len(r)
    for part in (train, test):
        assert part.shape == r.shape
        assert part.user_ids is r.user_ids and part.item_ids is r.item_ids
        # values and timestamps travel with their entries
        full = dict(zip(_keys(r), zip(r.values, r.timestamps, strict=True), strict=True))
        got = dict(zip(_keys(part), zip(part.values, part.timestamps, strict=True), strict=True))
        assert all(full[p] == vt for p, vt in got.items())


@pytest.mark.parametrize("name", ["random_split", "per_user_split", "kfold"])
def test_split_is_repeatable_by_seed(name):
    r = _ratings()
    tr1, te1 = SPLITS[name](r, seed=3)
    tr2, te2 = SPLITS[name](r, seed=3)
    assert te1.equals(te2) and tr1.equals(tr2)
    _, te3 = SPLITS[name](r, seed=4)
    assert not te1.equals(te3)


def test_random_split_size():
    r = _ratings()
    for f in (0.1, 0.2, 0.5):
        _, test = random_split(r, test_fraction=f)
        assert len(test) == round(f * len(r))


def test_per_user_split_keeps_every_user_in_train():
    r = _ratings(m=60, density=0.3)
    counts = np.bincount(r.users, minlength=r.n_users)
    for seed in range(5):
        for f in (0.2, 0.5, 0.9):
            train, test = per_user_split(r, test_fraction=f, seed=seed)
            in_train = np.bincount(train.users, minlength=r.n_users)
            assert (in_train >= 1)[counts >= 1].all()
            assert in_train[0] == 1  # the single-rating user keeps it
    _, test = per_user_split(r, test_fraction=0.3, seed=0)
    assert abs(len(test) / len(r) - 0.3) < 0.05  # unbiased rounding, even for small users


def test_leave_last_out_takes_the_latest():
    r = _ratings()
    counts = np.bincount(r.users, minlength=r.n_users)
    for n in (1, 2, 3):
        train, test = leave_last_out(r, n=n)
        in_test = np.bincount(test.users, minlength=r.n_users)
        np.testing.assert_array_equal(in_test, np.minimum(n, counts - 1))
        for u in np.unique(test.users):
            assert test.timestamps[test.users == u].min() > train.timestamps[train.users == u].max()


def test_leave_last_out_ties_take_the_later_item():
    r = Ratings.from_coo([0, 0, 0, 1, 1], [0, 1, 2, 0, 2], [1.0, 2, 3, 4, 5],
                         timestamps=[5, 9, 9, 7, 3])
    train, test = leave_last_out(r, n=1)
    assert _pairs(test) == {(0, 2), (1, 0)}


def test_kfold_test_sets_partition_the_ratings():
    r = _ratings()
    seen = np.zeros(len(r), dtype=int)
    index = {p: k for k, p in enumerate(zip(r.users.tolist(), r.items.tolist(), strict=True))}
    sizes = []
    for train, test in kfold(r, folds=5, seed=1):
        assert _pairs(train) == _pairs(r) - _pairs(test)
        for p in _pairs(test):
            seen[index[p]] += 1
        sizes.append(len(test))
    assert (seen == 1).all()
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda r: random_split(r, test_fraction=0), ValueError,
         "test_fraction must be a number strictly between 0 and 1, got 0"),
        (lambda r: random_split(r, test_fraction=1.0), ValueError, "got 1.0"),
        (lambda r: per_user_split(r, test_fraction=-0.1), ValueError, "got -0.1"),
        (lambda r: per_user_split(r, test_fraction="0.2"), ValueError, "got '0.2'"),
        (lambda r: random_split(r, test_fraction=True), ValueError, "got True"),
        (lambda r: random_split(r, seed=-1), ValueError, "seed must be an int >= 0, got -1"),
        (lambda r: random_split(r, seed=1.5), ValueError, "seed must be an int >= 0, got 1.5"),
        (lambda r: random_split(r.to_frame()), TypeError,
         "ratings must be an autofact.Ratings, got DataFrame"),
        (lambda r: leave_last_out(r, n=0), ValueError, "n must be an int >= 1, got 0"),
        (lambda r: list(kfold(r, folds=1)), ValueError, "folds must be an int >= 2, got 1"),
        (lambda r: list(kfold(r, folds=10**6)), ValueError,
         "folds=1000000 is more than the number of ratings"),
        (lambda r: random_split(r.subset([0, 1]), test_fraction=0.1), ValueError,
         r"random_split\(test_fraction=0.1\) puts no rating in the test set"),
        (lambda r: per_user_split(r.subset([0]), test_fraction=0.5), ValueError,
         "puts no rating in the test set"),
    ],
)
def test_split_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call(_ratings())


def test_leave_last_out_needs_timestamps():
    with pytest.raises(ValueError, match=r"leave_last_out needs timestamps.*timestamps is None"):
        leave_last_out(_ratings(timestamps=False))


# ---------------------------------------------------------------------------- metrics
def test_rmse_mae_by_hand():
    assert rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(math.sqrt(4 / 3))
    assert mae([1, 2, 3], [1, 2, 5]) == pytest.approx(2 / 3)
    assert rmse(np.array([2.0]), np.array([2.0])) == 0.0
    assert mae([0, 0], [1, -3]) == pytest.approx(2.0)


@pytest.mark.parametrize("fn", [rmse, mae])
def test_error_metric_errors(fn):
    with pytest.raises(ValueError, match="same length, got 2 and 3"):
        fn([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="empty"):
        fn([], [])


# user A: top-3 [1, 2, 3] with relevant {1, 3, 9}: hits at ranks 1 and 3
# user B: top-3 [5, 6, 7] with relevant {7}: a hit at rank 3
# user C: no relevant item -> left out of every mean
RANKED = [[1, 2, 3, 4], [5, 6, 7], [8, 9]]
RELEVANT = [{1, 3, 9}, {7}, set()]
IDCG3 = 1 + 1 / math.log2(3) + 1 / 2


def test_ranking_metrics_by_hand():
    assert precision_at_k(RANKED, RELEVANT, 3) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert recall_at_k(RANKED, RELEVANT, 3) == pytest.approx((2 / 3 + 1) / 2)
    assert ndcg_at_k(RANKED, RELEVANT, 3) == pytest.approx(((1 + 1 / 2) / IDCG3 + (1 / 2) / 1) / 2)
    assert map_at_k(RANKED, RELEVANT, 3) == pytest.approx(((1 + 2 / 3) / 3 + (1 / 3) / 1) / 2)


def test_ranking_metrics_k1_and_k4():
    assert precision_at_k(RANKED, RELEVANT, 1) == pytest.approx(0.5)
    assert recall_at_k(RANKED, RELEVANT, 1) == pytest.approx(1 / 6)
    assert ndcg_at_k(RANKED, RELEVANT, 1) == pytest.approx(0.5)
    assert map_at_k(RANKED, RELEVANT, 1) == pytest.approx(0.5)
    # k=4: user B's list has only 3 items: precision still divides by 4
    assert precision_at_k(RANKED, RELEVANT, 4) == pytest.approx((2 / 4 + 1 / 4) / 2)
    # A: AP normalised by min(4, 3) = 3; B: by min(4, 1) = 1
    assert map_at_k(RANKED, RELEVANT, 4) == pytest.approx(((1 + 2 / 3) / 3 + 1 / 3) / 2)


def test_ranking_metrics_perfect_and_empty():
    ranked, relevant = [[3, 1, 2]], [[1, 2, 3]]  # any iterable as relevant
    for fn in (recall_at_k, ndcg_at_k, map_at_k, precision_at_k):
        assert fn(ranked, relevant, 3) == pytest.approx(1.0)
    # ndcg and map normalise by min(k, |relevant|): a perfect top 2 of 3 relevant scores 1
    assert ndcg_at_k(ranked, relevant, 2) == pytest.approx(1.0)
    assert map_at_k(ranked, relevant, 2) == pytest.approx(1.0)
    assert recall_at_k(ranked, relevant, 2) == pytest.approx(2 / 3)
    # no user with a relevant item: nan, not a silent 0
    for fn in (precision_at_k, recall_at_k, ndcg_at_k, map_at_k):
        assert math.isnan(fn([[1, 2]], [set()], 2))


@pytest.mark.parametrize("fn", [precision_at_k, recall_at_k, ndcg_at_k, map_at_k])
def test_ranking_metric_errors(fn):
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        fn(RANKED, RELEVANT, 0)
    with pytest.raises(ValueError, match="k must be an int >= 1, got 2.0"):
        fn(RANKED, RELEVANT, 2.0)
    with pytest.raises(ValueError, match="one entry per user, got 3 and 2"):
        fn(RANKED, RELEVANT[:2], 3)


# ---------------------------------------------------------------------------- evaluate
@pytest.fixture(scope="module")
def fitted():
    r = _ratings(m=60, n=30, density=0.5)
    train, test = per_user_split(r, test_fraction=0.25, seed=0)
    model = MatrixFactorization(rank=3, solver="als", epochs=10, beta=1.0, device="cpu",
                                seed=0).fit(train)
    return model, train, test


def test_evaluate_matches_the_pieces(fitted):
    model, train, test = fitted
    k, thr = 5, 4.0
    out = evaluate(model, test, k=k, threshold=thr)
    assert set(out) == {"rmse", "mae", f"precision@{k}", f"recall@{k}", f"ndcg@{k}", f"map@{k}",
                        "n_users", "n_ratings"}
    pred = model.predict(test.user_ids[test.users], test.item_ids[test.items])
    assert out["rmse"] == pytest.approx(rmse(pred, test.values))
    assert out["rmse"] == pytest.approx(-model.score(test))  # score is -RMSE (issue 8)
    assert out["mae"] == pytest.approx(mae(pred, test.values))
    assert out["n_ratings"] == len(test)
    # the ranking, rebuilt one user at a time through the public recommend()
    ranked, relevant, users = [], [], []
    for u in np.unique(test.users):
        rel = set(test.item_ids[test.items[(test.users == u) & (test.values >= thr)]].tolist())
        if rel:
            ranked.append(model.recommend(test.user_ids[u], n=k).items.tolist())
            relevant.append(rel)
            users.append(u)
    assert out["n_users"] == len(ranked) > 10
    assert out[f"precision@{k}"] == pytest.approx(precision_at_k(ranked, relevant, k))
    assert out[f"recall@{k}"] == pytest.approx(recall_at_k(ranked, relevant, k))
    assert out[f"ndcg@{k}"] == pytest.approx(ndcg_at_k(ranked, relevant, k))
    assert out[f"map@{k}"] == pytest.approx(map_at_k(ranked, relevant, k))
    # a planted low-rank matrix: much better than a random order of the same candidates
    rng = np.random.default_rng(0)
    seen = model.index_.seen
    shuffled = []
    for u in users:
        candidates = np.setdiff1d(np.arange(len(model.item_ids_)), seen[u].indices)
        shuffled.append(model.item_ids_[rng.permutation(candidates)[:k]].tolist())
    chance = ndcg_at_k(shuffled, relevant, k)
    assert out[f"ndcg@{k}"] > 2 * chance


def test_evaluate_excludes_training_and_extra_items(fitted):
    model, train, test = fitted
    # the training ratings are never recommended: scoring the training set finds no hit
    assert evaluate(model, train, k=5)["precision@5"] == 0.0
    # excluding the test set itself leaves no relevant item to find
    assert evaluate(model, test, k=5, exclude=test)["precision@5"] == 0.0
    assert evaluate(model, test, k=5)["precision@5"] > 0


def test_evaluate_with_no_relevant_items_gives_nan(fitted):
    model, _, test = fitted
    out = evaluate(model, test, k=3, threshold=100.0)
    assert out["n_users"] == 0 and math.isnan(out["ndcg@3"]) and math.isfinite(out["rmse"])


def test_evaluate_errors(fitted):
    model, _, test = fitted
    with pytest.raises(RuntimeError, match="not fitted yet"):
        evaluate(MatrixFactorization(), test)
    with pytest.raises(TypeError, match="test must be an autofact.Ratings, got DataFrame"):
        evaluate(model, test.to_frame())
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        evaluate(model, test, k=0)
    with pytest.raises(ValueError, match="threshold must be a finite number, got nan"):
        evaluate(model, test, threshold=float("nan"))
    with pytest.raises(TypeError, match="model must be a fitted autofact model, got str"):
        evaluate("model", test)


# a fold can leave an item without training ratings: it is then predicted by the fallback, which
# warns (before the fix for rows without ratings it was scored from its random initial factors)
@pytest.mark.filterwarnings("ignore:.*not in the training data")
def test_cross_validate():
    r = _ratings(m=40, n=20, density=0.5)
    model = MatrixFactorization(rank=2, solver="als", epochs=5, beta=1.0, device="cpu", seed=0)
    out = cross_validate(model, r, folds=3, seed=0, k=5)
    for name in ("rmse", "mae", "precision@5", "recall@5", "ndcg@5", "map@5", "fit_time"):
        assert len(out[name]) == 3
        assert out[f"mean_{name}"] == pytest.approx(np.mean(out[name]))
    assert sum(out["n_ratings"]) == len(r)
    assert not hasattr(model, "user_factors_")  # clones were fitted, not the model itself
    # the same folds as kfold: fold 0 matches a model fitted by hand
    train, test = next(kfold(r, folds=3, seed=0))
    by_hand = evaluate(type(model)(**model.get_params()).fit(train), test, k=5)
    assert out["rmse"][0] == pytest.approx(by_hand["rmse"])
    assert out["ndcg@5"][0] == pytest.approx(by_hand["ndcg@5"])
    with pytest.raises(TypeError, match="model must be an estimator with get_params"):
        cross_validate(object(), r)
