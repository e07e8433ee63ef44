"""The ``autofact`` command line, run as a user would: ``python -m autofact`` and the console
script, on MovieLens 100k (u1.base / u1.test) read from ../shared/datasets.

The happy path runs in subprocesses (one fit shared by the module); the error matrix, on
generated files, is in test_cli_errors.py (in-process); a few errors are checked in a real
process here.
"""

from __future__ import annotations

import csv
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import autofact
from autofact import cli
from autofact.cli.readers import read_titles

from .conftest import dataset

SCRIPT = Path(sys.executable).with_name("autofact")


def run(*args: object, script: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [str(SCRIPT)] if script else [sys.executable, "-m", "autofact"]
    return subprocess.run(
        cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def call(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def ml() -> Path:
    return dataset("ml-100k", "u1.base").parent


@pytest.fixture(scope="module")
def fitted(ml: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """``autofact fit u1.base --test u1.test`` once for the module."""
    tmp = tmp_path_factory.mktemp("cli")
    model, curve = tmp / "model.npz", tmp / "curve.png"
    proc = run("fit", ml / "u1.base", "--test", ml / "u1.test", "--rank", 8, "--epochs", 3,
               "--out", model, "--plot", curve)
    return {"proc": proc, "model": model, "curve": curve, "tmp": tmp}


# ------------------------------------------------------------------------------ the happy path
def test_fit_prints_progress_and_metrics_and_saves(fitted):
    proc = fitted["proc"]
    assert proc.returncode == 0, proc.stderr
    assert "val_rmse=" in proc.stderr and "3/3" in proc.stderr  # the tqdm bar, on stderr
    assert "Traceback" not in proc.stderr
    for name in ("rmse", "mae", "precision@10", "recall@10", "ndcg@10", "map@10"):
        assert name in proc.stdout
    assert "80000 ratings (943 users x 1650 items)" in proc.stdout
    assert fitted["model"].is_file()
    assert fitted["curve"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_json_via_console_script(fitted, ml):
    assert SCRIPT.exists(), f"console script not installed at {SCRIPT}"
    proc = run("evaluate", fitted["model"], ml / "u1.test", "--json", script=True)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert metrics["n_ratings"] == 20000
    assert 0.8 < metrics["rmse"] < 1.1
    assert 0.0 <= metrics["precision@10"] <= 1.0
    # the same numbers fit printed in its table
    assert f"{metrics['rmse']:.4f}" in fitted["proc"].stdout
    assert f"{metrics['ndcg@10']:.4f}" in fitted["proc"].stdout


def test_predict_matches_the_library_exactly(fitted, ml, tmp_path):
    model = autofact.load(fitted["model"])
    proc = run("predict", fitted["model"], "--user", 196, "--item", 242, "--json")
    assert proc.returncode == 0, proc.stderr
    single = json.loads(proc.stdout)
    assert single["user"] == 196 and single["item"] == 242
    assert single["prediction"] == model.predict([196], [242])[0]

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user,item\n196,242\n1,1\n\n13,100\n")
    out = tmp_path / "pred.csv"
    proc = run("predict", fitted["model"], "--pairs", pairs, "--out", out)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [(r["user"], r["item"]) for r in rows] == [("196", "242"), ("1", "1"), ("13", "100")]
    got = np.array([float(r["prediction"]) for r in rows])
    np.testing.assert_array_equal(got, model.predict([196, 1, 13], [242, 1, 100]))


def test_recommend_shows_titles_and_matches_the_library(fitted, ml):
    proc = run("recommend", fitted["model"], "--user", 196, "-n", 5, "--items", ml / "u.item")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "top 5 for user 196"
    recs = autofact.load(fitted["model"]).recommend(196, n=5)
    body = lines[3:]
    assert len(body) == 5
    titles = {}
    for line in (ml / "u.item").read_bytes().decode("latin-1").splitlines():
        f = line.split("|")
        titles[int(f[0])] = f[1]
    for row, item in zip(body, recs.items.tolist(), strict=True):
        assert row.split()[1] == str(item)
        assert row.endswith(titles[item])  # e.g. "Schindler's List (1993)"


def test_recommend_for_a_new_user_folds_in(fitted, ml, tmp_path):
    new = tmp_path / "me.csv"
    new.write_text("item,rating\n50,5\n181,5\n172,4\n1,2\n")
    proc = run("recommend", fitted["model"], "--ratings", new, "-n", 3, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    model = autofact.load(fitted["model"])
    expected = model.recommend(model.fold_in({50: 5.0, 181: 5.0, 172: 4.0, 1: 2.0}), n=3)
    assert [r["item"] for r in out["items"]] == expected.items.tolist()
    assert not {50, 181, 172, 1} & {r["item"] for r in out["items"]}


def test_demo_runs_without_data_and_writes_its_png(tmp_path):
    proc = run("demo", "--out", tmp_path, "--epochs", 4)
    assert proc.returncode == 0, proc.stderr
    assert "[[5. 3. 0. 1.]" in proc.stdout  # the post's R
    assert "reconstructed" in proc.stdout and "rmse" in proc.stdout
    assert "val_rmse=" in proc.stderr
    png = tmp_path / "autofact-demo-curve.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------ user errors
def test_user_errors_in_a_real_process(ml, tmp_path):
    proc = run("fit", ml / "u1.base", "--rank", -3, "--out", tmp_path / "m.npz")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "autofact: error: argument --rank: must be a positive int, got '-3' "
        "(see 'autofact fit --help')"
    ]
    assert proc.stdout == ""


def test_pickle_handed_to_predict_is_refused_and_not_run(tmp_path, capsys):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "model.npz"
    evil.write_bytes(pickle.dumps(Evil()))
    code, out, err = call(capsys, "predict", evil, "--user", 1, "--item", 1)
    assert code == 2
    assert "pickle" in err and "nothing in it was executed" in err
    assert not marker.exists()


def test_ctrl_c_exits_130(monkeypatch, capsys, fitted, ml):
    from autofact.cli import evaluate as verb

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(verb, "evaluate", interrupted)
    code, _, err = call(capsys, "evaluate", fitted["model"], ml / "u1.test")
    assert code == 130 and "interrupted" in err


@pytest.mark.parametrize("verb", [None, "fit", "evaluate", "predict", "recommend", "demo"])
def test_help_everywhere(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(([verb] if verb else []) + ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: autofact{' ' + verb if verb else ''}")


def test_no_verb_shows_help_and_exits_2(capsys):
    code, out, err = call(capsys)
    assert code == 2 and "fit" in err and "recommend" in err and out == ""


def test_titles_from_movies_csv_and_string_ids(tmp_path):
    movies = tmp_path / "movies.csv"
    movies.write_text('movieId,title,genres\n1,Toy Story (1995),Animation\n'
                      '2,"Jumanji, The (1995)",Adventure\nab,Text Id,Drama\n')
    titles = read_titles(movies)
    assert titles == {1: "Toy Story (1995)", 2: "Jumanji, The (1995)", "ab": "Text Id"}
