"""Trust: gaps a new user met in the library (outside the command line), each reproduced as
the user met it, on generated data. Every test here failed before its fix."""

from __future__ import annotations

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
