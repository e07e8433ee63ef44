"""autofact.tune: Optuna search on a validation split carved from the training data (issue 9)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import autofact
from autofact import MatrixFactorization, Ratings
from autofact.tuning import read_params, tune

pytest.importorskip("optuna")


def planted(m=120, n=100, rank=3, density=0.3, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    P, Q = rng.normal(size=(m, rank)), rng.normal(size=(n, rank))
    u, i = np.nonzero(rng.random((m, n)) < density)
    values = (P @ Q.T)[u, i] + noise * rng.normal(size=len(u))
    return Ratings.from_coo(u, i, values, shape=(m, n))


@pytest.fixture(scope="module")
def ratings():
    return planted()


@pytest.fixture(scope="module")
def result(ratings):
    space = {"rank": ("int", 1, 8), "beta": ("float", 0.01, 100.0)}
    return tune(ratings, n_trials=8, space=space, fixed={"solver": "als"}, show_progress=False)


def test_tune_finds_the_planted_rank_region_and_beats_a_bad_setting(ratings, result):
    assert result.metric == "rmse"
    assert len(result.trials) == 8
    assert result.best_value == min(t["value"] for t in result.trials if t["state"] == "complete")
    # the best trial is far better than an over-regularized rank-1 model on the same split
    train, valid = autofact.evaluation.random_split(ratings, 0.1, seed=0)
    bad = MatrixFactorization(rank=1, beta=100.0, solver="als").fit(train)
    bad_rmse = autofact.evaluation.rmse(bad.predict(valid.user_ids[valid.users],
                                                    valid.item_ids[valid.items]), valid.values)
    assert result.best_value < 0.7 * bad_rmse
    assert result.best_params["solver"] == "als"


def test_tune_is_repeatable_with_a_seed(ratings, result):
    space = {"rank": ("int", 1, 8), "beta": ("float", 0.01, 100.0)}
    again = tune(ratings, n_trials=8, space=space, fixed={"solver": "als"}, show_progress=False)
    assert again.best_params == result.best_params
    assert again.best_value == pytest.approx(result.best_value, rel=1e-9)


def test_table_lists_best_trials_first(result):
    text = result.table(n=3)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["trial", "rmse", "seconds"]
    values = [float(line.split()[1]) for line in lines[2:5]]
    assert values == sorted(values) and values[0] == pytest.approx(result.best_value, abs=1e-4)


def test_saved_settings_round_trip_into_a_model(tmp_path, ratings, result):
    path = result.save(tmp_path / "best.json")
    params = read_params(path)
    assert params == result.best_params
    model = MatrixFactorization(**params).fit(ratings)
    assert model.rank == result.best_params["rank"]


def test_invalid_combinations_are_failed_trials_not_crashes(ratings):
    # als cannot run the absolute loss (no curvature): those trials fail, the others finish
    space = {"loss": ["absolute", "squared"], "solver": ["als"]}
    res = tune(ratings, n_trials=6, space=space, show_progress=False)
    assert res.best_params["loss"] == "squared"
    failed = [t for t in res.trials if t["state"] == "failed"]
    assert all(t["params"]["loss"] == "absolute" for t in failed)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_trials": 0}, r"n_trials must be a positive int, got 0"),
        ({"metric": "ndcg"}, r"metric must be one of \('rmse', 'mae'\), got 'ndcg'"),
        ({"space": {"ranks": [1, 2]}}, r"search space names 'ranks', which is not a"),
        ({"space": {"rank": ("int", 0, 4)}}, r"search space entry rank=\('int', 0, 4\) must be"),
        ({"space": {"rank": [2]}, "fixed": {"rank": 3}}, r"\['rank'\] are both fixed and searched"),
        ({"validation_fraction": 1.5}, r"test_fraction must be a number strictly between 0 and 1"),
        ({"timeout": -1}, r"timeout must be a positive number of seconds or None, got -1"),
        ({"space": {"loss": ["absolute"], "solver": ["als"]}, "n_trials": 2},
         r"none of the 2 trials finished"),
    ],
)
def test_bad_arguments_are_named(ratings, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tune(ratings, show_progress=False, **kwargs)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("not json", r"is not a JSON settings file"),
        ("[1, 2]", r"must hold a JSON object of parameters, got list"),
        ('{"rnk": 3}', r"sets \['rnk'\], which are not MatrixFactorization parameters"),
        ('{"rank": [3]}', r"rank=\[3\] must be a number, string, boolean or null"),
        # a settings file never names code (issue 8: nothing a file names is imported)
        ('{"loss": "os:abort"}', r"loss='os:abort' is not a built-in loss"),
        ('{"regularization": "tempfile:mkdtemp"}', r"regularization='tempfile:mkdtemp' is not a"),
        ('{"format": "other", "params": {}}', r"format is 'other', expected 'autofact.params'"),
    ],
)
def test_read_params_refuses_bad_files(tmp_path, content, match):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        read_params(path)


def test_read_params_accepts_a_hand_written_object(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"rank": 4, "loss": "huber", "beta": 2.5}))
    assert read_params(path) == {"rank": 4, "loss": "huber", "beta": 2.5}
    with pytest.raises(ValueError, match=r"does not exist or is not a file"):
        read_params(tmp_path / "missing.json")


def test_missing_optuna_names_the_extra(monkeypatch, ratings):
    import sys

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    with pytest.raises(ImportError, match=r"autofact.tune needs optuna: pip install 'autofact\[tune\]'"):
        tune(ratings, show_progress=False)
