"""Issue 10, item 5 (cold start): ``autofact fit FILE`` in a new process. ``import autofact``
imports nothing heavy; a plain ratings file is parsed by pyarrow (no pandas) on a thread while
torch is imported, to the very Ratings (and errors) of the general reader; the training RMSE
needs no id lookup; the program ends without Python's teardown of torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import autofact
from autofact import reading
from autofact.cli import fit as fit_verb

from .conftest import dataset

pytest.importorskip("pyarrow")


def _general(path: Path, **kwargs: object) -> autofact.Ratings:
    """read() through the general (pandas) reader only: the fast path switched off."""
    job = reading._prepare(path, **kwargs)  # type: ignore[arg-type]
    job.quick = None
    return job()


def _outcome(read: object, path: Path, **kwargs: object) -> object:
    """The Ratings' arrays (with their dtypes), or the error's type and message."""
    try:
        r = read(path, **kwargs)  # type: ignore[operator]
    except (ValueError, TypeError) as exc:
        return type(exc).__name__, str(exc)
    arrays = {}
    for name in ("users", "items", "values", "weights", "timestamps", "user_ids", "item_ids"):
        a = getattr(r, name)
        # issue 10: writeable too (the general reader gave pandas's read-only columns)
        arrays[name] = None if a is None else (a.dtype.str, a.flags.writeable, a.tolist())
    return r.shape, arrays


# (name, file content, read's keywords); all plain: the fast path reads them
PLAIN = [
    ("tsv", "1\t10\t4.5\n2\t10\t3\n1\t11\t5\n", {}),
    ("u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n", {}),
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179"
     "\n2,10,4,835355493\n", {}),
    ("named columns", "a,b,c,d\n7,1,2,4.5\n8,1,3,2\n",
     {"user": "b", "item": "a", "rating": "d", "timestamp": "c"}),
    ("string ids", "u1,i1,5\nu2,i1,3\nu10,i2,1\n", {}),
    ("ids as written", "007\t1\t5\n7\t1\t4\n0007\t1\t3\n", {}),
    ("-0 is not 0", "-0,1,5\n0,1,4\n", {}),
    ("+7 is not 7", "+7,1,5\n7,1,4\n", {}),
    ("negative ids", "-3,1,5\n2,1,4\n-10,2,1\n", {}),
    ("past int64", "9223372036854775807,1,5\n9223372036854775808,1,4\n", {}),
    ("int64 bounds", "9223372036854775807,1,5\n-9223372036854775808,1,4\n", {}),
    ("unicode ids", "ü,é,3\nß,é,2\n", {}),
    ("crlf", "1,2,3\r\n2,2,4\r\n", {}),
    ("blank lines", "1,2,3\n\n2,2,4\n\n", {}),
    ("no last newline", "1;2;3\n2;3;4", {}),
    ("pipes", "1|2|3\n2|3|4\n", {}),
    ("decimals", "1,2,3.14159265358979323846\n2,2,1e-3\n3,2,2.5E2\n4,2,-7\n5,2,0\n", {}),
    ("duplicates", "1,2,3\n1,2,5\n2,2,4\n", {}),
    ("duplicates mean", "1,2,3\n1,2,5\n2,2,4\n", {"duplicates": "mean"}),
    ("duplicates last", "1,2,3\n1,2,5\n2,2,4\n", {"duplicates": "last"}),
    ("unknown column", "user,item,rating\n1,2,3\n", {"rating": "score"}),
    ("a later space in an id", "1,2,3\n2, 2,4\n", {}),  # ' 2' and '2': two items, strings
]

# not plain: the fast path declines (at once, or once it meets the line), the general reader
# reads or reports them
OTHER = [
    ("quotes", '"1","2","3"\n"2","2","4"\n', {}),
    ("spaces", "1, 2, 3\n2, 2, 4\n", {}),
    ("a later quote", '1,2,3\n"2",2,4\n', {}),
    ("empty rating", "1,2,3\n1,3,\n", {}),
    ("empty id", "1,2,3\n,3,4\n", {}),
    ("nan rating", "1,2,3\n1,3,nan\n", {}),
    ("inf rating", "1,2,inf\n", {}),
    ("text rating", "1,2,3\n1,3,x\n", {}),
    ("short row", "1,2,3\n1,2\n", {}),
    ("long row", "1,2,3\n1,2,3,4\n", {}),
    ("five fields", "1,2,3,4,5\n", {}),
    ("bom", "\ufeff1,2,3\n2,2,4\n", {}),
    ("lone cr", "1,2,3\r2,3,4\r", {}),
    ("-0 rating", "1,2,-0\n2,2,4\n", {}),
    ("weights", "u,i,r,w\n1,2,3,0.5\n2,2,4,1\n", {"weight": "w"}),
    ("latin-1", "1,2,3\n2,2,4\n", {"encoding": "latin-1"}),
    ("float time", "1\t2\t3\t1.5\n2\t2\t4\t2.5\n", {}),
    # issue 10: arrow's integer parser reads "0x10" as 16 (and "0x8000000000000000" wraps to a
    # negative time); the general reader refuses both
    ("hex time", "1\t2\t3\t100\n2\t2\t4\t0x10\n", {}),
    ("hex time past int64", "userId,movieId,rating,timestamp\n1,2,3,0X8000000000000000\n", {}),
    ("dates", "user,item,rating,timestamp\n1,2,3,2020-01-01\n", {}),
    ("whitespace", "1 2 3\n2 2 4\n", {}),
    ("double colon", "1::2::3\n2::2::4\n", {}),
    ("repeated header name", "user,item,rating,rating\n1,2,3,4\n", {}),
    ("header only", "user,item,rating\n", {}),
    ("nul", "1,2,3\n2,2\x004\n", {}),
    ("nul in an id", "1,2,3\n2\x00,2,4\n", {}),
    ("a column not read", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n",
     {"timestamp": False}),
    ("a column not named", "a,b,c,d,note\n7,1,2,4.5,Comedy|Drama\n8,1,3,2,x\n",
     {"user": "b", "item": "a", "rating": "d"}),
]

# either reader may take these (a space around a number, carriage returns): the same outcome
EITHER = [
    ("a later lone cr", "1,2,3\n2,3,4\r3,3,5\r\n", {}),
    ("latin-1 in an id", b"1,2,3\n\xe9,2,4\n", {}),
    ("latin-1 in a rating", b"1,2,3\n2,2,4\xe9\n", {}),
    ("a later space in a rating", "1,2,3\n2,2, 4\n", {}),
    ("a later space in a time", "1\t2\t3\t881250949\n2\t2\t4\t 881250949\n", {}),
    ("a later tab in a csv", "1,2,3\n2,2\t,4\n", {}),
]


def _file(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "ratings.txt"
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


@pytest.mark.parametrize(("name", "text", "kwargs"), PLAIN, ids=[c[0] for c in PLAIN])
def test_the_fast_path_reads_the_general_readers_ratings(tmp_path, name, text, kwargs):
    # issue 10: a plain file needs no pandas, and gives the same Ratings or the same error
    path = _file(tmp_path, text)
    try:
        job = reading._prepare(path, **kwargs)
    except ValueError as exc:  # a column the file lacks: said before any parsing, as before
        assert _outcome(_general, path, **kwargs) == ("ValueError", str(exc))
        return
    assert job.quick is not None
    try:
        assert job.quick() is not None  # the fast path did read it
    except ValueError:
        pass  # a duplicate pair, reported by Ratings (compared below)
    assert _outcome(autofact.read, path, **kwargs) == _outcome(_general, path, **kwargs)


@pytest.mark.parametrize(("name", "text", "kwargs"), OTHER, ids=[c[0] for c in OTHER])
def test_what_is_not_plain_goes_to_the_general_reader(tmp_path, name, text, kwargs):
    path = _file(tmp_path, text)
    try:
        job = reading._prepare(path, **kwargs)
    except ValueError:
        job = None
    assert job is None or job.quick is None or job.quick() is None
    assert _outcome(autofact.read, path, **kwargs) == _outcome(_general, path, **kwargs)


@pytest.mark.parametrize(("name", "text", "kwargs"), EITHER, ids=[c[0] for c in EITHER])
def test_either_reader_gives_the_same(tmp_path, name, text, kwargs):
    path = _file(tmp_path, text)
    assert _outcome(autofact.read, path, **kwargs) == _outcome(_general, path, **kwargs)


@pytest.mark.parametrize("parts", [("ml-100k", "u.data"), ("ml-100k", "u1.base"),
                                   ("ml-latest-small", "ratings.csv"),
                                   ("filmtrust", "ratings.txt")], ids="/".join)
def test_real_files_read_the_same_by_either_reader(parts):
    path = dataset(*parts)
    job = reading._prepare(path)
    if parts[0] != "filmtrust":  # space-separated: the general reader's
        assert job.quick is not None and job.quick() is not None
    assert _outcome(autofact.read, path) == _outcome(_general, path)


def test_read_in_background_gives_reads_ratings_and_errors(tmp_path):
    path = _file(tmp_path, "".join(f"{u}\t{i}\t{(u * i) % 5 + 1}\n"
                                   for u in range(1, 40) for i in range(1, 30)))
    wait = reading.read_in_background(path)
    assert _outcome(lambda p: wait(), path) == _outcome(_general, path)
    duplicated = _file(tmp_path, "1,2,3\n1,2,5\n")
    wait = reading.read_in_background(duplicated)  # parsed on the thread, raised by wait()
    with pytest.raises(ValueError, match=r"duplicate rating for \(user 1, item 2\)"):
        wait()
    with pytest.raises(ValueError, match="header=True if it is a header"):  # the layout: at once
        reading.read_in_background(_file(tmp_path, "1,2,x\n"))
    wait = reading.read_in_background(_file(tmp_path, "1,2\n"))  # not plain: read by wait()
    with pytest.raises(ValueError, match="expected 3 or 4 fields"):
        wait()


def test_a_fit_from_the_command_line_imports_no_pandas_or_scipy(tmp_path):
    # issue 10, item 5: `autofact fit FILE` on a plain file, in a fresh process; its argument
    # parsing imports no torch (so the file is parsed while torch is imported)
    data = tmp_path / "ratings.tsv"
    data.write_text("".join(f"{u}\t{i}\t{1 + (u * i) % 5}\n" for u in range(1, 30)
                            for i in range(1, 20)))
    code = (
        "import sys\n"
        "from autofact.cli import build_parser, main\n"
        f"build_parser().parse_args(['fit', {str(data)!r}, '--out', 'm.npz'])\n"
        "print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))\n"
        f"main(['fit', {str(data)!r}, '--out', {str(tmp_path / 'm.npz')!r}, '--solver', 'als',"
        " '--epochs', '2', '--quiet'])\n"
        "print(sorted(m for m in ('pandas', 'scipy', 'matplotlib', 'optuna') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "[]" and lines[-1] == "[]"
    assert lines[1].startswith("fitted rank 10 (als, 2 epochs")


def test_import_autofact_imports_none_of_torch_pandas_scipy_tqdm():
    # issue 10, item 5: the public names are imported on first use
    code = (
        "import sys, autofact\n"
        "print(sorted(m for m in ('torch', 'numpy', 'pandas', 'scipy', 'matplotlib', 'tqdm', "
        "'optuna', 'pyarrow') if m in sys.modules))\n"
        "from autofact import MatrixFactorization\n"
        "print('torch' in sys.modules, 'pandas' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["[]", "True False"]


def test_every_public_name_resolves_and_unknown_ones_raise():
    for name in autofact.__all__:
        assert getattr(autofact, name) is not None
    assert set(autofact.__all__) <= set(dir(autofact))
    assert autofact.io.save is not None  # a submodule, as when __init__ imported them all
    with pytest.raises(AttributeError, match="module 'autofact' has no attribute 'nothing'"):
        autofact.nothing  # noqa: B018


def test_the_solver_choices_are_the_solvers():
    # issue 10: written out in the CLI so that parsing imports no torch; they must not drift
    from autofact.solvers import SOLVERS

    assert fit_verb.SOLVER_CHOICES == ("auto", *SOLVERS, "cg")


def test_the_training_rmse_is_scores(tmp_path, monkeypatch):
    # issue 10: the CLI's training RMSE skips the id lookup when the model was fitted on these
    # very ratings; the same number as -model.score(train)
    rng = np.random.default_rng(0)  # 40 users with many ratings, 30 with one each
    u = np.r_[rng.integers(0, 40, 600), np.arange(40, 70)]
    i = rng.integers(0, 30, 630)
    train = autofact.Ratings.from_coo(u, i, rng.integers(1, 6, 630).astype(float),
                                      duplicates="mean")
    model = autofact.MatrixFactorization(rank=3, solver="als", epochs=3).fit(train)
    expected = -model.score(train)

    def no_lookup(*args: object, **kwargs: object) -> float:
        raise AssertionError("score() was called")

    monkeypatch.setattr(model, "score", no_lookup)
    assert fit_verb._training_rmse(model, train) == expected
    monkeypatch.undo()
    # fitted on a part of them (validation_fraction): score() itself, unknown ids and all
    carved = autofact.MatrixFactorization(rank=3, solver="als", epochs=3,
                                          validation_fraction=0.3, patience=None).fit(train)
    with pytest.warns(UserWarning, match="not in the training data"):
        expected = -carved.score(train)
    with pytest.warns(UserWarning, match="not in the training data"):
        assert fit_verb._training_rmse(carved, train) == expected


def test_the_training_rmse_in_blocks_on_two_threads_is_the_same_number():
    # issue 10: autofact fit computes the training RMSE's predictions block by block on a helper
    # thread and its own while the model is saved; the number is that of one call, to the bit
    from autofact import index as index_module

    assert fit_verb._RMSE_BLOCK % index_module._STEP == 0  # blocks of the index's own blocks
    rng = np.random.default_rng(1)
    n = 2 * fit_verb._RMSE_BLOCK + 777  # three blocks, the last one short
    users, items = rng.integers(0, 900, n), rng.integers(0, 700, n)
    train = autofact.Ratings.from_coo(users, items, rng.integers(1, 6, n).astype(float),
                                      shape=(900, 700), duplicates="mean")
    for rank in (3, 8):  # rows of 24 and 64 bytes
        model = autofact.MatrixFactorization(rank=rank, solver="als", epochs=1).fit(train)
        whole = model.index_.response(model.predict_indices(train.users, train.items))
        expected = float(np.sqrt(np.mean((whole - train.values) ** 2)))
        assert expected == -model.score(train)
        finish = fit_verb._start_training_rmse(model, train)
        assert finish() == expected
        assert fit_verb._training_rmse(model, train) == expected


def test_no_rmse_helper_thread_under_a_thread_cap_of_one(monkeypatch):
    # issue 10: the helper is a second thread; AUTOFACT_NUM_THREADS=1 asks for one
    import threading

    n = 2 * fit_verb._RMSE_BLOCK
    train = autofact.Ratings.from_coo(np.arange(n) % 50, np.arange(n) // 50, np.ones(n))
    model = autofact.MatrixFactorization(rank=2, solver="als", epochs=1).fit(train)
    expected = -model.score(train)
    started: list[str] = []
    real_start = threading.Thread.start

    def spy(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", spy)
    for cap, helpers in (("1", []), ("2", ["autofact-rmse"])):
        monkeypatch.setenv("AUTOFACT_NUM_THREADS", cap)
        started.clear()
        assert fit_verb._start_training_rmse(model, train)() == expected
        assert started == helpers


def test_an_error_on_the_rmse_helper_thread_is_raised_by_the_caller(monkeypatch):
    train = autofact.Ratings.from_coo(np.arange(3 * fit_verb._RMSE_BLOCK) % 50,
                                      np.arange(3 * fit_verb._RMSE_BLOCK) // 50,
                                      np.ones(3 * fit_verb._RMSE_BLOCK))
    model = autofact.MatrixFactorization(rank=2, solver="als", epochs=1).fit(train)
    calls = []

    def broken(users: object, items: object) -> object:
        calls.append(1)
        raise RuntimeError("no scores today")

    monkeypatch.setattr(model, "predict_indices", broken)
    finish = fit_verb._start_training_rmse(model, train)
    with pytest.raises(RuntimeError, match="no scores today"):
        finish()
    assert 1 <= len(calls) <= 2  # the first error stops both threads


def _program(tmp_path: Path, *args: str, prelude: str = "") -> subprocess.CompletedProcess:
    code = f"import sys\n{prelude}\nsys.argv = ['autofact', *sys.argv[1:]]\n" \
        "from autofact.cli import run\nrun()\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300, check=False, cwd=tmp_path)


def test_the_program_exits_with_mains_status_its_output_and_atexit_functions(tmp_path):
    # issue 10: run() ends the process after main() without Python's teardown; the output is
    # flushed, the atexit functions run, the exit status is main's
    data = tmp_path / "ratings.tsv"
    data.write_text("".join(f"{u}\t{i}\t{1 + (u * i) % 5}\n" for u in range(1, 20)
                            for i in range(1, 12)))
    goodbye = "import atexit; atexit.register(print, 'atexit ran')"
    ok = _program(tmp_path, "fit", str(data), "--out", "m.npz", "--solver", "als", "--epochs",
                  "2", "--quiet", prelude=goodbye)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[0].startswith("fitted rank 10 (als, 2 epochs")
    assert ok.stdout.splitlines()[-1] == "atexit ran"
    assert (tmp_path / "m.npz").exists()
    bad = _program(tmp_path, "fit", str(tmp_path / "missing.tsv"), "--out", "m.npz",
                   prelude=goodbye)
    assert bad.returncode == 2
    assert "file '" in bad.stderr and "does not exist" in bad.stderr
    assert bad.stdout == "atexit ran\n"


@pytest.mark.parametrize("closed", ["stdout", "stderr"])
def test_the_program_exits_cleanly_with_a_closed_stream(tmp_path, closed):
    # issue 10: started with stdout (or stderr) closed (`autofact fit ... >&-`), Python sets
    # sys.stdout to None; run()'s flush before os._exit raised AttributeError (status 1, a
    # traceback) after the model was saved. Python's own exit ignores a None stream.
    data = tmp_path / "ratings.tsv"
    data.write_text("".join(f"{u}\t{i}\t{1 + (u * i) % 5}\n" for u in range(1, 10)
                            for i in range(1, 8)))
    proc = _program(tmp_path, "fit", str(data), "--out", "m.npz", "--solver", "als", "--epochs",
                    "1", "--rank", "2", "--quiet", prelude=f"sys.{closed} = None")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "m.npz").exists()


def test_held_out_scoring_of_integer_ids_imports_no_pandas(tmp_path):
    # issue 10: the id lookup of integer ids is a binary search in numpy; pandas' import (1-2.5 s
    # of a cold process) was the first sweep's cost of a default fit with validation data
    data, test = tmp_path / "ratings.tsv", tmp_path / "test.tsv"
    data.write_text("".join(f"{u}\t{i}\t{1 + (u * i) % 5}\n" for u in range(1, 30)
                            for i in range(1, 20) if (u + i) % 3))
    test.write_text("".join(f"{u}\t{i}\t{1 + (u * i) % 5}\n" for u in range(1, 32)
                            for i in range(1, 20) if not (u + i) % 3))
    code = (
        "import sys\n"
        "from autofact.cli import main\n"
        f"main(['fit', {str(data)!r}, '--test', {str(test)!r}, '--out', "
        f"{str(tmp_path / 'm.npz')!r}, '--epochs', '3', '--quiet'])\n"
        "print('pandas' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "False", proc.stdout
    assert any(line.startswith("rmse") for line in lines), proc.stdout


def test_the_integer_id_lookup_is_pandas_get_indexer():
    # issue 10: the numpy lookup gives pandas' answer for sorted and unsorted id maps, absent,
    # negative and huge ids, and other integer widths (every user rated: -1 only for absent)
    import pandas as pd
    import scipy.sparse as sp

    from autofact.index import ModelIndex

    rng = np.random.default_rng(0)
    for known in (np.arange(0, 300, 3), rng.permutation(1000)[:300],
                  np.array([5, -2, 9, 10**12])):
        seen = sp.csr_matrix(np.ones((len(known), 1), dtype=bool))
        index = ModelIndex(known, np.array([0]), seen, rating_range=(1.0, 5.0), fallback=3.0)
        for q in (rng.integers(-10, 1200, 500), np.array([10**12, -2, 7]),
                  rng.integers(0, 10, 20).astype(np.int32), np.array([], dtype=np.int64)):
            got = index.user_index(q, strict=False)
            np.testing.assert_array_equal(got, pd.Index(known).get_indexer(q))


# issue 10: the program (run()) keeps Python's garbage collector off while a verb imports its
# modules (torch's ~170,000 objects were traversed 3-4 times: 0.1-0.5 s of a cold fit), then
# freezes what was imported and collects again before the work
_RECORDER = '''
import gc

AT_IMPORT = (gc.isenabled(), gc.get_freeze_count() > 0)


def squared(pred, target):
    with open("gc_state.txt", "w") as fh:
        fh.write(f"{AT_IMPORT} {(gc.isenabled(), gc.get_freeze_count() > 0)}")
    return (pred - target) ** 2
'''


def test_the_program_collects_garbage_again_before_it_trains(tmp_path):
    (tmp_path / "gc_recorder.py").write_text(_RECORDER)
    data = tmp_path / "ratings.tsv"
    data.write_text("".join(f"{u}\t{i}\t{1 + (u * i) % 5}\n" for u in range(1, 12)
                            for i in range(1, 9)))
    # --loss module:function is imported while the arguments are parsed (paused), and called
    # during the fit (collecting again, the imported objects frozen)
    proc = _program(tmp_path, "fit", str(data), "--out", "m.npz", "--loss", "gc_recorder:squared",
                    "--epochs", "1", "--rank", "2", "--quiet", prelude="sys.path.insert(0, '')")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "gc_state.txt").read_text() == "(False, False) (True, True)"
    # a verb that loads a model (here recommend, whose fold-in calls the loss) too
    (tmp_path / "gc_state.txt").unlink()
    (tmp_path / "new.csv").write_text("1,5\n2,3\n")
    proc = _program(tmp_path, "recommend", "m.npz", "--ratings", "new.csv", "--loss",
                    "gc_recorder:squared", "-n", "3", prelude="sys.path.insert(0, '')")
    assert proc.returncode == 0, proc.stderr
    assert "2 ratings folded in" in proc.stdout
    assert (tmp_path / "gc_state.txt").read_text() == "(False, False) (True, True)"


def test_main_called_from_python_leaves_the_collector_alone(tmp_path, monkeypatch):
    import gc

    from autofact.cli import main

    data = tmp_path / "ratings.tsv"
    data.write_text("".join(f"{u}\t{i}\t{1 + (u * i) % 5}\n" for u in range(1, 12)
                            for i in range(1, 9)))
    frozen = gc.get_freeze_count()
    assert main(["fit", str(data), "--out", str(tmp_path / "m.npz"), "--epochs", "1", "--rank",
                 "2", "--quiet"]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen


def test_the_pause_ends_before_a_verb_that_does_not_end_it_itself(tmp_path, capsys):
    # `autofact demo` (like tune) runs long: main() resumes collection before calling it
    import gc

    from autofact.cli import common, main

    frozen = gc.get_freeze_count()
    common.pause_collection()
    try:
        assert not gc.isenabled()
        assert main(["demo", "--out", str(tmp_path / "missing")]) == 2
        assert gc.isenabled()
        assert gc.get_freeze_count() > frozen  # what was imported: frozen
    finally:
        common.resume_collection()  # (a failure above leaves no pause to later tests)
        gc.unfreeze()
        gc.enable()
    assert "--out" in capsys.readouterr().err
    gc.disable()  # an already disabled collector is no pause of ours: left as it is
    try:
        common.pause_collection()
        common.imports_done()
        assert not gc.isenabled() and gc.get_freeze_count() == 0
    finally:
        gc.enable()


_EXIT_PROBE = '''
import gc, sys, threading, time
if sys.argv[1] == "thread":  # main() returns 2 (no verb) while a thread runs: SystemExit
    threading.Thread(target=time.sleep, args=(1,)).start()
    sys.argv = ["autofact"]
else:  # argparse's SystemExit out of main()
    sys.argv = ["autofact", "--version"]
from autofact.cli import run
try:
    run()
except SystemExit as exc:
    print("exit", exc.code, gc.isenabled(), gc.get_freeze_count())
'''


@pytest.mark.parametrize("case", ["thread", "version"])
def test_the_start_up_pause_never_outlives_run(case):
    # issue 10 (review): run() raised SystemExit (--version, --help; or main()'s status while
    # a thread still ran) with the collector still paused, to a caller that catches it; now
    # the pause ends, nothing frozen
    proc = subprocess.run([sys.executable, "-c", _EXIT_PROBE, case], capture_output=True,
                          text=True, timeout=300, check=False)
    code = 2 if case == "thread" else 0
    assert proc.stdout.splitlines()[-1] == f"exit {code} True 0", proc.stderr
