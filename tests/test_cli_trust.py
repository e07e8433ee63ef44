"""The command line as a new user meets it (issue area "trust": never a silently wrong answer,
never lost work): each test here failed before its fix. In-process, on small generated files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from autofact import cli

USAGE = cli.ExitStatus.USAGE


def call(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def write_ratings(path: Path, rows: list[tuple[str, int, float]]) -> Path:
    path.write_text("user,item,rating\n" + "".join(f"{u},{i},{r}\n" for u, i, r in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Training and test ratings with plain integer ids, the same training ratings plus one
    rating by user ``007`` (which makes every training user id a string), and a model."""
    d = tmp_path_factory.mktemp("cli-trust")
    rng = np.random.default_rng(0)
    pairs = sorted({(int(u), int(i)) for u, i in zip(rng.integers(1, 31, 500),
                                                     rng.integers(100, 121, 500), strict=True)})
    rows = [(str(u), i, float(rng.integers(1, 6))) for u, i in pairs]
    train, test = [r for k, r in enumerate(rows) if k % 8], rows[::8][:40]
    f = {"dir": d, "train": write_ratings(d / "train.csv", train),
         "test": write_ratings(d / "test.csv", test),
         "train007": write_ratings(d / "train007.csv", train + [("007", 100, 3.0)]),
         "test007": write_ratings(d / "test007.csv", test + [("007", 100, 3.0)]),
         "model": d / "model.npz"}
    assert cli.main(["fit", str(f["train"]), "--out", str(f["model"]), "--epochs", "3",
                     "--rank", "2", "--quiet"]) == 0
    return f


# ------------------------------------------------------------------------------ ids by text
def test_fit_test_ids_match_training_ids_of_another_type(data, capsys, tmp_path):
    # trust: one training id '007' made every training id a string; the test file's plain ints
    # then matched none of them: every pair "unknown", metrics of the global mean, exit 0
    code, out, err = call(capsys, "fit", data["train007"], "--test", data["test"], "--out",
                          tmp_path / "m.npz", "--epochs", "3", "--rank", "2", "-q", "--json")
    assert code == 0, err
    assert "not in the training data" not in err
    metrics = json.loads(out)["metrics"]
    assert metrics["n_users"] > 0 and metrics["n_ratings"] == 40


def test_evaluate_ids_match_the_models_ids_of_another_type(data, capsys):
    # trust: a test file with one id '007' read every id as a string, none matching the model's
    # ints; now only the pair of '007' is unknown (007 is not user 7)
    code, out, err = call(capsys, "evaluate", data["model"], data["test007"], "--json")
    assert code == 0, err
    assert "1 of 41 pairs have a user or item that is not in the training data" in err
    _, plain, _ = call(capsys, "evaluate", data["model"], data["test"], "--json")
    assert json.loads(out)["n_users"] == json.loads(plain)["n_users"] > 0


def test_a_test_file_that_is_data_itself_warns(data, capsys, tmp_path):
    # trust: training-set metrics were printed as if held out
    link = tmp_path / "same.csv"
    link.symlink_to(data["train"])
    code, _, err = call(capsys, "fit", data["train"], "--test", link, "--out",
                        tmp_path / "m.npz", "--epochs", "2", "--rank", "2", "-q")
    assert code == 0
    assert "is DATA itself: the metrics below are on the training ratings" in err


# ------------------------------------------------------------------------------ outputs
def test_a_checkpoint_under_a_file_is_refused_before_the_fit(data, capsys, tmp_path):
    # trust: the fit ran, then the first checkpoint write failed (exit 1, "Not a directory"),
    # the work lost and no --out written
    out = tmp_path / "m.npz"
    code, stdout, err = call(capsys, "fit", data["train"], "--out", out, "--checkpoint",
                             data["train"] / "ck", "--epochs", "2", "-q")
    assert code == USAGE
    assert err.startswith("autofact: error: --checkpoint ") and "is a file, not a folder" in err
    assert stdout == "" and not out.exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_unwritable_out_folder_is_refused_before_the_fit(data, capsys, tmp_path):
    # trust: /proc/<pid> exists, but no file can be created there: the fit ran, then its save
    # failed (exit 1), the work lost
    code, stdout, err = call(capsys, "fit", data["train"], "--out", "/proc/self/m.npz",
                             "--epochs", "2", "-q")
    assert code == USAGE and stdout == ""
    assert "cannot write --out '/proc/self/m.npz'" in err and "is not writable" in err
    code, stdout, err = call(capsys, "fit", data["train"], "--out", tmp_path / "m.npz",
                             "--checkpoint", "/proc/self/ck", "--epochs", "2", "-q")
    assert code == USAGE and stdout == ""
    assert "cannot write --checkpoint '/proc/self/ck'" in err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_a_read_only_checkpoint_folder_is_refused_before_the_fit(data, capsys, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, stdout, err = call(capsys, "fit", data["train"], "--out", tmp_path / "m.npz",
                                 "--checkpoint", folder, "--epochs", "2", "-q")
    finally:
        folder.chmod(0o755)
    assert code == USAGE and stdout == ""
    assert "cannot write --checkpoint" in err and "is not writable" in err


# ------------------------------------------------------------------------------ messages
def test_a_pairwise_loss_without_the_ranking_task_names_the_fix(data, capsys, tmp_path):
    # trust: "loss must be one of ['absolute', ...]; got 'bpr'", with no word of --task ranking
    code, _, err = call(capsys, "fit", data["train"], "--out", tmp_path / "m.npz",
                        "--loss", "bpr", "-q")
    assert code == USAGE
    assert "--loss bpr is a pairwise ranking loss: add --task ranking" in err


def test_the_loss_choices_name_the_pairwise_losses(data, capsys, tmp_path):
    code, _, err = call(capsys, "fit", data["train"], "--out", tmp_path / "m.npz",
                        "--loss", "nope")
    assert code == USAGE
    assert "must be one of absolute, bpr, huber, logistic, poisson, squared, warp" in err


@pytest.mark.parametrize("verb", ["fit", "evaluate", "predict", "recommend", "tune", "demo"])
def test_help_names_no_internal_issue_numbers(verb, capsys):
    # trust: "(issue 11)" in a group title and "(issue 12)" in --all's help meant nothing to
    # a user
    with pytest.raises(SystemExit):
        cli.main([verb, "--help"])
    out, _ = capsys.readouterr()
    assert "usage: autofact" in out and "issue" not in out.lower()


# ------------------------------------------------------------------------------ titles
def test_a_ratings_file_given_as_items_is_refused(data, capsys):
    # trust: train.csv as --items read user ids as item ids and item ids as titles
    code, out, err = call(capsys, "recommend", data["model"], "--user", "1", "--items",
                          data["train"])
    assert code == USAGE and out == ""
    assert "is listed again (first on line" in err and "is it a ratings file?" in err


def test_titles_of_another_data_set_warn(data, capsys, tmp_path):
    # trust: an empty title column, silently
    titles = tmp_path / "titles.txt"
    titles.write_text("1|Toy Story (1995)\n2|GoldenEye (1995)\n")
    code, out, err = call(capsys, "recommend", data["model"], "--user", "1", "-n", "2",
                          "--items", titles)
    assert code == 0 and out.startswith("top 2 for user 1")
    assert "warning: none of the 2 recommended items has a title in --items" in err


# ------------------------------------------------------------------------------ damaged state
def test_a_model_with_non_finite_factors_is_not_saved(data, capsys, tmp_path):
    # trust: a checkpoint with a nan in the sampler's running sums was resumed to exit 0,
    # "training RMSE nan", and a model file that autofact.load refused as damaged
    ck, out = tmp_path / "ck", tmp_path / "m.npz"
    argv = ("fit", data["train"], "--out", out, "--epochs", "4", "--rank", "2",
            "--checkpoint", ck, "-q")
    assert call(capsys, *argv)[0] == 0
    arrays = dict(np.load(ck / "checkpoint.npz", allow_pickle=False))
    arrays["optim.chain.sum"] = arrays["optim.chain.sum"].copy()
    arrays["optim.chain.sum"].flat[0] = np.nan
    np.savez(ck / "checkpoint.npz", **arrays)
    out.unlink()
    # the library now refuses the damaged checkpoint when it reads it, before any sweep
    code, stdout, err = call(capsys, *argv)
    assert code == cli.ExitStatus.USAGE and stdout == "" and not out.exists()
    assert "checkpoint.npz is damaged" in err and "holds non-finite values" in err
    assert "delete it to start over" in err


def test_a_fit_that_ends_with_non_finite_factors_saves_nothing(data, capsys, tmp_path,
                                                               monkeypatch):
    # trust: whatever made the factors non-finite, the model is not saved (exit 1, naming
    # --out and the checkpoint to delete)
    from autofact.model import MatrixFactorization

    fit = MatrixFactorization.fit

    def diverged(self, *args, **kwargs):
        fit(self, *args, **kwargs)
        self.user_factors_ = np.full_like(self.user_factors_, np.nan)
        return self

    monkeypatch.setattr(MatrixFactorization, "fit", diverged)
    ck, out = tmp_path / "ck", tmp_path / "m.npz"
    code, stdout, err = call(capsys, "fit", data["train"], "--out", out, "--epochs", "4",
                             "--rank", "2", "--checkpoint", ck, "-q")
    assert code == cli.ExitStatus.ERROR and stdout == "" and not out.exists()
    assert "user_factors holds non-finite values" in err and f"delete {ck} to start over" in err
    # review: without a checkpoint the message named no fix at all
    code, stdout, err = call(capsys, "fit", data["train"], "--out", out, "--epochs", "4",
                             "--rank", "2", "-q")
    assert code == cli.ExitStatus.ERROR and stdout == "" and not out.exists()
    assert err.strip().endswith(f"it was not saved to {out}; the fit diverged: try a smaller "
                                "--lr, a larger --beta, --solver als or --dtype float64")


def test_ctrl_c_during_tune_prints_no_traceback(data, capfd, monkeypatch):
    # trust: Optuna logged the interrupted trial with the whole traceback of the fit before
    # "autofact: interrupted" (a traceback only with --traceback, says the README)
    pytest.importorskip("optuna")
    from autofact.model import MatrixFactorization

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(MatrixFactorization, "fit", interrupted)
    code = cli.main(["tune", str(data["train"]), "--trials", "3", "-q"])
    out, err = capfd.readouterr()
    assert code == cli.ExitStatus.INTERRUPTED and out == ""
    assert err.strip() == "autofact: interrupted"


def test_ctrl_c_during_tune_keeps_the_finished_trials(data, capsys, monkeypatch, tmp_path):
    # trust (never lost work): Ctrl-C after two trials finished threw them away; now the best
    # so far is shown and written to --out, and the exit status still says interrupted
    pytest.importorskip("optuna")
    from autofact.model import MatrixFactorization
    from autofact.tuning import read_params

    from .conftest import interrupt_at_call

    interrupt_at_call(monkeypatch, MatrixFactorization, "fit", 3)
    best = tmp_path / "best.json"
    code = cli.main(["tune", str(data["train"]), "--trials", "5", "-q", "--out", str(best)])
    out, err = capsys.readouterr()
    assert code == cli.ExitStatus.INTERRUPTED
    assert "defaults" in out and f"wrote the best settings so far to {best}" in out
    assert err.strip().splitlines()[-1] == (
        "autofact: interrupted after 2 finished trials; the best so far is above")
    assert isinstance(read_params(best), dict)


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_a_numerical_failure_of_the_fit_exits_1_with_a_hint(data, capsys, monkeypatch, tmp_path,
                                                            library):
    # trust: numpy's LinAlgError (a ValueError) from the sampler, e.g. on ratings of 1e30,
    # was a usage error (exit 2) that said only "a row's conditional precision is not
    # positive definite"; review: torch's (a RuntimeError named _LinAlgError) was an
    # "internal error ... please report it"
    import torch

    from autofact.model import MatrixFactorization

    error = np.linalg.LinAlgError if library == "numpy" else torch.linalg.LinAlgError

    def failed(self, *args, **kwargs):
        raise error("a row's conditional precision is not positive definite")

    monkeypatch.setattr(MatrixFactorization, "fit", failed)
    code, out, err = call(capsys, "fit", data["train"], "--out", tmp_path / "m.npz", "-q")
    assert code == cli.ExitStatus.ERROR and out == ""
    assert err.startswith("autofact: error: the fit failed numerically (a row's conditional")
    assert "check DATA for ratings of extreme size" in err


@pytest.mark.parametrize("typed", ["1_0", "010", "+10", " 10"])
def test_an_id_on_the_command_line_is_read_as_written(data, capsys, typed):
    # trust: int() read '1_0', '010', '+10' and ' 10' as user 10, who was then scored; a
    # file's '010' is another user than 10 (autofact.read's rule), so here too
    assert call(capsys, "predict", data["model"], "--user", "10", "--item", "100")[0] == 0
    code, out, err = call(capsys, "predict", data["model"], "--user", typed, "--item", "100")
    assert code == USAGE and out == ""
    assert f"user {typed!r} is not in the training data" in err


# ------------------------------------------------------------------------------ silent options
@pytest.mark.parametrize("argv, line", [
    (["--alpha", "3"], "--alpha 3 is the ranking task's confidence (1 + alpha * rating) and "
     "changes nothing in a rating model: add --task ranking"),
    (["--patience", "3"], "--patience 3 stops on held-out ratings, and this fit has none: "
     "pass --validation-fraction F (or --test FILE)"),
    (["--patience", "3", "--task", "ranking", "--test", "{test}"],
     "--patience 3 stops on a validation RMSE, which a ranking model (--task ranking) has none"),
])
def test_an_option_that_would_change_nothing_is_refused(data, capsys, tmp_path, argv, line):
    # trust: --alpha without --task ranking, and --patience without held-out ratings, were
    # accepted and changed nothing
    argv = [a.format(test=data["test"]) for a in argv]
    code, out, err = call(capsys, "fit", data["train"], "--out", tmp_path / "m.npz",
                          "--epochs", "2", "-q", *argv)
    assert code == USAGE and out == "" and not (tmp_path / "m.npz").exists()
    assert line in err


def test_timeout_outside_torchrun_warns(data, capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code, _, err = call(capsys, "fit", data["train"], "--out", tmp_path / "m.npz",
                        "--epochs", "2", "--rank", "2", "-q", "--timeout", "5")
    assert code == 0
    assert "warning: --timeout 5 applies under torchrun only" in err


def test_a_none_in_a_library_message_is_an_option_left_out():
    # trust: "leave --lr None or pick a first-order solver" asked for a value the command
    # line refuses
    assert cli.cli_words("leave lr=None or pick a first-order solver") == (
        "leave out --lr or pick a first-order solver")
    assert cli.cli_words("full batch: set batch_size=None, got 64") == (
        "full batch: leave out --batch-size, got 64")
    assert cli.cli_words("for mini-batches, or batch_size=None") == (
        "for mini-batches, or no --batch-size")
    assert cli.cli_words("leave the_lr=None alone") == "leave the_lr=None alone"


def test_fold_in_ratings_on_another_scale_warn(data, capsys, tmp_path):
    # trust: ratings of 50 and -20 for a model fitted on 1-5 were folded in without a word
    mine = tmp_path / "mine.csv"
    mine.write_text("item,rating\n100,50\n101,-20\n102,4\n")
    code, out, err = call(capsys, "recommend", data["model"], "--ratings", mine, "-n", "2")
    assert code == 0 and out.startswith("top 2 for the new user in mine.csv")
    assert "warning: 2 of the 3 ratings in" in err
    assert "lie outside the training ratings' range [1, 5] (first: 50 on line 2)" in err
    assert err.count("outside the training ratings' range") == 1  # not again from the library


def test_fold_in_warns_by_the_librarys_rule(data, capsys, tmp_path):
    # trust (review): the CLI warned about any rating outside [low, high] while fold_in allows a
    # tenth of the range's width: both now use recommend.off_scale (5.2 for a 1-5 model is
    # within it, 5.5 is not)
    from autofact.recommend import off_scale

    assert off_scale([5.2, 5.5, 0.7, 0.5, 3.0], (1.0, 5.0)).tolist() == [
        False, True, False, True, False]
    mine = tmp_path / "near.csv"
    mine.write_text("item,rating\n100,5.2\n101,4\n")
    code, out, err = call(capsys, "recommend", data["model"], "--ratings", mine, "-n", "2")
    assert code == 0 and "outside" not in err
    mine.write_text("item,rating\n100,5.5\n101,4\n")
    code, out, err = call(capsys, "recommend", data["model"], "--ratings", mine, "-n", "2")
    assert code == 0 and "(first: 5.5 on line 2)" in err


def test_evaluate_and_fit_test_read_a_folder_of_parts_as_fit_does(data, capsys, tmp_path):
    # trust: `autofact fit DIR` read a folder of parts, but `evaluate MODEL DIR` and
    # `fit --test DIR` refused it ("is a directory; give a file")
    parts = tmp_path / "parts"
    parts.mkdir()
    lines = data["test"].read_text().splitlines()
    (parts / "a.csv").write_text("\n".join(lines[:20]) + "\n")
    (parts / "b.csv").write_text("\n".join(lines[:1] + lines[20:]) + "\n")
    code, out, err = call(capsys, "evaluate", data["model"], parts, "--json")
    assert code == 0, err
    _, whole, _ = call(capsys, "evaluate", data["model"], data["test"], "--json")
    assert json.loads(out) == json.loads(whole)
    code, out, err = call(capsys, "fit", data["train"], "--test", parts, "--out",
                          tmp_path / "m.npz", "--epochs", "2", "--rank", "2", "-q", "--json")
    assert code == 0, err
    assert json.loads(out)["metrics"]["n_ratings"] == 40


def test_the_demos_top_5_shows_scores_that_compare_with_the_planted_ones(capsys, tmp_path):
    # trust: recommend's scores are clipped to 1-5 stars: the demo's top 5 all read 5.0000
    # beside planted scores above 5, which looked like a model far off
    assert cli.main(["demo", "--out", str(tmp_path), "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    rows = out.split("raw score  planted score")[1].splitlines()[2:7]
    raw = [float(r.split()[2]) for r in rows]
    assert len(set(raw)) == 5 and raw == sorted(raw, reverse=True)
