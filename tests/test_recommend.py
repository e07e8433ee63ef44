"""Recommendation: known answers (checkerboard, planted twin), exclusion, fallback, batch equals
one-by-one, fold_in against the closed form and the fitted users, and every error."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch

from autofact import MatrixFactorization, Ratings, UnknownIdError
from autofact import recommend as rec_module
from autofact.recommend import FoldedUser, Recommendations, SimilarItems


def _model(r: Ratings, **kw) -> MatrixFactorization:
    params = dict(rank=3, solver="als", epochs=12, beta=1.0, device="cpu", seed=0)
    params.update(kw)
    return MatrixFactorization(**params).fit(r)


def _planted(m: int = 50, n: int = 30, density: float = 0.5, seed: int = 0) -> Ratings:
    """A rank-3 matrix on a 1..5 scale, ids 'u0'.. and 100, 110, ..; item n-1 is item 0's twin."""
    rng = np.random.default_rng(seed)
    U, V = rng.normal(size=(m, 3)), rng.normal(size=(n, 3))
    full = 3 + U @ V.T
    mask = rng.random((m, n)) < density
    full[:, n - 1] = full[:, 0] + rng.normal(scale=0.05, size=m)  # the planted twin
    mask[:, n - 1] = mask[:, 0]
    rows, cols = np.nonzero(mask)
    r = Ratings.from_coo(rows, cols, full[rows, cols], shape=(m, n))
    r.user_ids = np.array([f"u{j}" for j in range(m)])
    r.item_ids = np.arange(n) * 10 + 100
    return r


@pytest.fixture(scope="module")
def planted():
    r = _planted()
    return _model(r), r


def _checkerboard(size: int = 20, seed: int = 0) -> Ratings:
    """implicit's known answer, for ratings: user u rates items of its parity 5 and the others 1.

    The diagonal is held out, and half of the other-parity items too, so user u's candidates are
    item u (predicted 5) and unrated items of the other parity (predicted 1).
    """
    rng = np.random.default_rng(seed)
    u, i = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    same = (u % 2) == (i % 2)
    full = np.where(same, 5.0, 1.0)
    observed = np.where(same, u != i, rng.random((size, size)) < 0.5)
    return Ratings.from_dense(np.where(observed, full, np.nan))


# ---------------------------------------------------------------------------- known answers
def test_checkerboard_top_recommendation_is_the_held_out_item():
    r = _checkerboard()
    model = _model(r, rank=2, beta=0.1, epochs=20)
    for u in range(r.n_users):
        top = model.recommend(u, n=1)
        assert top.items.tolist() == [u]
        assert top.scores[0] > 4
    batch = model.recommend_batch(list(range(r.n_users)), n=1)
    assert [b.items[0] for b in batch] == list(range(r.n_users))
    # without exclusion the top items are rated ones of the user's parity
    for u in range(r.n_users):
        top = model.recommend(u, n=5, exclude_seen=False).items
        assert (top % 2 == u % 2).all()
        assert set(top) & set(model.index_.seen[u].indices)


def test_similar_items_finds_the_planted_twin(planted):
    model, r = planted
    first, twin = r.item_ids[0], r.item_ids[-1]
    sim = model.similar_items(first, n=5)
    assert isinstance(sim, SimilarItems)
    assert sim.items[0] == twin and sim.scores[0] > 0.99
    assert first not in sim.items
    assert model.similar_items(twin, n=1).items.tolist() == [first]
    all_sims = model.similar_items(first, n=100)
    assert len(all_sims) == r.n_items - 1
    assert (np.diff(all_sims.scores) <= 0).all() and (np.abs(all_sims.scores) <= 1 + 1e-9).all()
    # cosine, by hand
    Q = model.item_factors_.astype(np.float64)
    j = int(model.item_index(all_sims.items[3])[0])
    cos = Q[0] @ Q[j] / np.linalg.norm(Q[0]) / np.linalg.norm(Q[j])
    assert all_sims.scores[3] == pytest.approx(cos)


# ---------------------------------------------------------------------------- recommend
def test_recommend_excludes_exactly_the_seen_items(planted):
    model, r = planted
    seen = model.index_.seen
    for u in range(0, r.n_users, 7):
        uid = r.user_ids[u]
        rec = model.recommend(uid, n=r.n_items)
        unseen = set(model.item_ids_[np.setdiff1d(np.arange(r.n_items), seen[u].indices)])
        assert set(rec.items.tolist()) == unseen  # all of them, none of the seen ones
        assert len(model.recommend(uid, n=r.n_items, exclude_seen=False)) == r.n_items
        # scores are the raw model output, best first
        assert (np.diff(rec.scores) <= 0).all()
        raw = model.predict_indices(np.full(len(rec), u), model.item_index(rec.items))
        np.testing.assert_allclose(rec.scores, raw, rtol=1e-5, atol=1e-5)


def test_recommend_is_the_top_of_the_full_ranking(planted):
    model, r = planted
    scores = model.predict_indices(np.full(r.n_items, 3), np.arange(r.n_items))
    scores[model.index_.seen[3].indices] = -np.inf
    expected = model.item_ids_[np.argsort(-scores, kind="stable")[:5]]
    assert model.recommend("u3", n=5).items.tolist() == expected.tolist()


@pytest.mark.parametrize("block", [None, 64])  # 64 floats: one or two users per block
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_batch_equals_one_by_one(planted, monkeypatch, block, exclude_seen):
    model, r = planted
    if block is not None:
        monkeypatch.setattr(rec_module, "_BLOCK_FLOATS", block)
    users = list(r.user_ids[::3]) + ["nobody"]
    batch = model.recommend_batch(users, n=7, exclude_seen=exclude_seen, fallback=True)
    assert len(batch) == len(users)
    for uid, b in zip(users, batch, strict=True):
        one = model.recommend(uid, n=7, exclude_seen=exclude_seen, fallback=True)
        assert b.user == uid and b.fallback == one.fallback
        np.testing.assert_array_equal(b.items, one.items)
        np.testing.assert_allclose(b.scores, one.scores, rtol=1e-12)
    assert model.recommend_batch([], n=3) == []
    assert len(model.recommend_batch(np.array(r.user_ids[:4]), n=3)) == 4


def test_unknown_user_raises_or_falls_back_to_popularity(planted):
    model, r = planted
    with pytest.raises(UnknownIdError, match="user 'x' is not in the training data"):
        model.recommend("x")
    with pytest.raises(KeyError):  # UnknownIdError is a KeyError and a ValueError
        model.recommend("x")
    with pytest.raises(UnknownIdError, match="user 'zz' is not in the training data"):
        model.recommend_batch(["u1", "zz"])
    rec = model.recommend("x", n=4, fallback=True)
    assert rec.fallback == "popularity" and "fallback='popularity'" in repr(rec)
    counts = np.bincount(r.items, minlength=r.n_items)
    order = np.lexsort((np.arange(r.n_items), -counts))[:4]
    assert rec.items.tolist() == r.item_ids[order].tolist()
    assert rec.scores.tolist() == counts[order].tolist()
    assert model.recommend("u1", fallback=True).fallback is None  # known users are scored


def test_n_larger_than_the_candidates(planted):
    model, r = planted
    rec = model.recommend("u0", n=10_000)
    assert len(rec) == r.n_items - len(model.index_.seen[0].indices)


def test_recommendations_result(planted):
    model, _ = planted
    rec = model.recommend("u2", n=6)
    assert isinstance(rec, Recommendations) and len(rec) == 6
    text = repr(rec)
    assert "\n" not in text and text.startswith("<Recommendations for user 'u2': 6 items [")
    assert text.endswith(", ...]>")
    frame = rec.to_frame()
    assert list(frame.columns) == ["user", "rank", "item", "score"]
    assert frame["rank"].tolist() == [1, 2, 3, 4, 5, 6]
    assert frame["item"].tolist() == rec.items.tolist() and (frame["user"] == "u2").all()
    sim = model.similar_items(100, n=2)
    assert repr(sim).startswith("<SimilarItems to item 100: 2 items [")
    assert list(sim.to_frame().columns) == ["item", "rank", "similar", "score"]


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda m: m.recommend(["u1", "u2"]), TypeError, "use recommend_batch"),
        (lambda m: m.recommend("u1", n=0), ValueError, "n must be a positive int, got 0"),
        (lambda m: m.recommend("u1", n=2.5), ValueError, "n must be a positive int, got 2.5"),
        (lambda m: m.recommend("u1", exclude_seen="yes"), TypeError,
         "exclude_seen must be True or False, got 'yes'"),
        (lambda m: m.recommend("u1", fallback=1), TypeError, "fallback must be True or False"),
        (lambda m: m.recommend_batch("u1"), TypeError,
         "users must be a sequence of user ids, got str; use recommend"),
        (lambda m: m.recommend_batch(5), TypeError, "users must be a sequence of user ids"),
        (lambda m: m.recommend_batch(["u1"], n=-1), ValueError, "n must be a positive int"),
        (lambda m: m.similar_items(999), UnknownIdError, "item 999 is not in the training data"),
        (lambda m: m.similar_items([100, 110]), TypeError, "item must be one item id"),
        (lambda m: m.similar_items(100, n=0), ValueError, "n must be a positive int"),
        (lambda m: m.score_items("x"), UnknownIdError, "user 'x' is not in the training data"),
        (lambda m: m.score_items("u1", [100, 7]), UnknownIdError,
         "item 7 is not in the training data"),
    ],
)
def test_recommend_errors(planted, call, exc, match):
    model, _ = planted
    with pytest.raises(exc, match=match):
        call(model)


def test_unfitted_model():
    model = MatrixFactorization()
    for call in (lambda: model.recommend(1), lambda: model.recommend_batch([1]),
                 lambda: model.similar_items(1), lambda: model.fold_in({1: 5.0})):
        with pytest.raises(RuntimeError, match="not fitted yet; call fit"):
            call()


def test_score_items_matches_predict(planted):
    model, r = planted
    items = r.item_ids[[0, 5, 9]]
    np.testing.assert_allclose(model.score_items("u4", items),
                               model.predict(["u4"] * 3, items), rtol=1e-5)
    assert model.score_items("u4").shape == (r.n_items,)


# ---------------------------------------------------------------------------- fold_in
def _user_ratings(r: Ratings, u: int) -> dict:
    sel = r.users == u
    return dict(zip(r.item_ids[r.items[sel]].tolist(), r.values[sel].tolist(), strict=True))


def test_fold_in_reproduces_fitted_users(planted):
    model, r = planted
    corrs, overlaps = [], []
    for u in range(0, r.n_users, 5):
        folded = model.fold_in(_user_ratings(r, u), user=f"again{u}")
        assert isinstance(folded, FoldedUser) and folded.label == f"again{u}"
        np.testing.assert_array_equal(folded.seen, np.sort(r.items[r.users == u]))
        theirs = r.item_ids[r.items[r.users == u]]
        a = model.score_items(folded, theirs)
        b = model.score_items(r.user_ids[u], theirs)
        corrs.append(np.corrcoef(a, b)[0, 1])
        top_f = model.recommend(folded, n=5).items
        top_u = model.recommend(r.user_ids[u], n=5).items
        assert not set(top_f) & set(theirs)  # its rated items are excluded
        overlaps.append(len(set(top_f) & set(top_u)))
    assert min(corrs) > 0.9
    assert np.mean(overlaps) >= 4


def test_fold_in_is_the_closed_form_for_squared_l2():
    """Squared loss + L2: the minimizer solves (2 Y'Y + beta I) x = 2 Y'(r - mu - b_i)."""
    r = _planted(seed=1)
    model = _model(r, beta=2.0)
    ratings = _user_ratings(r, 7)
    folded = model.fold_in(ratings)
    idx = model.item_index(list(ratings))
    Y = np.c_[model.item_factors_[idx].astype(np.float64), np.ones(len(idx))]
    target = np.array(list(ratings.values())) - model.global_mean_ - model.item_bias_[idx]
    x = np.linalg.solve(2 * Y.T @ Y + 2.0 * np.eye(4), 2 * Y.T @ target)
    np.testing.assert_allclose(np.r_[folded.factors, folded.bias], x, atol=1e-6)


@pytest.mark.parametrize("loss", ["squared", "huber"])
@pytest.mark.parametrize("regularization", ["l2", "none"])
@pytest.mark.parametrize("bias", [True, False])
def test_fold_in_minimizes_the_models_objective(loss, regularization, bias):
    """The gradient of the user's slice of the model's own objective vanishes at the result."""
    r = _planted(m=30, n=20, seed=2)
    model = _model(r, loss=loss, regularization=regularization, bias=bias, rank=2, epochs=5)
    ratings = _user_ratings(r, 3)
    folded = model.fold_in(ratings)
    assert folded.factors.shape == (2,)
    if not bias:
        assert folded.bias == 0.0
    from autofact.losses import get_loss
    from autofact.regularizers import get_regularizer

    ell, reg = get_loss(loss), get_regularizer(regularization, model.beta)
    idx = model.item_index(list(ratings))
    Q = torch.tensor(model.item_factors_[idx], dtype=torch.float64)
    off = torch.tensor(model.item_bias_[idx] + model.global_mean_, dtype=torch.float64)
    target = torch.tensor(list(ratings.values()), dtype=torch.float64)
    p = torch.tensor(folded.factors, requires_grad=True)
    b = torch.tensor([folded.bias], dtype=torch.float64, requires_grad=True)
    pred = Q @ p + off + (b[0] if bias else 0.0)
    J = ell(pred, target).sum() + reg(p) + (reg(b) if bias else 0.0)
    J.backward()
    assert p.grad.abs().max() < 1e-4
    if bias:
        assert b.grad.abs().max() < 1e-4


def test_fold_in_input_forms_agree(planted):
    model, r = planted
    d = _user_ratings(r, 11)
    pairs = list(d.items())
    frame = pd.DataFrame({"item": list(d), "rating": list(d.values())})
    a, b, c = model.fold_in(d), model.fold_in(pairs), model.fold_in(frame)
    np.testing.assert_allclose(a.factors, b.factors)
    np.testing.assert_allclose(a.factors, c.factors)
    assert a.bias == pytest.approx(c.bias)
    assert repr(a) == f"<FoldedUser None (3 factors, {len(d)} rated items)>"
    assert "\n" not in repr(model.fold_in(d, user="alice"))


def test_fold_in_ignores_unknown_items_with_one_warning(planted):
    model, r = planted
    d = _user_ratings(r, 12)
    with pytest.warns(UserWarning, match=r"2 of \d+ rated items are not in the training data "
                                         r"\(first: 'new1'\); they are ignored"):
        folded = model.fold_in({**d, "new1": 5.0, "new2": 1.0})
    np.testing.assert_allclose(folded.factors, model.fold_in(d).factors)


def test_fold_in_is_fast(planted):
    model, r = planted
    d = _user_ratings(r, 13)
    model.fold_in(d)  # the first torch.optim use in a process imports torch._dynamo (seconds)
    start = time.perf_counter()
    model.fold_in(d)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"fold_in took {elapsed:.2f} s (expected well under 1 s)"


def test_folded_user_from_another_model(planted):
    model, r = planted
    other = _model(r, rank=2, epochs=2)
    folded = other.fold_in(_user_ratings(r, 1))
    with pytest.raises(ValueError, match="has 2 factors but the model has rank 3"):
        model.recommend(folded)
    with pytest.raises(ValueError, match="has 2 factors but the model has rank 3"):
        model.score_items(folded)


@pytest.mark.parametrize(
    "ratings,exc,match",
    [
        ({}, ValueError, "ratings is empty"),
        ([], ValueError, "ratings is empty"),
        ({"a": 5.0, "b": 1.0}, ValueError, r"none of the 2 rated items is in the training data"),
        ([(100, 5.0), (110,)], ValueError, r"ratings\[1\] must be an \(item, rating\) pair"),
        ([(100, 5.0), "ab"], ValueError, r"ratings\[1\] must be an \(item, rating\) pair"),
        (pd.DataFrame({"movie": [100], "rating": [5.0]}), ValueError,
         r"needs columns 'item' and 'rating'; it lacks \['item'\]"),
        ({100: float("nan")}, ValueError, "the rating of item 100 must be finite, got nan"),
        ({100: "good"}, TypeError, "ratings must be numbers"),  # trust: a string
        ([(100, 5.0), (100, 4.0)], ValueError, "item 100 is rated more than once"),
        (5, TypeError, "ratings must be a dict item -> rating, .* got int"),
        ("100:5", TypeError, "got str"),
    ],
)
def test_fold_in_errors(planted, ratings, exc, match):
    model, _ = planted
    with pytest.raises(exc, match=match):
        model.fold_in(ratings)


def test_fold_in_max_iter_error(planted):
    model, _ = planted
    with pytest.raises(ValueError, match="max_iter must be a positive int, got 0"):
        model.fold_in({100: 5.0}, max_iter=0)


def test_items_without_training_ratings_are_never_ranked():
    """An item inside the shape but without a training rating keeps its random initial factors:
    recommend, recommend_batch, similar_items and fold-in recommendations leave it out, and
    score_items gives it predict's fallback (regression for a leftover noted in issue 4's stop)."""
    rng = np.random.default_rng(0)
    u = np.repeat(np.arange(8), 4)
    i = np.concatenate([rng.choice(5, 4, replace=False) for _ in range(8)])  # items 5, 6 unrated
    r = Ratings.from_coo(u, i, rng.uniform(1, 5, len(u)), shape=(8, 7))
    model = MatrixFactorization(rank=3, seed=0, init_std=3.0, device="cpu").fit(r)
    unrated = {5, 6}
    for user in range(8):
        assert not unrated & set(model.recommend(user, n=7, exclude_seen=False).items.tolist())
    for recs in model.recommend_batch(list(range(8)), n=7, exclude_seen=False):
        assert not unrated & set(recs.items.tolist())
    assert not unrated & set(model.similar_items(0, n=7).items.tolist())
    folded = model.fold_in({0: 5.0, 1: 1.0})
    assert not unrated & set(model.recommend(folded, n=7, exclude_seen=False).items.tolist())
    scores = model.score_items(2)
    with pytest.warns(UserWarning, match="not in the training data"):
        fallback = model.predict([2, 2], [5, 6])
    np.testing.assert_allclose(scores[[5, 6]], fallback)


# ---------------------------------------------------------------------------- issue 8
def test_recommend_scores_are_predictions_and_the_order_is_the_raw_scores():
    """Recommendations scored 5.19 on a 5-point scale (not clipped); a monotone link or the
    clipping must not reorder them (issue 8)."""
    r = _checkerboard()
    model = _model(r, beta=0.01, epochs=20)
    raw = model.predict_indices(np.zeros(r.n_items, dtype=int), np.arange(r.n_items))
    assert raw.max() > 5  # the raw scores do leave the scale here: the test can fail
    for user in range(4):
        rec = model.recommend(user, n=r.n_items)
        np.testing.assert_allclose(rec.scores, model.predict([user] * len(rec), rec.items),
                                   rtol=1e-12)
        assert rec.scores.max() <= 5 and rec.scores.min() >= 1
        link = model.predict([user] * len(rec), rec.items, kind="link")
        assert (np.diff(link) <= 0).all()  # ranked by the raw score, ties kept in order
        np.testing.assert_array_equal(model.score_items(user),
                                      model.predict([user] * r.n_items, r.item_ids))
        assert model.score_items(user).max() <= 5
    batch = model.recommend_batch([0, 1], n=5)
    np.testing.assert_array_equal(batch[0].scores, model.recommend(0, n=5).scores)
    folded = model.fold_in({1: 5.0, 3: 5.0, 2: 1.0})
    rec = model.recommend(folded, n=5)
    assert rec.scores.max() <= 5
    np.testing.assert_allclose(rec.scores, model.score_items(folded, rec.items), rtol=1e-12)


def test_poisson_recommendations_are_rates_in_the_order_of_the_scores():
    rng = np.random.default_rng(0)
    u, i = np.nonzero(rng.random((30, 20)) < 0.4)
    counts = Ratings.from_coo(u, i, rng.poisson(4.0, len(u)).astype(float), shape=(30, 20))
    model = MatrixFactorization(rank=2, loss="poisson", epochs=4, device="cpu").fit(counts)
    rec = model.recommend(0, n=10)
    link = model.predict([0] * len(rec), rec.items, kind="link")
    np.testing.assert_allclose(rec.scores, np.exp(link), rtol=1e-12)
    assert (np.diff(rec.scores) <= 0).all()


def _imports_and_private_reads(path) -> tuple[set[str], set[str]]:
    import ast

    tree = ast.parse(path.read_text())
    imported, private = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == "model" and node.attr.startswith("_")):
            private.add(node.attr)
    return imported, private


@pytest.mark.parametrize("module", ["recommend.py", "io.py"])
def test_recommend_and_io_use_only_the_models_public_names(module):
    """model <-> io <-> recommend imported each other and read model._seen etc. (issue 8)."""
    from pathlib import Path

    import autofact

    imported, private = _imports_and_private_reads(Path(autofact.__file__).parent / module)
    assert not {".model", "autofact.model"} & imported
    assert private == set()


def test_model_index_holds_the_one_rule_for_unknown_ids():
    """ModelIndex: ids, counts, the fallback for unknown sides, the response (issue 8)."""
    import scipy.sparse as sp

    from autofact.index import ModelIndex

    seen = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=bool))
    index = ModelIndex(np.array(["a", "b", "c"]), np.array([10, 20, 30]), seen,
                       rating_range=(1.0, 5.0), fallback=3.0, clip=(1.0, 5.0))
    assert index.user_counts.tolist() == [2, 1, 0] and index.item_counts.tolist() == [1, 2, 0]
    assert index.user_index(["a", "c", "zz"], strict=False).tolist() == [0, -1, -1]
    with pytest.raises(UnknownIdError, match="user 'c' is not in the training data .it is in "
                                             "the id map but has no training rating."):
        index.user_index("c")
    with pytest.raises(UnknownIdError, match="item 99 is not in the training data$"):
        index.item_index([10, 99])
    P, Q = np.array([[1.0], [2.0], [0.0]]), np.array([[1.0], [1.0], [0.0]])
    bu, bi = np.array([0.5, -0.5, 0.0]), np.array([0.25, 0.0, 0.0])
    s = index.link_scores(np.array([0, 0, -1, -1]), np.array([0, -1, 1, -1]), P, Q, bu, bi, 2.0)
    # issue 9: one unknown side is the average known item (items 0, 1) or user (users 0, 1):
    # the known side's mean score; both unknown: the fallback
    assert s.tolist() == [2.0 + 0.5 + 0.25 + 1.0, 2.0 + 0.5 + 0.125 + 1.0 * 1.0,
                          2.0 + 0.0 + 0.0 + 1.5 * 1.0, 3.0]
    assert index.response(np.array([7.0, 0.0, 2.5])).tolist() == [5.0, 1.0, 2.5]
    with pytest.raises(ValueError, match="users and items must have the same length, got 2 and 1"):
        index.link_scores(np.array([0, 1]), np.array([0]), P, Q, bu, bi, 2.0)
    with pytest.raises(ValueError, match=r"seen has shape \(3, 3\), expected \(2, 3\)"):
        ModelIndex(np.array(["a", "b"]), np.array([10, 20, 30]), seen, rating_range=(1, 5),
                   fallback=3.0)
    with pytest.raises(ValueError, match="built on demand needs counts"):
        ModelIndex(np.array(["a"]), np.array([1]), lambda: seen, rating_range=(1, 5), fallback=0)
