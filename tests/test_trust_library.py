"""Trust: gaps a new user met in the library (outside the command line), each reproduced as
the user met it, on generated data. Every test here failed before its fix."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import autofact
from autofact import MatrixFactorization, Ratings
from autofact.evaluation import evaluate


def _dense(m: int = 30, n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dense = np.clip(np.rint(3 + np.outer(rng.normal(size=m), rng.normal(size=n))), 1, 5)
    return dense, rng.random((m, n)) < 0.6


def _write(path: Path, rows: list[tuple[object, object, float]]) -> Path:
    path.write_text("".join(f"{u},{i},{r}\n" for u, i, r in rows))
    return path


def _id_files(tmp_path: Path) -> tuple[Path, Path]:
    """A training file whose user ids include ``007`` (so every user id reads as a string) and
    a test file of plain int ids (ints), the same users otherwise."""
    dense, mask = _dense()
    train, test = [], []
    for u, i in zip(*np.nonzero(mask), strict=True):
        uid = "007" if u == 7 else str(u)
        (test if (u + i) % 5 == 0 and u != 7 else train).append((uid, int(i), dense[u, i]))
    return _write(tmp_path / "train.csv", train), _write(tmp_path / "test.csv", test)


# ------------------------------------------------------------------ 1: ids of another kind
def test_int_test_ids_match_string_model_ids_by_their_text(tmp_path):
    # trust: one '007' made every training user id a string, and a test file of plain ints
    # then matched none of them: score() was the global mean's (RMSE 1.43), n_users 0, with
    # only a warning. Ids are matched by their canonical text, as on the command line.
    train_path, test_path = _id_files(tmp_path)
    train, test = autofact.read(train_path), autofact.read(test_path)
    assert train.user_ids.dtype.kind in "UO" and test.user_ids.dtype.kind in "iu"
    model = MatrixFactorization(rank=2, solver="als", epochs=5, seed=0).fit(train)
    # the same test with string ids, as the training file wrote them: the reference
    as_text = Ratings(test.users, test.items, test.values, shape=test.shape,
                      user_ids=test.user_ids.astype(str).astype(object),
                      item_ids=test.item_ids)
    want = model.score(as_text)
    assert model.score(test) == pytest.approx(want)  # no warning (warnings are errors)
    metrics = evaluate(model, test, k=5, threshold=3.0)
    assert metrics["n_users"] > 0
    assert metrics["rmse"] == pytest.approx(-want)
    assert model.predict([1, 2], [0, 0]).tolist() == model.predict(["1", "2"], [0, 0]).tolist()


def test_string_test_ids_match_int_model_ids_but_007_is_not_7():
    # trust: the other way round: a model with int ids asked with the text '12' finds 12; the
    # text '007' is not the int 7 (it is not how 7 is written), and stays unknown
    dense, mask = _dense()
    u, i = np.nonzero(mask)
    model = MatrixFactorization(rank=2, solver="als", epochs=3, seed=0, strict=True).fit(
        Ratings.from_coo(u, i, dense[u, i], shape=dense.shape))
    assert model.user_ids_.dtype.kind in "iu"
    np.testing.assert_array_equal(model.predict(["12"], ["3"]),
                                  model.predict([12], [3]))
    np.testing.assert_array_equal(model.user_index(["7", "007", "x"], strict=False), [7, -1, -1])
    with pytest.raises(autofact.UnknownIdError, match="user '007' is not in the training data"):
        model.predict(["007"], [3])


# ------------------------------------------------------------------ 2: damaged checkpoints
def _coo() -> Ratings:
    dense, mask = _dense()
    u, i = np.nonzero(mask)
    return Ratings.from_coo(u, i, dense[u, i], shape=dense.shape)


def _edit_checkpoint(folder: Path, arrays: dict | None = None, meta: dict | None = None) -> None:
    """Rewrite ``folder``'s checkpoint with ``arrays`` replaced and ``meta`` keys set."""
    import json

    path = folder / "checkpoint.npz"
    with np.load(path, allow_pickle=False) as npz:
        raw = {k: npz[k] for k in npz.files}
    raw.update(arrays or {})
    if meta:
        doc = json.loads(raw["meta"].tobytes().decode())
        doc.update(meta)
        raw["meta"] = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, **raw)


def _array(folder: Path, key: str) -> np.ndarray:
    with np.load(folder / "checkpoint.npz", allow_pickle=False) as npz:
        return npz[key].copy()


def _gibbs() -> MatrixFactorization:
    return MatrixFactorization(rank=2, solver="gibbs", epochs=4, seed=0)


@pytest.mark.parametrize("key", ["optim.chain.sum", "optim.rows.tau", "optim.chain.tau"])
def test_a_checkpoint_with_nan_is_refused_as_damaged(tmp_path, key):
    # trust: NaN in the chain's sums resumed to NaN factors (the fit "succeeded"); NaN in a
    # noise precision ended in LinAlgError. Now: "<path> is damaged: ...; delete it"
    _gibbs().fit(_coo(), checkpoint=tmp_path)
    bad = _array(tmp_path, key)
    bad.flat[0] = np.nan
    _edit_checkpoint(tmp_path, {key: bad})
    with pytest.raises(ValueError, match=rf"checkpoint\.npz is damaged: its array '{key}' "
                       r"holds non-finite values \(NaN or infinity\); delete it to start over"):
        _gibbs().fit(_coo(), checkpoint=tmp_path)


def test_a_checkpoint_with_a_negative_noise_precision_is_refused(tmp_path):
    # trust: a noise precision that is not positive ended in LinAlgError
    _gibbs().fit(_coo(), checkpoint=tmp_path)
    bad = _array(tmp_path, "optim.rows.tau")
    bad[0] = -1.0
    _edit_checkpoint(tmp_path, {"optim.rows.tau": bad})
    with pytest.raises(ValueError, match=r"is damaged: its optim\.rows\.tau holds a precision "
                       "that is not positive; delete it to start over"):
        _gibbs().fit(_coo(), checkpoint=tmp_path)


@pytest.mark.parametrize("solver", ["gibbs", "als", "adam"])
def test_a_checkpoint_whose_factors_have_another_shape_is_refused(tmp_path, solver):
    # trust: param.P of the wrong shape ended in "internal error: could not broadcast ...
    # please report it"
    model = MatrixFactorization(rank=2, solver=solver, epochs=2, seed=0)
    model.fit(_coo(), checkpoint=tmp_path)
    _edit_checkpoint(tmp_path, {"param.P": np.zeros((30, 3), np.float32)})
    with pytest.raises(ValueError, match=r"is damaged: its param\.P has shape \(30, 3\), the "
                       r"model's is \(30, 2\); delete it to start over"):
        MatrixFactorization(rank=2, solver=solver, epochs=2, seed=0).fit(
            _coo(), checkpoint=tmp_path)


def test_a_checkpoint_whose_adam_moments_have_another_shape_is_refused(tmp_path):
    # trust: the same for the optimizer's state
    MatrixFactorization(rank=2, solver="adam", epochs=2, seed=0).fit(_coo(), checkpoint=tmp_path)
    _edit_checkpoint(tmp_path, {"optim.adam.0.m": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match=r"is damaged: its optim\.adam\.0\.m has shape \(2, 2\)"):
        MatrixFactorization(rank=2, solver="adam", epochs=3, seed=0).fit(
            _coo(), checkpoint=tmp_path)


@pytest.mark.parametrize("solver", ["gibbs", "als"])
@pytest.mark.parametrize(("meta", "message"), [
    ({"history": "x"}, r"its 'history' is 'x', not a list of epochs"),
    ({"epoch": -3}, r"its 'epoch' is -3, not a non-negative int"),
    ({"history": [{"epoch": 1, "time": "soon"}]}, r"its history's entry 0 has time 'soon', not a number"),
    ({"best": "high"}, r"its 'best' is 'high', not a finite number or null"),
])
def test_a_checkpoint_with_damaged_metadata_is_refused(tmp_path, solver, meta, message):
    # trust: history "x" ended in "internal error: AttributeError", epoch -3 in "sweeps must
    # be a positive int"
    model = MatrixFactorization(rank=2, solver=solver, epochs=2, seed=0)
    model.fit(_coo(), checkpoint=tmp_path)
    _edit_checkpoint(tmp_path, meta=meta)
    with pytest.raises(ValueError, match=r"checkpoint\.npz is damaged: " + message
                       + "; delete it to start over"):
        MatrixFactorization(rank=2, solver=solver, epochs=2, seed=0).fit(
            _coo(), checkpoint=tmp_path)


def test_a_checkpoint_with_damaged_chain_numbers_is_refused(tmp_path):
    # trust: the chain's numbers are taken by float()/int() deep in the sampler
    _gibbs().fit(_coo(), checkpoint=tmp_path)
    import json

    doc = json.loads(_array(tmp_path, "meta").tobytes().decode())
    doc["chain"]["values"]["alpha"] = "one"
    _edit_checkpoint(tmp_path, meta={"chain": doc["chain"]})
    with pytest.raises(ValueError, match=r"is damaged: its chain's 'alpha' is 'one', not a "
                       "finite number; delete it to start over"):
        _gibbs().fit(_coo(), checkpoint=tmp_path)


def test_an_undamaged_checkpoint_still_resumes(tmp_path):
    # the checks refuse nothing a fit writes: a finished checkpoint gives the same model
    for solver in ("gibbs", "als", "adam", "lbfgs"):
        folder = tmp_path / solver
        a = MatrixFactorization(rank=2, solver=solver, epochs=2, seed=0)
        a.fit(_coo(), checkpoint=folder)
        b = MatrixFactorization(rank=2, solver=solver, epochs=3 if solver != "gibbs" else 2,
                                seed=0)
        b.fit(_coo(), checkpoint=folder)
        assert np.isfinite(b.user_factors_).all()


# ------------------------------------------------------------------ 3: save and read
def test_save_refuses_non_finite_factors_and_writes_nothing(tmp_path):
    # trust: save wrote a file that read refuses ("array 'user_factors' holds non-finite
    # values"); now save refuses, naming the array and that the fit diverged, and the file
    # there before is left whole
    model = MatrixFactorization(rank=2, solver="als", epochs=2, seed=0).fit(_coo())
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()
    for name in ("user_factors_", "item_bias_"):
        diverged = MatrixFactorization(rank=2, solver="als", epochs=2, seed=0).fit(_coo())
        arr = getattr(diverged, name).copy()
        arr.flat[1] = np.inf
        setattr(diverged, name, arr)
        with pytest.raises(ValueError, match=rf"cannot save: {name} holds non-finite values "
                           r"\(first inf at index \(.*\)\): the fit diverged; refit"):
            diverged.save(path)
        assert path.read_bytes() == before
    autofact.load(path)  # still loads


def _edit_model(path: Path, **params: object) -> None:
    import json

    with np.load(path, allow_pickle=False) as npz:
        raw = {k: npz[k] for k in npz.files}
    doc = json.loads(raw["meta"].tobytes().decode())
    doc["params"].update(params)
    raw["meta"] = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, **raw)


def test_an_edited_task_is_named_when_a_model_is_read(tmp_path):
    # trust: an edited 'task' read as "rank is 'auto' but the factors have 10 columns",
    # which named a field that was not edited
    path = tmp_path / "m.npz"
    MatrixFactorization(solver="als", epochs=1, seed=0).fit(_coo()).save(path)
    _edit_model(path, task="ranking")
    with pytest.raises(ValueError, match=r"is damaged: its hyper-parameter 'task' is 'ranking', "
                       r"whose rank 'auto' means 64 factors, but the factors have 10 columns"):
        autofact.load(path)
    _edit_model(path, task="regression")
    with pytest.raises(ValueError, match=r"is damaged: its hyper-parameter 'task' is "
                       r"'regression', expected one of 'rating', 'ranking'"):
        autofact.load(path)


# ------------------------------------------------------------------ 4: extreme ratings
@pytest.mark.parametrize(("solver", "dtype", "big"), [
    ("gibbs", "float32", 1e30), ("auto", "float32", 1e30), ("als", "float32", 1e30),
    ("adam", "float32", 1e30), ("als", "float64", 1e200), ("gibbs", "float64", 1e200),
])
def test_ratings_too_large_for_the_fit_are_refused_naming_the_largest(solver, dtype, big):
    # trust: a rating of 1e30 (float32) or 1e200 (float64) ended in "LinAlgError: a row's
    # conditional precision is not positive definite" (the sampler) or a message blaming the
    # loss (ALS, Adam)
    r = _coo()
    values = r.values.astype(np.float64)
    values[3] = big
    r = Ratings.from_coo(r.users, r.items, values, shape=r.shape)
    with pytest.raises(ValueError, match=re.escape(f"the ratings reach {big:g} in magnitude")
                       + r", too large for a float(32|64) fit of \d+ ratings: .* rescale "
                       r"them \(for example divide by 1e\+\d+\)"):
        MatrixFactorization(rank=2, solver=solver, dtype=dtype, epochs=2, seed=0).fit(r)


def test_large_but_safe_ratings_still_fit():
    # the limit refuses only what would overflow: ratings of 1e6 fit in float32
    r = _coo()
    r = Ratings.from_coo(r.users, r.items, r.values * 1e6, shape=r.shape)
    model = MatrixFactorization(rank=2, solver="als", epochs=2, seed=0).fit(r)
    assert np.isfinite(model.user_factors_).all()


def test_validation_ratings_too_large_are_refused():
    # trust: the same for the validation ratings (their RMSE overflowed)
    r = _coo()
    values = r.values.astype(np.float64)
    values[0] = 1e200
    v = Ratings.from_coo(r.users, r.items, values, shape=r.shape)
    with pytest.raises(ValueError, match=r"the validation ratings reach 1e\+200 in magnitude"):
        MatrixFactorization(rank=2, solver="als", epochs=2, seed=0).fit(r, validation=v)


# ------------------------------------------------------------------ 5-7: settings
def test_a_negative_seed_is_refused_naming_seed():
    # trust: seed=-1 ended in numpy's "expected non-negative integer", which names no argument
    with pytest.raises(ValueError, match=r"seed must be a non-negative int below 2\*\*63 or "
                       r"None, got -1; pass a seed such as 1"):
        MatrixFactorization(seed=-1).fit(_coo())
    with pytest.raises(ValueError, match=r"seed must be a non-negative int below 2\*\*63"):
        MatrixFactorization(seed=2**64, solver="als").fit(_coo())


def test_alpha_with_the_rating_task_is_refused():
    # trust: alpha (the ranking task's confidence) was ignored by a rating fit without a word,
    # while unobserved_weight with task='ranking' raises
    with pytest.raises(ValueError, match=r"alpha=2\.0 is the ranking task's confidence slope "
                       r".* pass task='ranking', or leave alpha at its default 0\.5"):
        MatrixFactorization(alpha=2.0, solver="als", epochs=1).fit(_coo())
    MatrixFactorization(alpha=0.5, solver="als", epochs=1).fit(_coo())  # the default: fine


def test_patience_without_validation_data_warns():
    # trust: patience=3 without validation data was ignored without a word; it warns (a
    # refusal would stop fits that share one settings dict with fits that have validation
    # data, as tests/test_distributed_als.py does), and raises for task='ranking', which
    # refuses validation data altogether
    with pytest.warns(UserWarning, match=r"patience=3 stops on the validation RMSE, and this "
                      r"fit has no validation data, so every epoch runs: pass validation= "
                      r"\(or validation_fraction=\)"):
        MatrixFactorization(patience=3, solver="als", epochs=2).fit(_coo())
    with pytest.raises(ValueError, match=r"patience=3 stops on a validation RMSE, which "
                       r"task='ranking' has none of"):
        MatrixFactorization(task="ranking", patience=3, epochs=1).fit(_coo())
    # with validation data, or at 'auto' / None, it is used (or harmless)
    MatrixFactorization(patience=3, solver="als", epochs=2).fit(_coo(), validation=_coo())
    MatrixFactorization(patience=3, solver="als", epochs=2, validation_fraction=0.2).fit(_coo())
    MatrixFactorization(patience=None, solver="als", epochs=2).fit(_coo())


@pytest.mark.parametrize("solver", ["auto", "als", "adam"])
@pytest.mark.parametrize("loss", ["bpr", "warp"])
def test_a_pairwise_loss_with_the_rating_task_names_task_ranking(loss, solver):
    # trust: the message listed only the rating losses, not task='ranking'
    with pytest.raises(ValueError, match=rf"loss='{loss}' is a pairwise loss of the ranking "
                       rf"task: pass task='ranking' \(with loss='{loss}'\), or choose a rating "
                       r"loss: one of \['absolute'"):
        MatrixFactorization(loss=loss, solver=solver).fit(_coo())


# ------------------------------------------------------------------ 8: fold_in
@pytest.fixture(scope="module")
def fitted() -> MatrixFactorization:
    return MatrixFactorization(rank=2, solver="als", epochs=2, seed=0).fit(_coo())


def test_fold_in_refuses_ratings_given_as_strings(fitted):
    # trust: {100: "5"} was folded in as 5.0 without a word
    with pytest.raises(TypeError, match=r"the rating of item 3 is the string '5'; ratings must "
                       r"be numbers: convert them first \(for example \{3: float\('5'\)\}\)"):
        fitted.fold_in({1: 4.0, 3: "5"})


def test_fold_in_warns_for_ratings_outside_the_training_range(fitted):
    # trust: a rating of 50 for a 1-5 model was folded in silently, every score then clipped
    with pytest.warns(UserWarning, match=r"2 of the 3 ratings lie outside the training "
                      r"ratings' range \[1, 5\] \(first: 50 for item 2\); give them on the "
                      "scale the model was fitted on"):
        fitted.fold_in({1: 4.0, 2: 50.0, 3: 0.0})
    fitted.fold_in({1: 1.0, 2: 5.0})  # the ends of the range: no warning
    fitted.fold_in({1: 0.7, 2: 5.3})  # nor within a tenth of its width (continuous ratings)


# ------------------------------------------------------------------ 9: mixed id columns
def test_from_frame_refuses_an_id_column_mixing_ints_and_strings():
    # trust: a user column holding 1 and "1" made two users without a word
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"user": [1, "1", 2], "item": [1, 2, 3], "rating": [4.0, 5.0, 3.0]})
    with pytest.raises(ValueError, match=r"column 'user' mixes numbers and strings as user ids "
                       r"\(for example 1 and '1'\), which would be different users; cast the "
                       r"column to one type first, e.g. df\['user'\] = df\['user'\]\.astype\(str\)"):
        Ratings.from_frame(df)
    df = pd.DataFrame({"u": [1, 2], "i": ["a", 7], "r": [4.0, 5.0]})
    with pytest.raises(ValueError, match=r"column 'i' mixes numbers and strings as item ids "
                       r"\(for example 7 and 'a'\)"):
        Ratings.from_frame(df, user="u", item="i", rating="r")
    # one kind per column is fine, strings in one and ints in the other too
    df = pd.DataFrame({"user": ["a", "b"], "item": [1, 2], "rating": [4.0, 5.0]})
    assert Ratings.from_frame(df).shape == (2, 2)


def test_ranking_ratings_too_large_are_refused():
    # trust: task='ranking' with a rating of 1e30 ended with NaN factors and no word
    r = _coo()
    values = r.values.astype(np.float64)
    values[3] = 1e30
    r = Ratings.from_coo(r.users, r.items, values, shape=r.shape)
    with pytest.raises(ValueError, match=r"the ratings reach 1e\+30 in magnitude, too large for "
                       "a float32 fit"):
        MatrixFactorization(task="ranking", epochs=2).fit(r)


def test_a_ranking_fit_whose_factors_turn_non_finite_raises(monkeypatch):
    # trust: a ranking fit that went NaN returned the NaN factors as a fitted model
    import autofact.ranking

    real = autofact.ranking.fit_ranking

    def nan_fit(*args, **kwargs):
        P, Q, b = real(*args, **kwargs)
        P = P.clone()
        P[0, 0] = float("nan")
        return P, Q, b

    monkeypatch.setattr(autofact.ranking, "fit_ranking", nan_fit)
    with pytest.raises(autofact.FitError, match=r"the ranking fit's user factors turned "
                       r"non-finite \(NaN or infinity\); rescale the ratings \(their largest is "
                       r"5\), lower alpha \(now 0\.5\) or beta, or pass dtype='float64'"):
        MatrixFactorization(task="ranking", epochs=2).fit(_coo())


def test_partial_fit_matches_ids_of_the_other_kind_by_their_text():
    # trust (review): partial_fit looked ids up as they came, so user 5 joined a model whose
    # ids are strings ('007' among them) beside its '5': the map then mixed ints and strings
    rng = np.random.default_rng(1)
    users = np.array(["007"] + [str(u) for u in range(1, 30)], dtype=object)
    items = np.arange(12)
    u, i = rng.integers(0, 30, 400), rng.integers(0, 12, 400)
    keep = np.unique(u * 12 + i, return_index=True)[1]
    r = Ratings(u[keep], i[keep], np.ones(len(keep)), shape=(30, 12), user_ids=users,
                item_ids=items)
    model = MatrixFactorization(task="ranking", rank=2, epochs=2, seed=0).fit(r)
    n_users, n_items = len(model.user_ids_), len(model.item_ids_)
    model.partial_fit(Ratings(np.array([0, 0]), np.array([0, 1]), [1.0, 1.0], shape=(1, 2),
                              user_ids=np.array([5]), item_ids=np.array([3, 4])))
    assert (len(model.user_ids_), len(model.item_ids_)) == (n_users, n_items)
    assert all(isinstance(x, str) for x in model.user_ids_.tolist())
    assert set(model.index_.seen[int(np.flatnonzero(model.user_ids_ == "5")[0])].indices) == {3, 4}
