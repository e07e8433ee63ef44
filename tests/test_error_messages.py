"""Issue 8, item 15: every error message has a ``pytest.raises(..., match=...)`` (or a warning's
``pytest.warns``) test. These are the messages a mechanical scan of ``src/autofact`` found with
no test elsewhere; each is provoked through the public API, on tiny synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import autofact
from autofact import MatrixFactorization, Ratings
from autofact import checkpoint as ck


def tiny(n_users: int = 6, n_items: int = 5, seed: int = 0) -> Ratings:
    """A small, fully observed rating matrix."""
    rng = np.random.default_rng(seed)
    return Ratings.from_dense(rng.uniform(1.0, 5.0, (n_users, n_items)))


def rewrite_npz(path: Path, change) -> None:
    """Rewrite the npz at ``path`` with ``change(arrays)`` applied to its arrays."""
    arrays = dict(np.load(path, allow_pickle=False))
    change(arrays)
    np.savez(path, **arrays)


def json_bytes(obj: object) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode("utf-8"), dtype=np.uint8)


# --- checkpoint.py ---------------------------------------------------------------------------

def adam(epochs: int = 2) -> MatrixFactorization:
    return MatrixFactorization(rank=2, solver="adam", lr=0.01, epochs=epochs, seed=0)


@pytest.mark.parametrize("meta", [np.frombuffer(b"{not json", np.uint8), None],
                         ids=["bad-json", "no-meta"])
def test_checkpoint_with_unreadable_metadata_is_refused(tmp_path, meta):
    adam().fit(tiny(), checkpoint=tmp_path)
    path = tmp_path / ck.FILE_NAME

    def change(arrays):
        if meta is None:
            del arrays["meta"]
        else:
            arrays["meta"] = meta

    rewrite_npz(path, change)
    with pytest.raises(ValueError, match=r"checkpoint\.npz is damaged: its metadata is not valid "
                                         r"JSON"):
        adam().fit(tiny(), checkpoint=tmp_path)


def test_checkpoint_missing_a_field_is_damaged(tmp_path):
    adam().fit(tiny(), checkpoint=tmp_path)
    path = tmp_path / ck.FILE_NAME

    def change(arrays):
        meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
        del meta["settings"]
        arrays["meta"] = json_bytes(meta)

    rewrite_npz(path, change)
    with pytest.raises(ValueError, match=r"is damaged: 'settings'; delete it to start over"):
        adam().fit(tiny(), checkpoint=tmp_path)


# --- distributed.py / sharding.py (no process group is started here) --------------------------

def test_distributed_init_without_torch_distributed(monkeypatch):
    from autofact import distributed

    monkeypatch.setattr(distributed.dist, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"this PyTorch build has no torch\.distributed"):
        distributed.init()


def test_distributed_init_outside_torchrun_names_the_missing_variables(monkeypatch):
    from autofact import distributed

    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match=r"needs the environment torchrun sets up \(missing: "
                                           r"WORLD_SIZE, MASTER_ADDR, MASTER_PORT\); start the "
                                           r"script with 'torchrun"):
        distributed.init()


def test_distributed_fit_without_a_process_group():
    from autofact import distributed

    with pytest.raises(RuntimeError, match=r"no torch\.distributed process group: call "
                                           r"autofact\.distributed\.init\(\) first"):
        distributed.fit(MatrixFactorization(solver="adam", lr=0.01), tiny())


def test_distributed_fit_refuses_mini_batches():
    from autofact import distributed

    model = MatrixFactorization(solver="adam", lr=0.01, batch_size=4)
    with pytest.raises(ValueError, match=r"distributed training is full batch: set "
                                         r"batch_size=None, got 4"):
        distributed.fit(model, tiny())


def test_torch_shard_plan_without_a_process_group():
    from autofact.sharding import TorchShardPlan

    with pytest.raises(RuntimeError, match=r"no torch\.distributed process group: call "
                                           r"autofact\.distributed\.init\(\) first"):
        TorchShardPlan()


# --- ranking.py ------------------------------------------------------------------------------

# ranking.py's "ratings is empty: implicit feedback needs at least one interaction" cannot be
# reached: Ratings (and Ratings.subset) refuse an empty selection first (see the report).


def sparse(n_users: int = 6, n_items: int = 5) -> Ratings:
    """Each user rated two items: every user has items left to sample as negatives."""
    users = np.repeat(np.arange(n_users), 2)
    items = (users + np.tile([0, 1], n_users)) % n_items
    return Ratings(users, items, np.ones(len(users)), shape=(n_users, n_items))


def test_ranking_bpr_that_diverges_raises_fit_error():
    model = MatrixFactorization(task="ranking", loss="bpr", rank=2, lr=1e30, epochs=3, seed=0,
                                init_std=1e10)
    with pytest.raises(autofact.FitError, match=r"the pairwise loss became non-finite in epoch "
                                                 r"\d+; lower lr \(now 1e\+30\)"):
        model.fit(sparse())


# --- model.py --------------------------------------------------------------------------------

def test_validation_and_validation_fraction_together():
    model = MatrixFactorization(rank=2, solver="als", epochs=1, validation_fraction=0.2)
    with pytest.raises(ValueError, match=r"validation= and validation_fraction=0\.2 both give "
                                         r"validation data; pass one"):
        model.fit(tiny(), validation=tiny())


def test_load_refuses_unknown_hyper_parameters(tmp_path):
    path = tmp_path / "model.npz"
    MatrixFactorization(rank=2, solver="als", epochs=1, seed=0).fit(tiny()).save(path)

    def change(arrays):
        meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
        meta["params"]["warp_speed"] = 9
        arrays["meta"] = json_bytes(meta)

    rewrite_npz(path, change)
    with pytest.raises(ValueError, match=r"model\.npz has hyper-parameter\(s\) \['warp_speed'\] "
                                         r"that this autofact version does not know"):
        autofact.load(path)


def test_gibbs_rank_above_the_matrix_warns():
    model = MatrixFactorization(rank=8, solver="gibbs", epochs=2, seed=0)
    with pytest.warns(UserWarning, match=r"rank=8 exceeds min\(users, items\) = min\(6, 5\) = 5: "
                                         r".*gibbs draws a 8x8 system for every row"):
        model.fit(tiny())


def test_n_threads_must_be_a_positive_int():
    with pytest.raises(ValueError, match=r"n_threads must be a positive int or None \(the thread "
                                         r"policy decides\), got 0"):
        MatrixFactorization(rank=2, solver="als", epochs=1, n_threads=0).fit(tiny())


# --- tuning.py -------------------------------------------------------------------------------

def test_tune_space_with_an_unknown_parameter():
    pytest.importorskip("optuna")
    with pytest.raises(ValueError, match=r"search space names 'warp_speed', which is not a "
                                         r"MatrixFactorization parameter; valid ones are"):
        autofact.tune(tiny(), space={"warp_speed": [1, 2]}, n_trials=1, show_progress=False)


@pytest.mark.parametrize("spec", [[], ("int", 0, 4), ("log", 1, 4), ("float", 2.0, 1.0)])
def test_tune_space_with_a_bad_entry(spec):
    pytest.importorskip("optuna")
    with pytest.raises(ValueError, match=r"search space entry rank=.* must be a non-empty list of "
                                         r"choices or \('int' \| 'float', low, high\)"):
        autofact.tune(tiny(), space={"rank": spec}, n_trials=1, show_progress=False)


def test_read_params_with_another_format(tmp_path):
    from autofact.tuning import read_params

    path = tmp_path / "params.json"
    path.write_text(json.dumps({"format": "other.params", "params": {"rank": 2}}))
    with pytest.raises(ValueError, match=r"params\.json: format is 'other\.params', expected "
                                         r"'autofact\.params'"):
        read_params(path)
