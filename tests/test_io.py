"""Save/load: one npz file, JSON metadata, no pickle; atomic write; strict load."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import autofact
from autofact import MatrixFactorization, Ratings
from autofact.io import FORMAT_VERSION
from autofact.losses import loss_spec


def my_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A module-level user loss: saved as its 'module:function' path."""
    return (target - pred).abs() ** 1.5


def _ratings(string_users: bool = True, seed: int = 0) -> Ratings:
    rng = np.random.default_rng(seed)
    m, n, k = 40, 25, 3
    P, Q = rng.normal(size=(m, k)), rng.normal(size=(n, k))
    users, items = np.nonzero(rng.random((m, n)) < 0.4)
    values = np.clip(np.rint(3 + (P[users] * Q[items]).sum(1)), 1, 5)
    frame = pd.DataFrame({
        "user": [f"u{u:02d}" for u in users] if string_users else users + 100,
        "item": items * 10,
        "rating": values,
    })
    return Ratings.from_frame(frame)


def _all_pairs(model: MatrixFactorization) -> tuple[np.ndarray, np.ndarray]:
    u = np.repeat(model.user_ids_, len(model.item_ids_))
    i = np.tile(model.item_ids_, len(model.user_ids_))
    return u, i


@pytest.fixture(scope="module")
def fitted() -> MatrixFactorization:
    return MatrixFactorization(rank=3, loss=autofact.losses.huber(2.0), epochs=4, seed=1).fit(
        _ratings()
    )


def _resave(src: Path, dst: Path, change) -> None:
    """Copy a saved model's arrays into ``dst`` after ``change(arrays, meta)``."""
    with np.load(src, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays["meta"].tobytes())
    change(arrays, meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(dst, **arrays)


# ------------------------------------------------------------------------------ round trip
def test_loaded_model_predicts_recommends_and_folds_in_identically(fitted, tmp_path):
    path = fitted.save(tmp_path / "model.npz")
    assert path == tmp_path / "model.npz"
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]  # one file, no temp left over
    loaded = autofact.load(path)

    u, i = _all_pairs(fitted)
    np.testing.assert_array_equal(loaded.predict(u, i), fitted.predict(u, i))
    for user in fitted.user_ids_[:5]:
        a, b = fitted.recommend(user, n=7), loaded.recommend(user, n=7)
        np.testing.assert_array_equal(a.items, b.items)
        np.testing.assert_array_equal(a.scores, b.scores)
    new = {fitted.item_ids_[0]: 5.0, fitted.item_ids_[3]: 1.0, fitted.item_ids_[7]: 4.0}
    fa, fb = fitted.fold_in(new), loaded.fold_in(new)
    np.testing.assert_array_equal(fa.factors, fb.factors)
    np.testing.assert_array_equal(
        fitted.recommend(fa, n=5).items, loaded.recommend(fb, n=5).items
    )
    assert (fitted.index_.seen != loaded.index_.seen).nnz == 0
    assert loaded.history_ == fitted.history_
    assert loaded.n_epochs_ == fitted.n_epochs_ and loaded.solver_ == fitted.solver_
    assert loaded.rating_range_ == fitted.rating_range_
    assert loaded.global_mean_ == fitted.global_mean_
    assert loss_spec(loaded.loss) == {"name": "huber", "delta": 2.0}
    again = autofact.load(loaded.save(tmp_path / "again.npz"))  # a loaded model saves too
    np.testing.assert_array_equal(again.predict(u, i), fitted.predict(u, i))
    assert (again.index_.seen != fitted.index_.seen).nnz == 0


def test_unknown_ids_fall_back_identically(fitted, tmp_path):
    loaded = autofact.load(fitted.save(tmp_path / "m.npz"))
    u, i = ["u00", "nobody"], [0, 99999]
    with pytest.warns(UserWarning, match="not in the training data"):
        expected = fitted.predict(u, i)
    with pytest.warns(UserWarning, match="not in the training data"):
        np.testing.assert_array_equal(loaded.predict(u, i), expected)


@pytest.mark.parametrize(
    "params",
    [
        {"loss": "squared", "solver": "als"},
        {"loss": "absolute", "solver": "adam", "lr": 0.05, "batch_size": 64},
        {"loss": "autofact.losses:absolute", "regularization": "l1", "bias": False},
        {"loss": my_loss, "dtype": "float64", "nonnegative": True},
        {"loss": "logistic", "regularization": "none", "solver": "lbfgs", "binary": True},
    ],
    ids=["squared-als", "absolute-adam", "path-l1-nobias", "module-function-f64", "logistic"],
)
def test_round_trip_over_losses_and_solvers(params, tmp_path):
    params = dict(params)
    ratings = _ratings(seed=2)
    if params.pop("binary", False):  # logistic takes 0/1 targets only (issue 8)
        ratings = Ratings(ratings.users, ratings.items, (ratings.values >= 4).astype(float),
                          shape=ratings.shape, user_ids=ratings.user_ids,
                          item_ids=ratings.item_ids)
    model = MatrixFactorization(rank=2, epochs=2, seed=3, **params).fit(ratings)
    loaded = autofact.load(model.save(tmp_path / "m.npz"))
    u, i = _all_pairs(model)
    np.testing.assert_array_equal(loaded.predict(u, i), model.predict(u, i))
    assert loaded.user_factors_.dtype == model.user_factors_.dtype
    saved, back = model.get_params(), loaded.get_params()
    assert loss_spec(back.pop("loss")) == loss_spec(saved.pop("loss"))
    assert back == saved


def test_ids_keep_their_types(tmp_path):
    for string_users in (True, False):
        model = MatrixFactorization(rank=2, epochs=1).fit(_ratings(string_users=string_users))
        path = model.save(tmp_path / "m.npz")
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes())
        assert meta["format"] == "autofact.MatrixFactorization"
        assert meta["format_version"] == FORMAT_VERSION
        assert meta["autofact_version"] == autofact.__version__
        assert all(isinstance(x, int) for x in meta["item_ids"])
        kind = str if string_users else int
        assert all(isinstance(x, kind) for x in meta["user_ids"])
        loaded = autofact.load(path)
        assert loaded.user_ids_.dtype == model.user_ids_.dtype
        assert loaded.user_ids_.tolist() == model.user_ids_.tolist()
        assert loaded.item_ids_.dtype == model.item_ids_.dtype


def test_save_uses_the_name_as_given_and_overwrites(fitted, tmp_path):
    target = tmp_path / "model.autofact"
    fitted.save(target)
    fitted.save(str(target))  # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["model.autofact"]
    assert zipfile.is_zipfile(target)


# ------------------------------------------------------------------------------ save errors
def test_lambda_loss_is_refused_at_save_time(tmp_path):
    model = MatrixFactorization(rank=2, epochs=1, loss=lambda p, t: (p - t) ** 2).fit(_ratings())
    with pytest.raises(ValueError, match="lambda or closure.*module level"):
        model.save(tmp_path / "m.npz")
    assert not list(tmp_path.iterdir())


def test_closure_regularizer_is_refused_at_save_time(tmp_path):
    strength = 0.1

    def reg(x: torch.Tensor) -> torch.Tensor:
        return strength * (x * x).sum()

    model = MatrixFactorization(rank=2, epochs=1, regularization=reg).fit(_ratings())
    with pytest.raises(ValueError, match="regularization.*module level"):
        model.save(tmp_path / "m.npz")


def test_unfitted_model_cannot_be_saved(tmp_path):
    with pytest.raises(RuntimeError, match="not fitted"):
        MatrixFactorization().save(tmp_path / "m.npz")


def test_save_into_a_missing_folder_names_it(fitted, tmp_path):
    with pytest.raises(ValueError, match="folder .*nope.* does not exist"):
        fitted.save(tmp_path / "nope" / "m.npz")


@pytest.mark.parametrize("where", ["write_array", "fsync"])
def test_failed_save_leaves_the_old_file_intact(fitted, tmp_path, monkeypatch, where):
    path = fitted.save(tmp_path / "m.npz")
    before = path.read_bytes()
    calls = {"n": 0}
    if where == "write_array":
        from autofact import io

        real = io._write_bytes

        def flaky(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:  # the third array: the temp file is half written
                raise OSError("disk full")
            return real(*args, **kwargs)

        monkeypatch.setattr(io, "_write_bytes", flaky)
    else:
        def failing_fsync(fd: int) -> None:
            raise OSError("I/O error")

        monkeypatch.setattr(os, "fsync", failing_fsync)
    other = MatrixFactorization(rank=3, epochs=1, seed=9).fit(_ratings(seed=5))
    with pytest.raises(OSError):
        other.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]  # the temp file is gone
    u, i = _all_pairs(fitted)
    np.testing.assert_array_equal(autofact.load(path).predict(u, i), fitted.predict(u, i))


# ------------------------------------------------------------------------------ strict load
def test_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError, match=r"model\.pkl.*pickle.*nothing in it was executed"):
        autofact.load(path)
    assert not marker.exists()


def test_pickle_inside_a_zip_is_refused(tmp_path):
    path = tmp_path / "torch_style.pt"
    with zipfile.ZipFile(path, "w") as zf:  # the layout torch.save writes
        zf.writestr("archive/data.pkl", pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="pickle.*nothing in it was executed"):
        autofact.load(path)
    obj = tmp_path / "objects.npz"
    np.savez(obj, meta=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle.*nothing in it was executed"):
        autofact.load(obj)


def test_not_a_model_or_truncated(fitted, tmp_path):
    text = tmp_path / "ratings.csv"
    text.write_text("1,2,5\n")
    with pytest.raises(ValueError, match=r"ratings\.csv is not an autofact model.*truncated"):
        autofact.load(text)
    full = fitted.save(tmp_path / "m.npz").read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(ValueError, match=r"cut\.npz is not an autofact model or is truncated"):
        autofact.load(cut)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="not an autofact model"):
        autofact.load(empty)
    with pytest.raises(ValueError, match="does not exist"):
        autofact.load(tmp_path / "missing.npz")
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(ValueError, match="no 'meta' array"):
        autofact.load(other)


def test_other_format_version_names_both(fitted, tmp_path):
    src = fitted.save(tmp_path / "m.npz")

    def bump(arrays, meta):
        meta["format_version"] = 99

    _resave(src, tmp_path / "v99.npz", bump)
    with pytest.raises(ValueError, match=f"version 99 .* reads format version {FORMAT_VERSION}"):
        autofact.load(tmp_path / "v99.npz")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a, m: a.pop("item_bias"), r"missing array\(s\) \['item_bias'\]"),
        (lambda a, m: a.update(item_factors=a["item_factors"][:-1]), "item_factors.*shape"),
        (lambda a, m: a.update(user_bias=a["user_bias"][:, None]), "user_bias.*shape"),
        (lambda a, m: a.update(seen_indices=a["seen_indices"][:-2]), "seen_indices.*shape"),
        (lambda a, m: a.update(user_factors=a["user_factors"].astype(np.int64)), "dtype"),
        (lambda a, m: m["params"].update(rank=7), "rank is 7"),
        (lambda a, m: m.pop("item_ids"), "lacks 'item_ids'"),
        (lambda a, m: m["params"].update(colour="red"), "colour"),
    ],
    ids=["missing", "rows", "ndim", "seen", "dtype", "rank", "meta-key", "unknown-param"],
)
def test_damaged_files_are_refused(fitted, tmp_path, change, match):
    src = fitted.save(tmp_path / "m.npz")
    _resave(src, tmp_path / "bad.npz", change)
    with pytest.raises(ValueError, match=match):
        autofact.load(tmp_path / "bad.npz")


# ------------------------------------------------------------------------------ issue 8
def _set(arrays, array, where, value):
    arr = arrays[array].copy()
    arr[where] = value
    arrays[array] = arr


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a, m: _set(a, "user_factors", (3, 1), np.nan),
         r"array 'user_factors' holds non-finite values \(first nan at index \(3, 1\)\)"),
        (lambda a, m: _set(a, "item_factors", (0, 0), np.inf), "array 'item_factors' holds non-f"),
        (lambda a, m: _set(a, "user_bias", 2, -np.inf), "array 'user_bias' holds non-finite"),
        (lambda a, m: _set(a, "item_bias", 5, np.nan), "array 'item_bias' holds non-finite"),
        (lambda a, m: m.update(global_mean=float("nan")), "'global_mean' is nan, expected a f"),
        (lambda a, m: m.update(fallback_mean=float("inf")), "'fallback_mean' is inf"),
        (lambda a, m: m.update(rating_range=[1.0, float("nan")]), "'rating_range' is"),
        (lambda a, m: m["user_ids"].__setitem__(1, m["user_ids"][0]),
         r"user id 'u00' appears more than once in its user ids \(at positions 0 and 1\)"),
        (lambda a, m: m["item_ids"].__setitem__(4, m["item_ids"][2]),
         "item id 20 appears more than once"),
    ],
    ids=["nan-P", "inf-Q", "inf-bu", "nan-bi", "nan-mean", "inf-fallback", "nan-range",
         "dup-user", "dup-item"],
)
def test_non_finite_values_and_duplicate_ids_are_refused(fitted, tmp_path, change, match):
    """Edited files with NaN/inf or repeated ids used to load unchecked (issue 8)."""
    src = fitted.save(tmp_path / "m.npz")
    _resave(src, tmp_path / "edited.npz", change)
    with pytest.raises(ValueError, match="edited.npz is damaged: .*" + match):
        autofact.load(tmp_path / "edited.npz")


def _named(src: Path, dst: Path, loss: str | None, reg: str | None = None, link=None) -> Path:
    """A copy of a saved model whose file names ``loss``/``reg`` as 'module:function'."""
    def change(arrays, meta):
        if loss is not None:
            meta["loss"] = {"path": loss} if link is None else {"path": loss, "link": link}
        if reg is not None:
            meta["regularization"] = reg

    _resave(src, dst, change)
    return dst


def _use_everything(model: MatrixFactorization, what: str, path: str, folder: Path) -> None:
    """Predict, recommend and similar items work; fold-in and a refit ask for the function;
    the model saves again under the same name."""
    u, i = _all_pairs(model)
    assert np.isfinite(model.predict(u[:20], i[:20])).all()
    user = model.user_ids_[0]
    assert len(model.recommend(user, n=3)) == 3
    assert len(model.recommend_batch(list(model.user_ids_[:3]), n=3)) == 3
    assert len(model.similar_items(model.item_ids_[0], n=3)) == 3
    assert np.isfinite(model.score_items(user)).all()
    module, function = path.split(":")
    asks = (f"this model was trained with {what} '{path}'; pass it to load: "
            rf"autofact.load\(.*, {what}={module}.{function}\)")
    with pytest.raises(ValueError, match=asks):
        model.fold_in({model.item_ids_[0]: 4.0, model.item_ids_[1]: 2.0})
    with pytest.raises(ValueError, match=asks):
        model.fit(_ratings(seed=5))
    again = autofact.load(model.save(folder / "again.npz"))
    assert repr(getattr(again, what)) == repr(getattr(model, what))


@pytest.mark.parametrize("what", ["loss", "regularization"])
def test_a_file_naming_os_abort_is_never_called(fitted, tmp_path, what):
    """A model file naming os:abort killed the process on load/fold-in (issue 8)."""
    src = fitted.save(tmp_path / "m.npz")
    path = _named(src, tmp_path / "abort.npz", *(("os:abort", None) if what == "loss"
                                                 else (None, "os:abort")))
    model = autofact.load(path)
    assert repr(getattr(model, what)) == f"<{what} 'os:abort', not imported>"
    _use_everything(model, what, "os:abort", tmp_path)  # the process is still here


def test_a_file_naming_mkdtemp_creates_no_folder(fitted, tmp_path, monkeypatch):
    """A model file naming tempfile:mkdtemp created folders (issue 8)."""
    import tempfile

    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    assert tempfile.gettempdir() == str(private)
    src = fitted.save(tmp_path / "m.npz")
    path = _named(src, tmp_path / "mk.npz", "tempfile:mkdtemp", "tempfile:mkdtemp")
    model = autofact.load(path)
    _use_everything(model, "loss", "tempfile:mkdtemp", tmp_path)
    assert os.listdir(private) == []


def test_a_module_beside_the_file_is_never_imported(fitted, tmp_path, monkeypatch):
    """A module next to the model file ran when the model was loaded and used (issue 8)."""
    import sys

    marker = tmp_path / "MARKER"
    (tmp_path / "beside_model_x8.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "def loss(pred, target):\n    return (target - pred) ** 2\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # importable: the test could fail
    monkeypatch.chdir(tmp_path)
    src = fitted.save(tmp_path / "m.npz")
    path = _named(src, tmp_path / "beside.npz", "beside_model_x8:loss", "beside_model_x8:loss")
    model = autofact.load(path)
    _use_everything(model, "loss", "beside_model_x8:loss", tmp_path)
    assert not marker.exists()
    assert "beside_model_x8" not in sys.modules


def test_a_users_loss_is_passed_to_load_and_checked(tmp_path):
    """The function comes from the user, never from the file; it must be the saved one."""
    ratings = _ratings(seed=2)
    model = MatrixFactorization(rank=2, epochs=2, seed=0, loss=my_loss,
                                regularization="l1", beta=0.5).fit(ratings)
    path = model.save(tmp_path / "m.npz")
    plain = autofact.load(path)
    u, i = _all_pairs(model)
    np.testing.assert_array_equal(plain.predict(u, i), model.predict(u, i))
    with pytest.raises(ValueError, match="trained with loss 'tests.test_io:my_loss'"):
        plain.fold_in({ratings.item_ids[0]: 3.0})
    new = {ratings.item_ids[0]: 5.0, ratings.item_ids[3]: 1.0}
    for given in (my_loss, "tests.test_io:my_loss"):  # the function, or a path the user typed
        loaded = autofact.load(path, loss=given)
        np.testing.assert_array_equal(loaded.fold_in(new).factors, model.fold_in(new).factors)
    with pytest.raises(ValueError, match=(
        r"loss=autofact.losses.squared was passed to load, but .*m.npz was trained with loss "
        r"'tests.test_io:my_loss'")):
        autofact.load(path, loss=autofact.losses.squared)
    with pytest.raises(ValueError, match="regularization='l2' was passed to load, but .* "
                                         "was trained with regularization 'l1'"):
        autofact.load(path, regularization="l2")
    assert autofact.load(path, loss=my_loss, regularization="l1").beta == 0.5


def test_builtin_losses_load_by_name_with_their_parameters(tmp_path):
    ratings = _ratings(seed=2)
    model = MatrixFactorization(rank=2, epochs=2, loss=autofact.losses.huber(0.5),
                                regularization="l1", beta=0.3).fit(ratings)
    loaded = autofact.load(model.save(tmp_path / "m.npz"))
    assert loaded.loss.spec == {"name": "huber", "delta": 0.5}
    assert (loaded.regularization, loaded.beta) == ("l1", 0.3)
    new = {ratings.item_ids[0]: 5.0, ratings.item_ids[3]: 1.0}
    np.testing.assert_array_equal(loaded.fold_in(new).factors, model.fold_in(new).factors)


def sigmoid_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A user's loss on a logit, declaring its inverse link."""
    return torch.nn.functional.binary_cross_entropy_with_logits(pred, target, reduction="none")


sigmoid_loss.inverse_link = torch.sigmoid  # type: ignore[attr-defined]


def cubed(x: torch.Tensor) -> torch.Tensor:
    return x**3


def cube_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (target - pred**3) ** 2


cube_loss.inverse_link = cubed  # type: ignore[attr-defined]


def test_a_users_inverse_link_survives_save_and_load(tmp_path):
    """A known inverse link is saved by name; another one needs the function (issue 8)."""
    ratings = _ratings(seed=2)
    binary = Ratings(ratings.users, ratings.items, (ratings.values >= 4).astype(float),
                     shape=ratings.shape, user_ids=ratings.user_ids, item_ids=ratings.item_ids)
    model = MatrixFactorization(rank=2, epochs=2, solver="adam", loss=sigmoid_loss).fit(binary)
    loaded = autofact.load(model.save(tmp_path / "sig.npz"))
    u, i = _all_pairs(model)
    p = loaded.predict(u, i)
    np.testing.assert_array_equal(p, model.predict(u, i))
    assert ((p > 0) & (p < 1)).all()
    cube = MatrixFactorization(rank=2, epochs=2, solver="adam", loss=cube_loss).fit(ratings)
    blind = autofact.load(cube.save(tmp_path / "cube.npz"))
    np.testing.assert_array_equal(blind.predict(u, i, kind="link"), cube.predict(u, i, kind="link"))
    with pytest.raises(ValueError, match="trained with loss 'tests.test_io:cube_loss'; pass it"):
        blind.predict(u, i)
    told = autofact.load(tmp_path / "cube.npz", loss=cube_loss)
    np.testing.assert_array_equal(told.predict(u, i), cube.predict(u, i))


def test_io_reads_the_format_without_the_model(tmp_path, fitted):
    saved = autofact.io.read(fitted.save(tmp_path / "m.npz"))
    assert saved.meta["loss"] == {"name": "huber", "delta": 2.0}
    assert saved.arrays["user_factors"].shape == fitted.user_factors_.shape
    assert (saved.seen != fitted.index_.seen).nnz == 0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a, m: m.update(loss={"path": "os.system('x')"}), "loss path .* is not of the form"),
        (lambda a, m: m.update(loss={"name": "cauchy"}), "names loss .* not one of the built-in"),
        (lambda a, m: m.update(regularization="l3"), "names regularization 'l3'"),
        (lambda a, m: m.update(loss={"path": "a:b", "link": "weird"}), "loss link 'weird'"),
        (lambda a, m: m.update(loss={"name": "huber", "delta": "os:abort"}),
         "names loss .* not one of the built-in"),
        (lambda a, m: m.update(params=[1, 2]), "hyper-parameters are not a JSON object"),
        (lambda a, m: m.update(item_ids=["x"] * len(m["item_ids"])),
         "item ids do not fit their dtype"),
    ],
    ids=["code", "unknown-name", "unknown-reg", "unknown-link", "delta", "params", "id-dtype"],
)
def test_loss_names_are_checked_not_imported(fitted, tmp_path, change, match):
    src = fitted.save(tmp_path / "m.npz")
    _resave(src, tmp_path / "bad.npz", change)
    with pytest.raises(ValueError, match=match):
        autofact.load(tmp_path / "bad.npz")


def test_savez_plain_refuses_object_arrays_and_stores_only_the_given_names(tmp_path):
    # np.savez's allow_pickle=False exists from numpy 2.1 only; on older numpy it would be stored
    # as one more array named "allow_pickle" (review of issue 11's checkpoints)
    from autofact.io import savez_plain

    with open(tmp_path / "a.npz", "wb") as fh:
        savez_plain(fh, {"x": np.arange(3.0)})
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:
        assert z.files == ["x"]
    with open(tmp_path / "b.npz", "wb") as fh, \
            pytest.raises(TypeError, match="array 'meta' holds Python objects"):
        savez_plain(fh, {"meta": np.array([{"a": 1}], dtype=object)})
