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


def set_saved_param(path: Path, name: str, value: object) -> None:
    """Rewrite the saved model at ``path`` with hyper-parameter ``name`` set to ``value``."""
    def change(arrays):
        meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
        meta["params"][name] = value
        arrays["meta"] = json_bytes(meta)

    rewrite_npz(path, change)


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


def test_distributed_init_when_the_peers_never_come(monkeypatch):
    # rank 1 of 2 finds no rendezvous at MASTER_PORT (nothing listens there) and gives up after
    # the timeout less the diagnosis time (0.5 s here); no process group is formed
    import socket

    import torch.distributed as dist

    from autofact import distributed
    from autofact.sharding import PeerLostError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    with pytest.raises(PeerLostError, match=rf"the 2 processes did not all join at "
                                            rf"127\.0\.0\.1:{port} within 0\.5 s \(rank 1 gave "
                                            r"up: .*\); start every process, or raise the "
                                            r"timeout"):
        distributed.init(backend="gloo", timeout=1)
    assert not dist.is_initialized()


def test_distributed_fit_without_a_process_group():
    from autofact import distributed

    with pytest.raises(RuntimeError, match=r"no torch\.distributed process group: call "
                                           r"autofact\.distributed\.init\(\) first"):
        distributed.fit(MatrixFactorization(solver="adam", lr=0.01), tiny())


def test_distributed_fit_of_mini_batches_needs_a_process_group():
    # issue 11, item 2: mini-batches are shared now (tests/test_distributed_minibatch.py);
    # without a process group the fit says how to start one
    from autofact import distributed

    model = MatrixFactorization(solver="adam", lr=0.01, batch_size=4)
    with pytest.raises(RuntimeError, match="no torch.distributed process group: call "
                       "autofact.distributed.init"):
        distributed.fit(model, tiny())


def test_distributed_fit_with_fewer_ratings_than_processes(monkeypatch):
    # the check needs only the plan's world size: a stand-in plan, no process group
    from types import SimpleNamespace

    from autofact import distributed

    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed, "TorchShardPlan", lambda group: SimpleNamespace(world_size=64))
    with pytest.raises(ValueError, match=r"^30 ratings cannot be shared by 64 processes$"):
        distributed.fit(MatrixFactorization(solver="adam", lr=0.01), tiny())


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
    set_saved_param(path, "warp_speed", 9)
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


# --- data.py ---------------------------------------------------------------------------------

@pytest.mark.parametrize("build", [lambda: Ratings.from_dense(np.ones(4)),
                                   lambda: Ratings.from_masked(np.ma.masked_invalid(np.ones(4)))],
                         ids=["dense", "masked"])
def test_ratings_from_a_matrix_that_is_not_2d(build):
    with pytest.raises(ValueError, match=r"D must be 2-D \(users x items\), got shape \(4,\)"):
        build()


@pytest.mark.parametrize(("weight", "why"), [(-1.0, "is negative"), (np.inf, "is not finite"),
                                             ("heavy", "is not a number")])
def test_from_frame_names_the_bad_weight(weight, why):
    import pandas as pd

    df = pd.DataFrame({"user": [1, 2], "item": [1, 2], "rating": [3.0, 4.0],
                       "w": [1.0, weight]})
    with pytest.raises(ValueError, match=rf"row 1: weight .* \(column 'w'\) {why}; weights must "
                                         r"be finite numbers >= 0"):
        Ratings.from_frame(df, weight="w")


def test_from_frame_text_timestamps_that_start_as_numbers():
    import pandas as pd

    df = pd.DataFrame({"user": [1, 2], "item": [1, 2], "rating": [3.0, 4.0],
                       "t": ["1700000000", "yesterday"]})
    with pytest.raises(ValueError, match=r"timestamp 'yesterday' \(column 't'\) is not a number "
                                         r"of seconds since 1970, as the column's first entry is"):
        Ratings.from_frame(df, timestamp="t")


def test_from_frame_unsigned_timestamps_out_of_range():
    import pandas as pd

    df = pd.DataFrame({"user": [1, 2], "item": [1, 2], "rating": [3.0, 4.0],
                       "t": np.array([1, 2**63], dtype=np.uint64)})
    with pytest.raises(ValueError, match=r"timestamp 9223372036854775808 \(column 't'\) is out "
                                         r"of range"):
        Ratings.from_frame(df, timestamp="t")


# --- reading.py ------------------------------------------------------------------------------

def test_read_with_an_unknown_format(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("1,2,3\n")
    with pytest.raises(ValueError, match=r"format must be 'parquet', 'csv', 'tsv' or 'text', "
                                         r"got 'xlsx'"):
        autofact.read(path, format="xlsx")


def test_read_a_text_file_as_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "r.parquet"
    path.write_text("1,2,3\n")
    with pytest.raises(ValueError, match=r"r\.parquet: cannot read as Parquet: "):
        autofact.read(path, format="parquet")


def test_read_text_that_pandas_cannot_parse(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text('user,item,rating\n1,2,"3\n')  # a quote never closed
    with pytest.raises(ValueError, match=r"r\.csv: cannot parse: "):
        autofact.read(path)


# --- recommend.py ----------------------------------------------------------------------------

def als(ratings: Ratings, rank: int = 2) -> MatrixFactorization:
    return MatrixFactorization(rank=rank, solver="als", epochs=2, seed=0).fit(ratings)


def test_a_folded_user_from_a_model_with_more_items():
    folded = als(tiny(6, 5)).fold_in({4: 5.0})
    with pytest.raises(ValueError, match=r"this FoldedUser rated item indices beyond this "
                                         r"model's items; fold the user in with this model"):
        als(tiny(6, 3)).recommend(folded)


def test_recommend_batch_refuses_folded_users():
    model = als(tiny())
    with pytest.raises(TypeError, match=r"users must be user ids; pass a FoldedUser to "
                                        r"recommend\(folded_user\) one at a time"):
        model.recommend_batch([0, model.fold_in({1: 4.0})])


def squared_loss(pred, target):
    """A user loss at module level, so that a saved model can name it."""
    return (pred - target) ** 2


def test_fold_in_and_refit_of_a_model_loaded_without_its_loss(tmp_path):
    path = tmp_path / "custom.npz"
    MatrixFactorization(rank=2, solver="adam", lr=0.05, epochs=2, seed=0,
                        loss=squared_loss).fit(tiny()).save(path)
    model = autofact.load(path)
    with pytest.raises(ValueError, match=r"fold_in needs the model's loss: this model was "
                                         r"trained with loss '.*squared_loss'; pass it to load"):
        model.fold_in({1: 4.0})
    with pytest.raises(ValueError, match=r"this model was trained with loss '.*squared_loss'; "
                                         r"pass it to load"):
        model.fit(tiny())


# --- io.py / objective.py / solvers ----------------------------------------------------------

def test_model_file_whose_rank_disagrees_with_its_factors(tmp_path):
    path = tmp_path / "model.npz"
    als(tiny()).save(path)
    set_saved_param(path, "rank", 3)
    with pytest.raises(ValueError, match=r"model\.npz is damaged: rank is 3 but the factors have "
                                         r"2 columns"):
        autofact.load(path)


def test_a_loss_that_fails_on_the_probe_input():
    def broken(pred, target):
        raise ZeroDivisionError("no")

    model = MatrixFactorization(rank=2, solver="adam", lr=0.05, epochs=1, loss=broken)
    with pytest.raises(ValueError, match=r"loss .*broken failed on a test input: "
                                         r"ZeroDivisionError\('no'\)"):
        model.fit(tiny())


def test_cuda_device_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    model = MatrixFactorization(rank=2, solver="adam", lr=0.05, epochs=1, device="cuda")
    with pytest.raises(ValueError, match=r"device='cuda' but CUDA is not available here; use "
                                         r"device='cpu'"):
        model.fit(tiny())


def test_a_loss_that_reduces_is_refused():
    model = MatrixFactorization(rank=2, solver="adam", lr=0.05, epochs=1,
                                loss=lambda p, t: ((p - t) ** 2).sum())
    with pytest.raises(ValueError, match=r"must be elementwise \(one value per entry, shape "
                                         r"\(3,\)\), got shape \(\); do not reduce"):
        model.fit(tiny())


def test_load_a_folder(tmp_path):
    with pytest.raises(ValueError, match=r"model path '.*' is a directory; give the model file "
                                         r"itself"):
        autofact.load(tmp_path)


def test_model_file_naming_an_unknown_built_in_loss(tmp_path):
    path = tmp_path / "model.npz"
    als(tiny()).save(path)

    def change(arrays):
        meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
        meta["loss"] = {"name": "nope"}
        arrays["meta"] = json_bytes(meta)

    rewrite_npz(path, change)
    with pytest.raises(ValueError, match=r"model\.npz names loss \{'name': 'nope'\}, which is not "
                                         r"one of the built-in losses \[.*\] nor a "
                                         r"'module:function' path"):
        autofact.load(path)


# --- evaluation.py / reading.py / recommend.py, continued -------------------------------------

def test_random_split_that_keeps_nothing_for_training():
    from autofact.evaluation import random_split

    with pytest.raises(ValueError, match=r"random_split\(test_fraction=0\.99\) puts every rating "
                                         r"in the test set; use a smaller test_fraction"):
        random_split(tiny(), test_fraction=0.99)


# reading.py's "path ... is a directory; give the ratings file itself" cannot be reached: read()
# takes a folder as a folder of parts before it checks the path (see the report).


def test_read_with_a_column_that_is_not_a_name(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating\n1,2,3\n")
    with pytest.raises(TypeError, match=r"user must be a column name \(str\) or None, got 0"):
        autofact.read(path, user=0)


def test_fold_in_with_a_rating_that_is_not_a_pair():
    with pytest.raises(ValueError, match=r"ratings\[1\] must be an \(item, rating\) pair, got "
                                         r"\(2, 4\.0, 1\); pass a dict item -> rating"):
        als(tiny()).fold_in([(1, 5.0), (2, 4.0, 1)])
