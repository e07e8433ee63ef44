"""autofact.tune: Optuna search on a validation split carved from the training data (issue 9)."""

from __future__ import annotations

import json
import re

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


# ---------------------------------------------------------------- the command line (issue 9)
def _ratings_file(path, ratings):
    lines = ["user,item,rating"] + [
        f"{u},{i},{v:.4f}" for u, i, v in zip(ratings.users, ratings.items, ratings.values,
                                               strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_tune_writes_settings_that_fit_accepts(tmp_path, capsys, ratings):
    from autofact import cli

    data = _ratings_file(tmp_path / "r.csv", ratings)
    best = tmp_path / "best.json"
    code = cli.main(["tune", str(data), "--trials", "3", "--out", str(best), "--quiet",
                     "--seed", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[0].split()[:3] == ["trial", "rmse", "seconds"]
    assert f"wrote the best settings to {best}" in out
    params = read_params(best)
    model_path = tmp_path / "m.npz"
    # options on the command line win over the file
    code = cli.main(["fit", str(data), "--params", str(best), "--rank", "2", "--out",
                     str(model_path), "--quiet", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    model = autofact.load(model_path)
    assert model.rank == 2
    assert model.beta == pytest.approx(params["beta"])
    assert model.loss == params["loss"]
    # a second tune may replace its own settings file
    assert cli.main(["tune", str(data), "--trials", "2", "--out", str(best), "--quiet"]) == 0


def test_cli_fit_validation_fraction_stops_early_and_reports_the_kept_epoch(tmp_path, capsys,
                                                                            ratings):
    import json

    from autofact import cli

    # noisy and sparse enough that an unregularized rank-12 model overfits within 150 epochs
    noisy = planted(m=150, n=120, density=0.25, noise=0.3)
    data = _ratings_file(tmp_path / "r.csv", noisy)
    code = cli.main(["fit", str(data), "--out", str(tmp_path / "m.npz"), "--solver", "adam",
                     "--lr", "0.05", "--reg", "none", "--rank", "12", "--epochs", "150",
                     "--validation-fraction", "0.15", "--patience", "3", "--quiet", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    kept = [h["epoch"] for h in summary["history"] if h.get("kept")]
    assert len(kept) == 1 and summary["epochs"] == kept[0] + 3 < 150


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--trials", "0"], r"argument --trials: must be a positive int, got '0'"),
        (["--validation-fraction", "2"], r"--validation-fraction: must be a number strictly"),
        (["--out", "{data}"], r"--out '.*r.csv' is the input DATA"),
        (["--out", "{notes}"], r"--out '.*notes.json' exists and is not a settings file written"),
        (["--out", "{missing}"], r"folder '.*nowhere' does not exist; create it first"),
    ],
)
def test_cli_tune_errors(tmp_path, capsys, ratings, args, match):
    from autofact import cli

    data = _ratings_file(tmp_path / "r.csv", ratings)
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}\n')
    names = {"data": data, "notes": notes, "missing": tmp_path / "nowhere" / "b.json"}
    code = cli.main(["tune", str(data), *(a.format(**names) for a in args)])
    _, err = capsys.readouterr()
    assert code == 2
    assert re.search(match, err), err
    assert notes.read_text() == '{"mine": 1}\n'  # nothing replaced


def test_cli_fit_params_refuses_a_file_naming_code(tmp_path, capsys, ratings):
    from autofact import cli

    data = _ratings_file(tmp_path / "r.csv", ratings)
    bad = tmp_path / "p.json"
    bad.write_text('{"loss": "os:abort"}')
    code = cli.main(["fit", str(data), "--params", str(bad), "--out", str(tmp_path / "m.npz")])
    _, err = capsys.readouterr()
    assert code == 2
    assert "is not a built-in loss" in err and "never names code to import" in err
    assert not (tmp_path / "m.npz").exists()
