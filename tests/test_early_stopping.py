"""Early stopping on validation data (issue 9, item 6): stop after ``patience`` epochs without a
better validation RMSE, keep the best epoch's parameters, and say which epoch was kept."""

from __future__ import annotations

import numpy as np
import pytest

from autofact import MatrixFactorization, Ratings


def planted(m=150, n=120, rank=3, density=0.25, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    P, Q = rng.normal(size=(m, rank)), rng.normal(size=(n, rank))
    u, i = np.nonzero(rng.random((m, n)) < density)
    values = (P @ Q.T)[u, i] + noise * rng.normal(size=len(u))
    order = rng.permutation(len(u))
    cut = int(0.85 * len(u))
    a, b = order[:cut], order[cut:]
    return (Ratings.from_coo(u[a], i[a], values[a], shape=(m, n)),
            Ratings.from_coo(u[b], i[b], values[b], shape=(m, n)))


@pytest.fixture(scope="module")
def data():
    return planted()


def overfitting_model(**kw):
    # no regularization, rank above the planted one, fast Adam: validation error turns up
    kw = {"rank": 12, "regularization": "none", "solver": "adam", "lr": 0.05, "epochs": 150,
          "dtype": "float64", **kw}
    return MatrixFactorization(**kw)


def test_stops_after_patience_and_keeps_the_best_epoch(data):
    train, valid = data
    model = overfitting_model(patience=4).fit(train, validation=valid)
    val = [h["val_rmse"] for h in model.history_]
    best = int(np.argmin(val)) + 1
    assert model.n_epochs_ == best + 4 < 150  # stopped patience epochs after the best
    assert model.best_epoch_ == best
    assert [h["epoch"] for h in model.history_ if h.get("kept")] == [best]
    # the model holds the best epoch's parameters: its RMSE is the best one recorded
    assert -model.score(valid) == pytest.approx(min(val), rel=1e-9)
    assert -model.score(valid) < val[-1]


def test_patience_none_runs_every_epoch_and_keeps_the_last(data):
    train, valid = data
    model = overfitting_model(patience=None, epochs=40).fit(train, validation=valid)
    assert model.n_epochs_ == 40 and model.best_epoch_ == 40
    assert model.history_[-1].get("kept") is True
    assert -model.score(valid) == pytest.approx(model.history_[-1]["val_rmse"], rel=1e-9)


def test_without_validation_the_last_epoch_is_kept(data):
    train, _ = data
    model = MatrixFactorization(rank=3, epochs=4).fit(train)
    assert model.n_epochs_ == 4 and model.best_epoch_ == 4
    assert "val_rmse" not in model.history_[-1]


def test_validation_fraction_is_carved_from_the_training_data(data):
    train, valid = data
    model = overfitting_model(patience=4, validation_fraction=0.1).fit(train)
    assert "val_rmse" in model.history_[0]
    assert model.n_epochs_ < 150
    # fitted on 90% of train: a rating is held out, so the model saw fewer than all of them
    assert model.index_.seen.nnz == len(train) - round(0.1 * len(train))
    # the same seed carves the same split: repeatable
    again = overfitting_model(patience=4, validation_fraction=0.1).fit(train)
    np.testing.assert_array_equal(again.user_factors_, model.user_factors_)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patience": 0}, r"patience must be a positive int, 'auto' or None, got 0"),
        ({"patience": 2.5}, r"patience must be a positive int, 'auto' or None, got 2.5"),
        ({"validation_fraction": 1.0},
         r"validation_fraction must be a number strictly between 0 and 1 or None, got 1.0"),
        ({"validation_fraction": "0.1"},
         r"validation_fraction must be a number strictly between 0 and 1 or None, got '0.1'"),
    ],
)
def test_bad_settings_are_named(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        MatrixFactorization(**kwargs).fit(data[0])


def test_validation_and_validation_fraction_together_are_refused(data):
    train, valid = data
    with pytest.raises(ValueError, match=r"validation= and validation_fraction=0.1 both give"):
        MatrixFactorization(validation_fraction=0.1).fit(train, validation=valid)


def test_the_kept_epoch_survives_save_and_load(tmp_path, data):
    import autofact

    train, valid = data
    model = overfitting_model(patience=3).fit(train, validation=valid)
    same = autofact.load(model.save(tmp_path / "m.npz"))
    assert same.best_epoch_ == model.best_epoch_
    assert same.history_ == model.history_
    assert (same.patience, same.validation_fraction) == (3, None)


def test_auto_patience_is_a_tenth_of_the_epochs_at_least_five(data):
    train, valid = data
    # 150 epochs: patience 15 (Adam's validation error may stall before it falls)
    model = overfitting_model().fit(train, validation=valid)
    assert model.patience == "auto"
    assert model.n_epochs_ == model.best_epoch_ + 15 < 150
    short = overfitting_model(epochs=40).fit(train, validation=valid)
    assert short.n_epochs_ in (40, short.best_epoch_ + 5)
