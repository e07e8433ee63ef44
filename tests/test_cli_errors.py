"""Every error of the command line, on small files generated here (no ../shared): the exit
status, the one line on stderr, and that no input was touched (issue 8, items 1, 5, 6, 13, 15).

The matrix calls ``autofact.cli.main`` in-process; the hint test then checks that every option a
message asks for (``pass --duplicates mean``) is one the command line accepts.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import numpy as np
import pytest

import autofact
from autofact import cli

USAGE, ERROR = cli.ExitStatus.USAGE, cli.ExitStatus.ERROR


def call(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def write_ratings(path: Path, n_users: int = 30, n_items: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    pairs = sorted({(int(u), int(i)) for u, i in zip(rng.integers(0, n_users, 400),
                                                     rng.integers(0, n_items, 400),
                                                     strict=True)})
    lines = ["user,item,rating"] + [f"{u},{i},{rng.integers(1, 6)}" for u, i in pairs]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good and bad inputs, and a model fitted on the good ratings (in-process, ~1 s)."""
    d = tmp_path_factory.mktemp("cli-errors")
    f: dict[str, Path] = {"dir": d}
    f["ratings"] = write_ratings(d / "ratings.csv")
    f["model"] = d / "model.npz"
    assert cli.main(["fit", str(f["ratings"]), "--out", str(f["model"]), "--epochs", "2",
                     "--rank", "3", "--quiet"]) == 0
    texts = {
        "empty.csv": "",
        "short.csv": "1,2,5\n1,3,4\n2,4\n",
        "badnum.csv": "1,2,5\n1,3,x\n",
        "inf.csv": "1,2,5\n1,3,inf\n",
        "dup.csv": "user,item,rating\n1,2,3\n1,2,4\n",
        "five.txt": "1;2;3;4;5\n2;3;4;5;6\n",
        "cols.csv": "who,what,stars\n1,2,3\n",
        "notes.txt": "my notes: not a model\n",
        "pairs_short.csv": "1,1\n2\n",
        "pairs_noitem.csv": "user,thing\n1,2\n",
        "pairs_header.csv": "user,item\n",
        "ratings_word.csv": "50,5\n181,five\n",
        "ratings_norating.csv": "item,stars\n1,5\n",
        "ratings_twice.csv": "item,rating\n1,5\n1,4\n",
        "titles_empty.csv": "\n\n",
        "titles_short.csv": "1|Toy Story\n2\n",
        "predictions_other.csv": "id,value\n1,2\n",
    }
    for name, text in texts.items():
        (d / name).write_text(text)
        f[name.replace(".", "_")] = d / name
    f["latin1_csv"] = d / "latin1.csv"
    f["latin1_csv"].write_bytes("user,item,rating\nRen\xe9,1,5\nb,2,3\n".encode("latin-1"))
    f["binary_csv"] = d / "binary.csv"
    f["binary_csv"].write_bytes(b"\x00\x01\x02PK\x00" * 20)
    f["link_to_ratings"] = d / "link.csv"
    f["link_to_ratings"].symlink_to(f["ratings"])
    f["subdir"] = d / "sub"
    f["subdir"].mkdir()
    (d / "demo_bad").mkdir()
    (d / "demo_bad" / "autofact-demo-curve.png").write_text("not a png")
    return f


# (argv, exit status, what the one line says); {name} is a file of the fixture, {dir} its folder
MATRIX = [
    # --- inputs that do not exist or cannot be read
    ("missing-data", ["fit", "{dir}/missing.csv", "--out", "{dir}/m.npz"], USAGE,
     "argument DATA: file '{dir}/missing.csv' does not exist; check the path"),
    # issue 11: DATA may be a folder of part files; an empty one names what it lacks
    ("data-is-dir", ["fit", "{subdir}", "--out", "{dir}/m.npz"], USAGE,
     "folder '{subdir}' holds no part files (CSV, TSV or Parquet)"),
    ("empty-data", ["fit", "{empty_csv}", "--out", "{dir}/m.npz"], USAGE,
     "empty.csv: the file is empty"),
    ("short-line", ["fit", "{short_csv}", "--out", "{dir}/m.npz"], USAGE,
     "line 3 of short.csv: expected at least 3 fields (user, item, rating), got fewer"),
    ("bad-number", ["fit", "{badnum_csv}", "--out", "{dir}/m.npz"], USAGE,
     "line 2 of badnum.csv: rating 'x' is not a number"),
    ("not-finite", ["fit", "{inf_csv}", "--out", "{dir}/m.npz"], USAGE,
     "line 2 of inf.csv: rating inf is not finite"),
    ("binary-data", ["fit", "{binary_csv}", "--out", "{dir}/m.npz"], USAGE,
     "binary.csv: this looks like a binary file"),
    ("latin1", ["fit", "{latin1_csv}", "--out", "{dir}/m.npz"], USAGE,
     "latin1.csv: byte 20 (line 2) is b'\\xe9', not valid utf-8; pass --encoding latin-1"),
    ("duplicates", ["fit", "{dup_csv}", "--out", "{dir}/m.npz"], USAGE,
     "pass --duplicates mean or --duplicates last"),
    ("five-fields", ["fit", "{five_txt}", "--out", "{dir}/m.npz"], USAGE,
     "line 1 of five.txt: expected 3 or 4 fields (user, item, rating[, timestamp]) separated by "
     "';', got 5; pass --sep"),
    ("unknown-column", ["fit", "{ratings}", "--out", "{dir}/m.npz", "--user-col", "nope"], USAGE,
     "--user-col nope is not a column of ratings.csv"),
    ("test-missing", ["fit", "{ratings}", "--test", "{dir}/nope.csv", "--out", "{dir}/m.npz"],
     USAGE, "argument --test: file '{dir}/nope.csv' does not exist"),
    ("test-bad", ["fit", "{ratings}", "--test", "{badnum_csv}", "--out", "{dir}/m.npz"],
     USAGE, "line 2 of badnum.csv: rating 'x' is not a number"),
    # --- options
    ("rank", ["fit", "{ratings}", "--rank", "0", "--out", "{dir}/m.npz"], USAGE,
     "argument --rank: must be a positive int, got '0'"),
    ("epochs", ["fit", "{ratings}", "--epochs", "x", "--out", "{dir}/m.npz"], USAGE,
     "argument --epochs: must be a positive int, got 'x'"),
    ("lr", ["fit", "{ratings}", "--lr", "-1", "--out", "{dir}/m.npz"], USAGE,
     "argument --lr: must be a positive number, got '-1'"),
    ("beta", ["fit", "{ratings}", "--beta", "nan", "--out", "{dir}/m.npz"], USAGE,
     "argument --beta: must be a number >= 0, got 'nan'"),
    ("seed", ["fit", "{ratings}", "--seed", "-1", "--out", "{dir}/m.npz"], USAGE,
     "argument --seed: must be an int >= 0, got '-1'"),
    ("threshold", ["fit", "{ratings}", "--threshold", "inf", "--out", "{dir}/m.npz"], USAGE,
     "argument --threshold: must be a finite number, got 'inf'"),
    ("test-fraction", ["fit", "{ratings}", "--test-fraction", "1.5", "--out", "{dir}/m.npz"],
     USAGE, "argument --test-fraction: must be a number strictly between 0 and 1"),
    ("test-and-fraction", ["fit", "{ratings}", "--test", "{ratings}", "--test-fraction", "0.2",
                           "--out", "{dir}/m.npz"], USAGE,
     "argument --test-fraction: not allowed with argument --test"),
    ("solver", ["fit", "{ratings}", "--solver", "newton", "--out", "{dir}/m.npz"], USAGE,
     "argument --solver: invalid choice: 'newton'"),
    ("loss-name", ["fit", "{ratings}", "--loss", "cubic", "--out", "{dir}/m.npz"], USAGE,
     "argument --loss: must be one of absolute, bpr, huber"),
    ("loss-module", ["fit", "{ratings}", "--loss", "nosuchmodule:f", "--out", "{dir}/m.npz"],
     USAGE, "cannot import module 'nosuchmodule'"),
    ("reg-name", ["fit", "{ratings}", "--reg", "l3", "--out", "{dir}/m.npz"], USAGE,
     "argument --reg: must be one of"),
    ("duplicates-choice", ["fit", "{ratings}", "--duplicates", "max", "--out", "{dir}/m.npz"],
     USAGE, "argument --duplicates: invalid choice: 'max'"),
    ("encoding", ["fit", "{ratings}", "--encoding", "klingon", "--out", "{dir}/m.npz"], USAGE,
     "argument --encoding: unknown encoding 'klingon'; try utf-8, latin-1 or cp1252"),
    ("sep-empty", ["fit", "{ratings}", "--sep", "", "--out", "{dir}/m.npz"], USAGE,
     "argument --sep: must not be empty"),
    ("no-out", ["fit", "{ratings}"], USAGE, "the following arguments are required: --out"),
    ("unknown-option", ["fit", "{ratings}", "--out", "{dir}/m.npz", "--frobnicate"], USAGE,
     "unrecognized arguments: --frobnicate"),
    ("unknown-verb", ["frobnicate"], USAGE, "argument VERB: invalid choice: 'frobnicate'"),
    # --- outputs (issue 8, item 1 and the smaller ones): refused before any work
    ("out-is-data", ["fit", "{ratings}", "--out", "{ratings}"], USAGE,
     "--out '{ratings}' is the input DATA ('{ratings}'); writing it would destroy the input"),
    ("out-is-test", ["fit", "{ratings}", "--test", "{dup_csv}", "--out", "{dup_csv}"], USAGE,
     "--out '{dup_csv}' is the input --test"),
    ("out-links-to-data", ["fit", "{ratings}", "--out", "{link_to_ratings}"], USAGE,
     "--out '{link_to_ratings}' is the input DATA"),
    ("out-dotted-data", ["fit", "{ratings}", "--out", "{subdir}/../ratings.csv"], USAGE,
     "is the input DATA"),
    ("out-not-a-model", ["fit", "{ratings}", "--out", "{notes_txt}"], USAGE,
     "--out '{notes_txt}' exists and is not an autofact model; refusing to replace it: remove "
     "it first or choose another name"),
    ("out-folder-missing", ["fit", "{ratings}", "--out", "{dir}/nodir/m.npz"], USAGE,
     "cannot write --out '{dir}/nodir/m.npz': folder '{dir}/nodir' does not exist; create it "
     "first"),
    ("out-empty", ["fit", "{ratings}", "--out", ""], USAGE,
     "argument --out/-o: must be a file name, got ''"),
    ("out-is-dir", ["fit", "{ratings}", "--out", "{subdir}"], USAGE,
     "--out '{subdir}' is a directory; give a file name"),
    ("plot-extension", ["fit", "{ratings}", "--out", "{dir}/m.npz", "--plot", "{dir}/c.bmp"],
     USAGE, "--plot '{dir}/c.bmp': cannot draw a .bmp; give a file name ending in"),
    ("plot-no-extension", ["fit", "{ratings}", "--out", "{dir}/m.npz", "--plot", "{dir}/curve"],
     USAGE, "--plot '{dir}/curve': cannot draw a file without an extension"),
    ("plot-folder-missing", ["fit", "{ratings}", "--out", "{dir}/m.npz", "--plot",
                             "{dir}/nodir/c.png"], USAGE,
     "cannot write --plot '{dir}/nodir/c.png': folder '{dir}/nodir' does not exist; create it "
     "first"),
    ("plot-is-out", ["fit", "{ratings}", "--out", "{dir}/m.pdf", "--plot", "{dir}/m.pdf"], USAGE,
     "--plot '{dir}/m.pdf' is the same file as --out"),
    ("plot-not-an-image", ["fit", "{ratings}", "--out", "{dir}/m.npz", "--plot", "{dir}/n.png"],
     USAGE, "--plot '{dir}/n.png' exists and is not a png image; refusing to replace it"),
    # --- evaluate
    ("evaluate-not-a-model", ["evaluate", "{ratings}", "{ratings}"], USAGE,
     "ratings.csv is not an autofact model"),
    ("evaluate-bad-data", ["evaluate", "{model}", "{badnum_csv}"], USAGE,
     "line 2 of badnum.csv: rating 'x' is not a number"),
    ("evaluate-dups", ["evaluate", "{model}", "{dup_csv}"], USAGE, "pass --duplicates mean"),
    ("evaluate-latin1", ["evaluate", "{model}", "{latin1_csv}"], USAGE,
     "pass --encoding latin-1"),
    ("evaluate-loss", ["evaluate", "{model}", "{ratings}", "--loss", "nosuchmodule:f"], USAGE,
     "cannot import module 'nosuchmodule'"),
    # --- predict
    ("predict-unknown-user", ["predict", "{model}", "--user", "99999", "--item", "1"], USAGE,
     "user 99999 is not in the training data"),
    ("predict-unknown-item", ["predict", "{model}", "--user", "1", "--item", "abc"], USAGE,
     "item 'abc' is not in the training data"),
    ("predict-no-item", ["predict", "{model}", "--user", "1"], USAGE,
     "predict needs both --user and --item, or --pairs FILE"),
    ("predict-both", ["predict", "{model}", "--user", "1", "--pairs", "{pairs_short_csv}"], USAGE,
     "give either --pairs FILE or --user and --item, not both"),
    ("predict-short-pair", ["predict", "{model}", "--pairs", "{pairs_short_csv}"], USAGE,
     "line 2 of {pairs_short_csv}: expected 2 fields (user, item), got 1"),
    ("predict-header-no-item", ["predict", "{model}", "--pairs", "{pairs_noitem_csv}"], USAGE,
     "line 1 of {pairs_noitem_csv}: the header 'user,thing' names no item column; call it "
     "'item'"),
    ("predict-header-only", ["predict", "{model}", "--pairs", "{pairs_header_csv}"], USAGE,
     "{pairs_header_csv}: only a header line; expected lines of user, item"),
    ("predict-empty-pairs", ["predict", "{model}", "--pairs", "{empty_csv}"], USAGE,
     "{empty_csv}: the file is empty; expected lines of user, item"),
    ("predict-binary-pairs", ["predict", "{model}", "--pairs", "{binary_csv}"], USAGE,
     "{binary_csv}: this looks like a binary file, not a text file of user, item"),
    ("predict-out-without-pairs", ["predict", "{model}", "--user", "1", "--item", "1", "--out",
                                   "{dir}/p.csv"], USAGE,
     "--out writes the predictions of --pairs FILE; give --pairs"),
    ("predict-out-is-model", ["predict", "{model}", "--pairs", "{pairs_header_csv}", "--out",
                              "{model}"], USAGE, "--out '{model}' is the input MODEL"),
    ("predict-out-is-pairs", ["predict", "{model}", "--pairs", "{pairs_header_csv}", "--out",
                              "{pairs_header_csv}"], USAGE, "is the input --pairs"),
    ("predict-out-other-csv", ["predict", "{model}", "--pairs", "{pairs_header_csv}", "--out",
                               "{predictions_other_csv}"], USAGE,
     "--out '{predictions_other_csv}' exists and is not a predictions file (first line "
     "user,item,prediction); refusing to replace it"),
    ("predict-pickle", ["predict", "{notes_txt}", "--user", "1", "--item", "1"], USAGE,
     "notes.txt is not an autofact model"),
    # --- recommend
    ("recommend-unknown-user", ["recommend", "{model}", "--user", "99999"], USAGE,
     "user 99999 is not in the training data; pass --fallback"),
    ("recommend-n", ["recommend", "{model}", "--user", "1", "-n", "0"], USAGE,
     "argument -n: must be a positive int"),
    ("recommend-nobody", ["recommend", "{model}"], USAGE,
     "one of the arguments --user/-u --ratings --all is required"),
    ("recommend-rating-word", ["recommend", "{model}", "--ratings", "{ratings_word_csv}"], USAGE,
     "line 2 of {ratings_word_csv}: rating 'five' is not a number"),
    ("recommend-no-rating-column", ["recommend", "{model}", "--ratings",
                                    "{ratings_norating_csv}"], USAGE,
     "line 1 of {ratings_norating_csv}: the header 'item,stars' names no rating column"),
    ("recommend-item-twice", ["recommend", "{model}", "--ratings", "{ratings_twice_csv}"], USAGE,
     "line 3 of {ratings_twice_csv}: item 1 is rated again (first on line 2); give each item "
     "once"),
    ("recommend-titles-empty", ["recommend", "{model}", "--user", "1", "--items",
                                "{titles_empty_csv}"], USAGE,
     "{titles_empty_csv}: the items file is empty; expected lines of id, title"),
    ("recommend-titles-short", ["recommend", "{model}", "--user", "1", "--items",
                                "{titles_short_csv}"], USAGE,
     "line 2 of {titles_short_csv}: expected at least 2 fields (id, title), got 1"),
    # --- demo
    ("demo-folder-missing", ["demo", "--out", "{dir}/nodir"], USAGE,
     "--out: folder '{dir}/nodir' does not exist; create it first"),
    ("demo-out-is-file", ["demo", "--out", "{notes_txt}"], USAGE,
     "--out '{notes_txt}' is a file; give a folder"),
    ("demo-curve-not-png", ["demo", "--out", "{dir}/demo_bad"], USAGE,
     "--out '{dir}/demo_bad/autofact-demo-curve.png' exists and is not a png image"),
]


def _fill(text: str, files: dict[str, Path]) -> str:
    return text.format(**{k: str(v) for k, v in files.items()})


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


_MESSAGES: list[tuple[str, str]] = []  # (verb, message) for the hint test


@pytest.mark.parametrize(("argv", "status", "message"), [m[1:] for m in MATRIX],
                         ids=[m[0] for m in MATRIX])
def test_every_error_is_one_line_with_its_status(argv, status, message, files, capsys):
    # issue 8 (items 1, 6, 13, 15): each message is checked, no file is touched
    (files["dir"] / "n.png").write_text("my notes, not an image")
    before = _snapshot(files["dir"])
    code, out, err = call(capsys, *[_fill(a, files) for a in argv])
    assert code == status, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autofact: error: "), err
    assert _fill(message, files) in lines[0]
    assert _snapshot(files["dir"]) == before  # nothing written, nothing replaced
    _MESSAGES.append((argv[0], lines[0]))


def _options(verb: str) -> dict[str, argparse.Action]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {s: a for a in sub.choices[verb]._actions for s in a.option_strings}


def test_every_hint_names_an_option_the_cli_accepts(files, capsys):
    # issue 8, item 13: "pass duplicates='mean'" was a hint the command line could not follow
    if len(_MESSAGES) < len(MATRIX):  # run alone: build the messages
        _MESSAGES.clear()
        for _, argv, status, message in MATRIX:
            test_every_error_is_one_line_with_its_status(argv, status, message, files, capsys)
    hints = 0
    for verb, message in _MESSAGES:
        assert not re.search(r"\b[a-z_]+=", message), f"a Python keyword in: {message}"
        if verb not in ("fit", "evaluate", "predict", "recommend", "demo"):
            continue
        actions = _options(verb)
        for option, value in re.findall(r"(?:pass|or) (--[a-z][a-z-]*)(?: ([\w.:-]+))?", message):
            hints += 1
            assert option in actions, f"{option} (from {message!r}) is not an option of {verb}"
            action = actions[option]
            if value and not value.isupper() and action.nargs != 0:  # FILE: a placeholder
                if action.choices is not None:
                    assert value in action.choices, message
                elif action.type is not None:
                    action.type(value)  # raises when the value is refused
    assert hints >= 6  # duplicates (x3), sep, encoding (x2), fallback


@pytest.mark.parametrize(
    ("error", "status", "line"),
    [
        (RuntimeError("boom"), ERROR,
         "autofact: internal error: RuntimeError: boom (rerun with --traceback"),
        (PermissionError(13, "Permission denied", "/x/m.npz"), ERROR,
         "autofact: error: Permission denied: '/x/m.npz'"),
        (ImportError("plotting needs matplotlib: pip install 'autofact[plot]'"), ERROR,
         "autofact: error: plotting needs matplotlib: pip install 'autofact[plot]'"),
        (autofact.FitError("the objective became nan at epoch 3 with solver='adam', lr=1000.0; "
                           "the last finite parameters (epoch 2) are kept. Try a smaller "
                           "learning rate, e.g. lr=100"), ERROR,
         "autofact: error: the objective became nan at epoch 3 with --solver adam, --lr 1000.0; "
         "the last finite parameters (epoch 2) are kept. Try a smaller learning rate, e.g. "
         "--lr 100"),
        (ValueError("this model was trained with loss 'mymod:cauchy'; pass it to load: "
                    "autofact.load('m.npz', loss=mymod.cauchy) (a model file's functions are "
                    "never imported from the file)"), USAGE,
         "autofact: error: this model was trained with loss 'mymod:cauchy'; pass it to load: "
         "--loss mymod:cauchy (a model file's functions are never imported from the file)"),
        (MemoryError(), ERROR,
         "autofact: error: out of memory; try a smaller --rank or --batch-size"),
    ],
    ids=["internal", "os-error", "missing-extra", "fit-error", "load-hint", "memory"],
)
def test_runtime_errors_exit_1_and_usage_errors_2(error, status, line, files, capsys, monkeypatch):
    # issue 8: internal errors exited 2 as if they were usage errors
    from autofact.cli import evaluate as verb

    def fail(args):
        raise error

    monkeypatch.setattr(verb, "evaluate", fail)
    code, out, err = call(capsys, "evaluate", files["model"], files["ratings"])
    assert code == status
    assert err.strip().splitlines() == [line] if status == USAGE else err.strip().startswith(line)
    assert len(err.strip().splitlines()) == 1


def test_traceback_only_on_request(files, capsys):
    code, _, err = call(capsys, "fit", files["badnum_csv"], "--out", files["dir"] / "m.npz")
    assert code == USAGE and "Traceback" not in err
    code, _, err = call(capsys, "fit", files["badnum_csv"], "--out", files["dir"] / "m.npz",
                        "--traceback")
    assert code == USAGE and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1] == (
        "autofact: error: line 2 of badnum.csv: rating 'x' is not a number"
    )


def test_cli_words_translates_library_keywords():
    # issue 8, item 13: the CLI names its options, not the Python keywords
    assert cli.cli_words("pass duplicates='mean' or duplicates='last'") == (
        "pass --duplicates mean or --duplicates last")
    assert cli.cli_words("pass sep= if the separator is another") == (
        "pass --sep if the separator is another")
    assert cli.cli_words("pass header=False; or user=, item= and rating=") == (
        "pass --no-header; or --user-col, --item-col and --rating-col")
    assert cli.cli_words("e.g. lr=0.001.") == "e.g. --lr 0.001."
    assert cli.cli_words("pass encoding='latin-1'") == "pass --encoding latin-1"
    assert cli.cli_words("rank 5 > items; the_user=3 stays") == "rank 5 > items; the_user=3 stays"


@pytest.mark.parametrize("dup", ["mean", "last"])
def test_the_duplicates_hint_works(files, capsys, dup, tmp_path):
    # issue 8, item 13: following the hint fits the file
    out = tmp_path / "m.npz"
    code, _, err = call(capsys, "fit", files["dup_csv"], "--out", out, "--duplicates", dup,
                        "--epochs", "1", "--quiet")
    assert code == 0, err
    expected = {"mean": 3.5, "last": 4.0}[dup]
    assert autofact.load(out).global_mean_ == pytest.approx(expected)


def test_reading_options_reach_read(tmp_path, capsys):
    # issue 8, item 13: --sep, --encoding, --no-header and the column names
    data = tmp_path / "r.txt"
    data.write_bytes("stars|who|what\n5|Ren\xe9|a\n1|Ren\xe9|b\n3|bob|a\n".encode("latin-1"))
    out = tmp_path / "m.npz"
    code, _, err = call(capsys, "fit", data, "--out", out, "--sep", "pipe", "--encoding",
                        "latin-1", "--header", "--user-col", "who", "--item-col", "what",
                        "--rating-col", "stars", "--epochs", "1", "--quiet")
    assert code == 0, err
    model = autofact.load(out)
    assert set(model.user_ids_.tolist()) == {"Ren\xe9", "bob"}
    assert set(model.item_ids_.tolist()) == {"a", "b"}
    headerless = tmp_path / "h.txt"
    headerless.write_text("1\t1\t5\n1\t2\t3\n2\t1\t4\n")
    code, _, err = call(capsys, "fit", headerless, "--out", out, "--sep", "\\t", "--no-header",
                        "--epochs", "1", "--quiet")
    assert code == 0, err
    assert autofact.load(out).global_mean_ == pytest.approx(4.0)


def test_pairs_header_is_read_by_name(files, capsys, tmp_path):
    # issue 8, item 12: an item,user header was scored as data, with the columns swapped
    model = autofact.load(files["model"])
    users, items = model.user_ids_[:3].tolist(), model.item_ids_[:3].tolist()
    swapped = tmp_path / "swapped.csv"
    swapped.write_text("movieId,userId\n" + "".join(f"{i},{u}\n" for u, i in
                                                      zip(users, items, strict=True)))
    plain = tmp_path / "plain.txt"
    plain.write_text("".join(f"{u} {i}\n" for u, i in zip(users, items, strict=True)))
    expected = model.predict(users, items)
    for pairs in (swapped, plain):
        code, out, err = call(capsys, "predict", files["model"], "--pairs", pairs)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == "user,item,prediction" and len(lines) == 4
        got = [(int(a), int(b), float(p)) for a, b, p in (ln.split(",") for ln in lines[1:])]
        assert [(a, b) for a, b, _ in got] == list(zip(users, items, strict=True))
        np.testing.assert_array_equal([p for _, _, p in got], expected)


def test_an_item_rating_header_is_read_by_name(files, capsys, tmp_path):
    model = autofact.load(files["model"])
    items = model.item_ids_[:2].tolist()
    mine = tmp_path / "mine.csv"
    mine.write_text(f"rating,item\n5,{items[0]}\n1,{items[1]}\n")
    code, out, err = call(capsys, "recommend", files["model"], "--ratings", mine, "--json", "-n",
                          "3")
    assert code == 0, err
    expected = model.recommend(model.fold_in({items[0]: 5.0, items[1]: 1.0}), n=3)
    import json

    assert [r["item"] for r in json.loads(out)["items"]] == expected.items.tolist()


def test_out_replaces_a_model_and_writes_through_a_symlink(files, capsys, tmp_path):
    # issue 8, item 1: an earlier model is replaced; a link stays a link
    target = tmp_path / "models" / "current.npz"
    target.parent.mkdir()
    link = tmp_path / "model.npz"
    link.symlink_to(target)
    for epochs in ("1", "2"):
        code, _, err = call(capsys, "fit", files["ratings"], "--out", link, "--epochs", epochs,
                            "--quiet")
        assert code == 0, err
        assert link.is_symlink() and target.is_file()
        assert autofact.load(link).n_epochs_ == int(epochs)
    empty = tmp_path / "empty.npz"
    empty.touch()  # an empty file holds nothing to lose
    code, _, err = call(capsys, "fit", files["ratings"], "--out", empty, "--epochs", "1", "-q")
    assert code == 0, err


def test_plot_replaces_its_own_image_and_draws_pdf_and_svg(files, capsys, tmp_path):
    out = tmp_path / "m.npz"
    for name, magic in (("c.pdf", b"%PDF"), ("c.svg", b"<?xml"), ("c.png", b"\x89PNG")):
        for _ in range(2):  # the second run replaces the first image
            code, _, err = call(capsys, "fit", files["ratings"], "--out", out, "--epochs", "2",
                                "--quiet", "--plot", tmp_path / name)
            assert code == 0, err
            assert (tmp_path / name).read_bytes().startswith(magic)


def test_predict_out_replaces_its_own_csv(files, capsys, tmp_path):
    pairs = tmp_path / "pairs.csv"
    model = autofact.load(files["model"])
    pairs.write_text(f"{model.user_ids_[0]},{model.item_ids_[0]}\n")
    out = tmp_path / "pred.csv"
    for _ in range(2):
        code, _, err = call(capsys, "predict", files["model"], "--pairs", pairs, "--out", out)
        assert code == 0, err
        assert out.read_text().startswith("user,item,prediction\n")


def test_load_options_are_passed_to_load(files, capsys, monkeypatch):
    # --loss/--reg typed by the user reach autofact.load (a model file's functions are never
    # imported from the file)
    seen = {}
    real = autofact.load

    def spy(path, **kwargs):
        seen.update(kwargs)
        return real(path)

    monkeypatch.setattr(autofact, "load", spy)
    code, _, err = call(capsys, "predict", files["model"], "--user", "0", "--item", "0",
                        "--loss", "autofact.losses:squared", "--reg", "l2")
    assert code == 0, err
    assert seen == {"loss": autofact.losses.squared, "regularization": "l2"}
    seen.clear()
    code, _, err = call(capsys, "predict", files["model"], "--user", "0", "--item", "0")
    assert code == 0 and seen == {}


def test_symlink_and_relative_out_are_caught(files, capsys, monkeypatch):
    # issue 8, item 1: compared as resolved real paths
    monkeypatch.chdir(files["subdir"])
    before = files["ratings"].read_bytes()
    code, _, err = call(capsys, "fit", "../ratings.csv", "--out", os.path.join("..", "link.csv"))
    assert code == USAGE and "is the input DATA" in err
    assert files["ratings"].read_bytes() == before


def my_loss(pred, target):
    """A user's own loss, typed on the command line as 'tests.test_cli_errors:my_loss'."""
    return (pred - target) ** 2


def test_a_model_with_a_users_loss_asks_for_it_in_cli_words(files, capsys, tmp_path):
    # issue 8, item 4: loading never imports what a file names; fold-in needs the function,
    # which the user gives with --loss (the hint says so in command-line words)
    out = tmp_path / "mine.npz"
    path = "tests.test_cli_errors:my_loss"
    code, _, err = call(capsys, "fit", files["ratings"], "--out", out, "--loss", path,
                        "--solver", "adam", "--epochs", "2", "--quiet")
    assert code == 0, err
    mine = tmp_path / "mine.csv"
    item = autofact.load(out).item_ids_[0]
    mine.write_text(f"item,rating\n{item},5\n")
    code, stdout, err = call(capsys, "recommend", out, "--ratings", mine, "-n", "2")
    assert code == USAGE and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"--loss {path}" in lines[0], err
    assert "autofact.load(" not in lines[0]
    code, stdout, err = call(capsys, "recommend", out, "--ratings", mine, "-n", "2",
                             "--loss", path)
    assert code == 0, err
    assert len(stdout.strip().splitlines()) == 3 + 2  # heading, header, rule, 2 items


def test_every_reading_option_is_a_keyword_of_read(files, capsys, monkeypatch):
    # the options map onto autofact.read's keywords, passed only when given
    import inspect

    from autofact import reading
    from autofact.cli import options

    keywords = inspect.signature(autofact.read).parameters
    assert set(options.READ_KEYWORDS.values()) <= set(keywords)
    seen: list[dict] = []

    def spy(path, **kwargs):
        seen.append(kwargs)
        raise ValueError("stop here")

    # issue 10: fit starts DATA's reading before importing torch (read_in_background, which
    # takes read's keywords: both go through one _prepare)
    assert inspect.signature(reading._prepare).parameters.keys() == keywords.keys()
    monkeypatch.setattr(reading, "read", spy)
    monkeypatch.setattr(reading, "read_in_background", spy)
    call(capsys, "fit", files["ratings"], "--out", files["dir"] / "x.npz")
    call(capsys, "fit", files["ratings"], "--out", files["dir"] / "x.npz", "--sep", "tab",
         "--encoding", "latin-1", "--no-header", "--duplicates", "mean", "--user-col", "u",
         "--item-col", "i", "--rating-col", "r", "--weight-col", "w", "--time-col", "t")
    assert seen == [{}, {"sep": "\t", "encoding": "iso8859-1", "header": False,
                         "duplicates": "mean", "user": "u", "item": "i", "rating": "r",
                         "weight": "w", "timestamp": "t"}]


def test_a_failed_save_names_out_and_exits_1(files, capsys, monkeypatch, tmp_path):
    # a disk-full save is a failed run (1), named by --out, not by the temporary file
    from autofact import io as afio

    def full(target, arrays, streamed=None):
        raise OSError(28, "No space left on device", str(target.parent / ".m.npz.1.abcdefgh.tmp"))

    monkeypatch.setattr(afio, "_atomic_savez", full)
    out = tmp_path / "m.npz"
    code, stdout, err = call(capsys, "fit", files["ratings"], "--out", out, "--epochs", "1", "-q")
    assert code == ERROR and stdout == ""
    assert err.strip().splitlines() == [
        f"autofact: error: cannot write the model to --out (No space left on device): '{out}'"
    ]


def test_demo_runs_without_matplotlib(capsys, monkeypatch, tmp_path):
    # a bare install (no 'plot' extra) still gets the tour, and is told how to get the curve
    from autofact.cli import paths

    def missing():
        raise ImportError("plotting needs matplotlib: pip install 'autofact[plot]'")

    monkeypatch.setattr(paths, "plot_formats", missing)
    code, out, err = call(capsys, "demo", "--out", tmp_path, "--epochs", "1")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == (
        "(drawing the learning curve needs matplotlib: pip install 'autofact[plot]')")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (UnicodeDecodeError("utf-8", b"ab\xe9", 2, 3, "invalid continuation byte"),
         "{path}: not utf-8 text (byte 0xe9 at offset 2); pass --encoding latin-1 (or the "
         "file's encoding)"),
        (PermissionError(13, "Permission denied"), "cannot read '{path}': Permission denied"),
        (ValueError("no ratings in the file"), "{path}: no ratings in the file"),
    ],
    ids=["undecodable", "unreadable", "unnamed"],
)
def test_every_reading_error_names_the_file(error, line, files, capsys, monkeypatch):
    # issue 8: Latin-1 files failed with an error that named no file
    from autofact import reading

    def failing(path, **kwargs):
        raise error

    monkeypatch.setattr(reading, "read", failing)
    code, _, err = call(capsys, "evaluate", files["model"], files["ratings"])
    assert code == USAGE
    assert err.strip().splitlines() == ["autofact: error: " + line.format(path=files["ratings"])]


def test_an_unreadable_pairs_file_is_named(files, capsys, monkeypatch):
    from pathlib import Path as P

    real = P.read_bytes

    def denied(self):
        if self.name == "pairs_header.csv":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(P, "read_bytes", denied)
    code, _, err = call(capsys, "predict", files["model"], "--pairs", files["pairs_header_csv"])
    assert code == USAGE
    assert err.strip().splitlines() == [
        f"autofact: error: cannot read '{files['pairs_header_csv']}': Permission denied"]


def test_ctrl_c_after_the_save_says_the_model_was_saved(files, capsys, monkeypatch, tmp_path):
    from autofact import evaluation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "evaluate", interrupted)
    out = tmp_path / "m.npz"
    code, _, err = call(capsys, "fit", files["ratings"], "--out", out, "--test-fraction", "0.2",
                        "--epochs", "1", "-q")
    assert code == 130
    assert err.strip().splitlines() == [
        f"autofact: interrupted after the model was saved to {out}"]
    assert autofact.load(out).n_epochs_ == 1


def _numpy_value_error(args):
    return np.asarray(["not a number"], dtype=float)  # numpy's own ValueError: a defect of ours


def _python_type_error(args):
    return len(None)  # type: ignore[arg-type]


def _checked_type_error(args):
    raise TypeError("loss mymod:f must return a torch.Tensor with one value per entry, got float")


@pytest.mark.parametrize(
    ("verb", "status", "line"),
    [
        (_numpy_value_error, ERROR, "autofact: internal error: ValueError: could not convert "
                                    "string to float: 'not a number' (rerun with --traceback"),
        (_python_type_error, ERROR, "autofact: internal error: TypeError: object of type "
                                    "'NoneType' has no len() (rerun with --traceback"),
        (_checked_type_error, USAGE, "autofact: error: loss mymod:f must return a torch.Tensor"),
    ],
    ids=["numpy-value-error", "python-type-error", "checked-type-error"],
)
def test_only_checked_errors_are_usage_errors(verb, status, line, files, capsys, monkeypatch):
    # issue 8: internal errors exited 2 as if they were usage errors
    from autofact.cli import evaluate

    monkeypatch.setattr(evaluate, "evaluate", verb)
    code, out, err = call(capsys, "evaluate", files["model"], files["ratings"])
    assert code == status and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), err
