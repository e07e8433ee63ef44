"""autofact.ranking (issue 12): the all-unobserved term by the Gram trick, implicit ALS, pairwise
losses and negative sampling."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from autofact import Ratings
from autofact.ranking import (
    InteractionMatrix,
    all_unobserved,
    bpr,
    confidence,
    fit_pairwise,
    implicit_als,
    implicit_loss,
    implicit_objective,
    sample_negatives,
    warp,
)


def _tiny(seed: int = 0, m: int = 6, n: int = 5, density: float = 0.4) -> Ratings:
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random((m, n)) < density, rng.integers(1, 6, (m, n)), np.nan)
    dense[:, 0] = np.where(np.isnan(dense[:, 0]), 3.0, dense[:, 0])  # every user has one item
    dense[0, :] = np.where(np.isnan(dense[0, :]), 2.0, dense[0, :])  # every item has one user
    return Ratings.from_dense(dense)


def _dense_objective(P: torch.Tensor, Q: torch.Tensor, C: torch.Tensor, observed: torch.Tensor,
                     w0: float) -> torch.Tensor:
    """The implicit-feedback data term by its definition, every entry of the matrix formed."""
    S = P @ Q.T
    return torch.where(observed, C * (1 - S) ** 2, w0 * S**2).sum()


# ---------------------------------------------------------------------------- the Gram trick
def test_all_unobserved_is_the_dense_sum_and_gradchecks() -> None:
    g = torch.Generator().manual_seed(0)
    P = torch.randn(7, 3, dtype=torch.float64, generator=g, requires_grad=True)
    Q = torch.randn(5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    dense = 0.3 * ((P @ Q.T) ** 2).sum()
    assert torch.allclose(all_unobserved(P, Q, 0.3), dense)
    gp, gq = torch.autograd.grad(all_unobserved(P, Q, 0.3), (P, Q))
    dp, dq = torch.autograd.grad(dense, (P, Q))
    assert torch.allclose(gp, dp) and torch.allclose(gq, dq)
    assert torch.autograd.gradcheck(lambda a, b: all_unobserved(a, b, 0.3), (P, Q))


@pytest.mark.parametrize("w0", [1.0, 0.25])
def test_implicit_loss_matches_the_dense_definition(w0: float) -> None:
    r = _tiny()
    conf = confidence(r.values, alpha=2.0)
    g = torch.Generator().manual_seed(1)
    P = torch.randn(r.shape[0], 3, dtype=torch.float64, generator=g, requires_grad=True)
    Q = torch.randn(r.shape[1], 3, dtype=torch.float64, generator=g, requires_grad=True)
    u, i = torch.as_tensor(r.users.astype(np.int64)), torch.as_tensor(r.items.astype(np.int64))
    c = torch.as_tensor(conf)
    C = torch.zeros(r.shape, dtype=torch.float64)
    C[u, i] = c
    observed = torch.zeros(r.shape, dtype=torch.bool)
    observed[u, i] = True
    ours = implicit_loss(P, Q, u, i, c, w0)
    ref = _dense_objective(P, Q, C, observed, w0)
    assert torch.allclose(ours, ref)
    assert torch.autograd.gradcheck(lambda a, b: implicit_loss(a, b, u, i, c, w0), (P, Q))


# ---------------------------------------------------------------------------- implicit ALS
def _numpy_user_solve(Q: np.ndarray, C_row: np.ndarray, observed_row: np.ndarray, lam: float,
                      w0: float) -> np.ndarray:
    """Hu et al.'s normal equations for one user, written densely (n x n confidence matrix)."""
    c = np.where(observed_row, C_row, w0)
    p = observed_row.astype(float)
    Cu = np.diag(c)
    A = Q.T @ Cu @ Q + lam * np.eye(Q.shape[1])
    return np.linalg.solve(A, Q.T @ Cu @ p)


@pytest.mark.parametrize("w0", [1.0, 0.5])
def test_one_als_sweep_matches_the_dense_normal_equations(w0: float) -> None:
    r = _tiny(seed=2)
    conf = confidence(r.values, alpha=3.0, scheme="log", eps=2.0)
    R = InteractionMatrix.from_ratings(r, conf)
    rng = np.random.default_rng(0)
    P0 = rng.normal(size=(r.shape[0], 3))
    Q0 = rng.normal(size=(r.shape[1], 3))
    P1, Q1 = implicit_als(R, 3, weight=w0, regularization=0.7, iterations=1,
                          init=(torch.as_tensor(P0), torch.as_tensor(Q0)), dtype=torch.float64)
    C = np.zeros(r.shape)
    C[r.users, r.items] = conf
    observed = np.zeros(r.shape, dtype=bool)
    observed[r.users, r.items] = True
    P_ref = np.stack([_numpy_user_solve(Q0, C[u], observed[u], 0.7, w0)
                      for u in range(r.shape[0])])
    np.testing.assert_allclose(P1.numpy(), P_ref, rtol=1e-9, atol=1e-10)
    Q_ref = np.stack([_numpy_user_solve(P_ref, C[:, i], observed[:, i], 0.7, w0)
                      for i in range(r.shape[1])])
    np.testing.assert_allclose(Q1.numpy(), Q_ref, rtol=1e-9, atol=1e-10)


def test_als_never_increases_the_objective_and_cg_gets_close() -> None:
    r = _tiny(seed=3, m=30, n=20, density=0.3)
    conf = confidence(r.values, alpha=1.0)
    R = InteractionMatrix.from_ratings(r, conf)
    values: list[float] = []
    implicit_als(R, 4, regularization=0.1, iterations=8, dtype=torch.float64,
                 callback=lambda it, P, Q: values.append(implicit_objective(P, Q, R, 1.0, 0.1)))
    assert all(b <= a + 1e-9 for a, b in zip(values, values[1:], strict=False))
    assert values[-1] < values[0]
    P, Q = implicit_als(R, 4, regularization=0.1, iterations=8, dtype=torch.float64)
    Pc, Qc = implicit_als(R, 4, regularization=0.1, iterations=8, dtype=torch.float64,
                          cg_steps=4)
    exact, cg = implicit_objective(P, Q, R, 1.0, 0.1), implicit_objective(Pc, Qc, R, 1.0, 0.1)
    assert abs(cg - exact) < 0.05 * abs(exact)


def test_blocks_bound_memory_and_give_the_same_answer() -> None:
    # issue 12: rows solved a padded block at a time; tiny blocks must give the same factors
    r = _tiny(seed=4, m=40, n=25, density=0.3)
    a = implicit_als(r, 3, iterations=3, dtype=torch.float64)
    b = implicit_als(r, 3, iterations=3, dtype=torch.float64, max_floats=1)
    assert torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])


def _checkerboard(n: int = 10) -> Ratings:
    """Users and items of the same parity interact, except the diagonal, which is held out."""
    u, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    keep = (u % 2 == i % 2) & (u != i)
    return Ratings(u[keep], i[keep], np.ones(int(keep.sum())), shape=(n, n))


def _top_unseen(P: torch.Tensor, Q: torch.Tensor, r: Ratings,
                b: torch.Tensor | None = None) -> np.ndarray:
    S = (P @ Q.T).numpy().astype(np.float64)
    if b is not None:
        S = S + b.numpy()[None, :]
    S[r.users, r.items] = -np.inf
    return S.argmax(1)


def test_checkerboard_known_answer_als() -> None:
    r = _checkerboard()
    P, Q = implicit_als(r, 2, alpha=1.0, regularization=0.01, iterations=10)
    assert _top_unseen(P, Q, r).tolist() == list(range(10))


@pytest.mark.parametrize(("loss", "rank", "reg"), [("bpr", 4, 0.0), ("warp", 2, 0.05)])
def test_checkerboard_known_answer_pairwise(loss: str, rank: int, reg: float) -> None:
    # WARP's hinge stops pulling once every negative is a margin below; it needs the low rank
    # (and a little shrinkage) to carry the parity structure over to the held-out diagonal
    r = _checkerboard()
    P, Q, b = fit_pairwise(r, rank, loss=loss, epochs=60, lr=0.05, batch_size=16, negatives=3,
                           regularization=reg)
    assert _top_unseen(P, Q, r, b).tolist() == list(range(10))


# ---------------------------------------------------------------------------- pairwise losses
def test_bpr_gradient_from_autograd() -> None:
    sp = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64, requires_grad=True)
    sn = torch.tensor([1.0, 1.0, 0.5], dtype=torch.float64, requires_grad=True)
    gp, gn = torch.autograd.grad(bpr(sp, sn).sum(), (sp, sn))
    expected = -torch.sigmoid(-(sp - sn)).detach()
    assert torch.allclose(gp, expected) and torch.allclose(gn, -expected)
    assert torch.allclose(bpr(sp, sn), torch.log1p(torch.exp(-(sp - sn))))
    assert torch.autograd.gradcheck(bpr, (sp, sn))


def test_warp_hinges_on_the_hardest_violating_negative() -> None:
    sp = torch.tensor([3.0, 0.0], requires_grad=True)
    sn = torch.tensor([[0.0, 1.0, -2.0], [0.5, -0.2, 2.0]])
    out = warp(sp, sn)
    assert out.shape == (2,)
    assert out[0] == 0  # every negative more than the margin below
    assert out[1] > 0
    (g,) = torch.autograd.grad(out.sum(), sp)
    assert g[0] == 0 and g[1] < 0


def test_a_users_own_pairwise_loss_trains() -> None:
    def hinge(score_positive: torch.Tensor, score_negative: torch.Tensor) -> torch.Tensor:
        return torch.relu(1 - score_positive + score_negative)

    r = _checkerboard()
    P, Q, b = fit_pairwise(r, 2, loss=hinge, epochs=60, lr=0.05, batch_size=16, negatives=1,
                           regularization=0.05)
    assert _top_unseen(P, Q, r, b).tolist() == list(range(10))


# ---------------------------------------------------------------------------- negative sampling
@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
def test_negative_sampling_never_returns_a_positive(sampling: str) -> None:
    rng = np.random.default_rng(0)
    m, n = 20, 12
    dense = rng.random((m, n)) < 0.8  # most items are positives
    dense[:, 0] = False  # every user has at least one negative
    dense[0, 0] = True  # and item 0 has an interaction (a candidate)
    dense[0, 1] = False
    u, i = np.nonzero(dense)
    R = InteractionMatrix.build(u, i, np.ones(len(u)), (m, n))
    users = np.repeat(np.arange(m), 50)
    neg = sample_negatives(R, users, 4, sampling=sampling, rng=rng)
    assert neg.shape == (len(users), 4)
    assert not dense[users[:, None], neg].any()
    assert np.isin(neg, np.flatnonzero(dense.any(0))).all()  # only items with interactions


def test_popularity_sampling_prefers_popular_items() -> None:
    u = np.concatenate([np.arange(50), [0, 1]])
    i = np.concatenate([np.zeros(50, dtype=int), [1, 2]])  # item 0: 50 users, items 1, 2: one
    R = InteractionMatrix.build(u, i, np.ones(len(u)), (50, 3))
    neg = sample_negatives(R, np.full(3000, 49), 1, sampling="popularity", power=1.0,
                           rng=np.random.default_rng(0))
    assert set(np.unique(neg)) <= {1, 2}
    neg = sample_negatives(R, np.full(3000, 10), 1, sampling="popularity", power=1.0,
                           rng=np.random.default_rng(0))
    assert abs(np.mean(neg == 1) - 0.5) < 0.05  # items 1 and 2 equally popular


def test_sampling_errors_name_the_problem() -> None:
    R = InteractionMatrix.build(np.array([0, 0, 1]), np.array([0, 1, 0]), np.ones(3), (2, 2))
    with pytest.raises(ValueError, match="user index 0 has interacted with every item"):
        sample_negatives(R, np.array([0]))
    with pytest.raises(ValueError, match="sampling must be 'uniform' or 'popularity'"):
        sample_negatives(R, np.array([1]), sampling="hard")
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        sample_negatives(R, np.array([1]), 0)


# ---------------------------------------------------------------------------- arguments
def test_confidence_schemes() -> None:
    r = np.array([0.0, 1.0, 4.0])
    np.testing.assert_allclose(confidence(r, 2.0), 1 + 2 * r)
    np.testing.assert_allclose(confidence(r, 2.0, "log", eps=0.5), 1 + 2 * np.log1p(r / 0.5))
    np.testing.assert_allclose(confidence(r, 2.0, "binary"), [3.0, 3.0, 3.0])
    with pytest.raises(ValueError, match="scheme must be one of"):
        confidence(r, 1.0, "sqrt")
    with pytest.raises(ValueError, match="confidence needs finite values >= 0"):
        confidence(np.array([-1.0]), 1.0)
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0, got -1"):
        confidence(r, -1)
    with pytest.raises(ValueError, match="eps must be a finite number > 0, got 0"):
        confidence(r, 1.0, "log", eps=0)


def test_argument_errors() -> None:
    r = _checkerboard(4)
    with pytest.raises(ValueError, match="rank must be an int >= 1, got 0"):
        implicit_als(r, 0)
    with pytest.raises(ValueError, match="regularization must be a finite number >= 0"):
        implicit_als(r, 2, regularization=-1.0)
    with pytest.raises(TypeError, match="ratings must be an autofact.Ratings, got list"):
        implicit_als([1, 2], 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="loss must be one of \\['bpr', 'warp'\\]"):
        fit_pairwise(r, 2, loss="hinge")
    with pytest.raises(TypeError, match="loss must be a name or a callable, got int"):
        fit_pairwise(r, 2, loss=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        fit_pairwise(r, 2, lr=0)


def test_pairwise_blowup_raises_fit_error() -> None:
    from autofact import FitError

    def explode(score_positive: torch.Tensor, score_negative: torch.Tensor) -> torch.Tensor:
        return score_positive * float("inf")

    with pytest.raises(FitError, match="non-finite in epoch 1; lower lr"):
        fit_pairwise(_checkerboard(4), 2, loss=explode, epochs=1)


# ---------------------------------------------------------------------------- the ranking task
def test_fold_in_row_is_the_dense_normal_equations() -> None:
    from autofact.ranking import RANKING_DEFAULTS, fold_in_row

    rng = np.random.default_rng(5)
    Q = rng.normal(size=(9, 3))
    items, values = np.array([1, 4, 7]), np.array([5.0, 3.0, 1.0])
    x = fold_in_row(Q, items, values, beta=2.0)
    observed = np.zeros(9, dtype=bool)
    observed[items] = True
    C = np.zeros(9)
    C[items] = confidence(values, RANKING_DEFAULTS["alpha"], RANKING_DEFAULTS["scheme"])
    ref = _numpy_user_solve(Q, C, observed, 2.0, RANKING_DEFAULTS["weight"])
    np.testing.assert_allclose(x, ref, rtol=1e-10)


def test_fit_ranking_reports_a_decreasing_objective_and_checks_its_arguments() -> None:
    from autofact.ranking import fit_ranking

    r = _tiny(seed=6, m=30, n=20, density=0.3)
    seen: list[float] = []
    P, Q, b = fit_ranking(r, 3, epochs=5, dtype=torch.float64,
                          callback=lambda it, v: seen.append(v))
    assert b is None and P.shape == (30, 3) and Q.shape == (20, 3)
    assert len(seen) == 5 and all(y <= x + 1e-9 for x, y in zip(seen, seen[1:], strict=False))
    with pytest.raises(ValueError, match="lr=0.1 / batch_size=None have no meaning"):
        fit_ranking(r, 3, lr=0.1)
    with pytest.warns(UserWarning, match="1 user\\(s\\) interacted with every item"):
        P, Q, b = fit_ranking(r, 3, loss="bpr", epochs=2)  # user 0 has every item
    assert b is not None and b.shape == (20,)


# ---------------------------------------------------------------------------- the model's task
@pytest.mark.parametrize(("loss", "solver", "beta", "epochs"),
                         [("squared", "auto", 0.01, None), ("squared", "cg", 0.01, None),
                          ("squared", "als", 0.01, None),
                          ("bpr", "auto", 0.5, 60)])
def test_model_ranking_task_checkerboard(loss: str, solver: str, beta: float,
                                         epochs: int | None) -> None:
    from autofact import MatrixFactorization

    r = _checkerboard()
    model = MatrixFactorization(rank=2, task="ranking", loss=loss, solver=solver, beta=beta,
                                epochs=epochs)
    model.fit(r)
    tops = model.recommend_batch(list(range(10)), 1)
    assert [int(t.items[0]) for t in tops] == list(range(10))
    assert model.solver_ == {"auto": "cg" if loss == "squared" else "adam", "cg": "cg",
                             "als": "als"}[solver]
    assert model.n_epochs_ == (15 if epochs is None else epochs) == len(model.history_)


def test_model_ranking_save_load_and_unclipped_scores(tmp_path: Any) -> None:
    import autofact
    from autofact import MatrixFactorization

    r = _checkerboard()
    for loss in ("squared", "warp"):
        model = MatrixFactorization(rank=2, task="ranking", loss=loss, beta=0.05, alpha=2.0,
                                    epochs=20).fit(r)
        # every value is 1, so a clipped "rating" would be 1 everywhere: scores are not clipped
        s = model.predict([0, 0], [2, 1])
        assert s[0] > s[1] and s[1] < 0.5
        path = tmp_path / f"{loss}.npz"
        model.save(path)
        back = autofact.load(path)
        assert (back.task, back.alpha, back.loss) == ("ranking", 2.0, loss)
        np.testing.assert_array_equal(back.predict([0, 0, 3], [2, 1, 5]),
                                      model.predict([0, 0, 3], [2, 1, 5]))
        assert back.recommend(4, 3).items.tolist() == model.recommend(4, 3).items.tolist()


def test_model_ranking_fold_in_is_the_exact_user_row() -> None:
    from autofact import MatrixFactorization
    from autofact.ranking import RANKING_DEFAULTS

    r = _tiny(seed=7, m=25, n=15, density=0.35)
    model = MatrixFactorization(rank=3, task="ranking", dtype="float64").fit(r)
    P = torch.as_tensor(model.user_factors_)
    Q = torch.as_tensor(model.item_factors_)
    conf = confidence(r.values, model.alpha, RANKING_DEFAULTS["scheme"])
    R = InteractionMatrix.from_ratings(r, conf)
    # one more user half-sweep against the model's items is what fold_in must give
    P1, _ = implicit_als(R, 3, weight=RANKING_DEFAULTS["weight"], regularization=model.beta,
                         iterations=1, init=(P, Q), dtype=torch.float64)
    user = 3
    rows = r.users == user
    folded = model.fold_in(dict(zip(r.items[rows].tolist(), r.values[rows].tolist(),
                                    strict=True)))
    np.testing.assert_allclose(folded.factors, P1[user].numpy(), rtol=1e-8, atol=1e-10)
    assert sorted(folded.seen.tolist()) == sorted(r.items[rows].tolist())
    top = model.recommend(folded, 5).items
    assert not set(top.tolist()) & set(r.items[rows].tolist())


def test_model_ranking_errors() -> None:
    from autofact import MatrixFactorization

    r = _checkerboard(4)
    cases = [
        ({"task": "rank"}, "task must be 'rating' or 'ranking', got 'rank'"),
        ({"task": "ranking", "loss": "huber"}, "task='ranking' takes loss='squared'"),
        ({"task": "ranking", "solver": "adam"},
         r"is solved by 'cg', got solver='adam'; use solver='auto'/'cg' or 'als' \(exact\)"),
        ({"task": "ranking", "loss": "bpr", "solver": "cg"}, "use solver='auto'"),
        ({"task": "ranking", "regularization": "l1"}, "task='ranking' takes regularization='l2'"),
        ({"task": "ranking", "nonnegative": True}, "nonnegative=True is not available"),
        ({"task": "ranking", "alpha": -1.0}, "alpha must be a finite number >= 0, got -1.0"),
        ({"task": "ranking", "epochs": 0}, "epochs must be a positive int or None, got 0"),
        ({"task": "ranking", "lr": 0.1}, "have no meaning for the ranking task's implicit ALS"),
        ({"task": "ranking", "rank": 0}, "rank must be a positive int or 'auto', got 0"),
    ]
    for params, message in cases:
        with pytest.raises(ValueError, match=message):
            MatrixFactorization(**params).fit(r)
    with pytest.raises(ValueError, match="validation has no meaning for task='ranking'"):
        MatrixFactorization(task="ranking").fit(r, validation=r)
    with pytest.raises(ValueError, match="leave validation and validation_fraction unset"):
        MatrixFactorization(task="ranking", validation_fraction=0.2).fit(r)
    bpr_model = MatrixFactorization(rank=2, task="ranking", loss="bpr", epochs=1).fit(r)
    with pytest.raises(ValueError, match="fold_in for task='ranking' solves the implicit"):
        bpr_model.fold_in({0: 1.0})
    # issue 12 review: the value as a plain float (was "np.float64(-1.0)"), a fix the model takes
    with pytest.raises(ValueError, match=r"confidence needs finite values >= 0 \(counts, plays, "
                       r"ratings\), got min -1.0; shift the values, set every interaction to 1"):
        MatrixFactorization(task="ranking").fit(Ratings.from_dense(np.array([[-1.0, 1.0]])))


# ---------------------------------------------------------------------------- the CLI
def _write_checkerboard(path: Any) -> None:
    r = _checkerboard()
    lines = [f"{u},{i},1" for u, i in zip(r.users.tolist(), r.items.tolist(), strict=True)]
    path.write_text("user,item,rating\n" + "\n".join(lines) + "\n")


def test_cli_fit_task_ranking(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import autofact
    from autofact import cli

    data, out = tmp_path / "cb.csv", tmp_path / "m.npz"
    _write_checkerboard(data)
    code = cli.main(["fit", str(data), "--out", str(tmp_path / "c.npz"), "--task", "ranking",
                     "--loss", "huber", "-q"])
    assert code == 2 and "--task ranking takes --loss squared" in capsys.readouterr().err
    code = cli.main(["fit", str(data), "--out", str(out), "--task", "ranking", "--rank", "2",
                     "--beta", "0.01", "--alpha", "1", "--json", "-q"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["solver"] == "cg" and summary["train_rmse"] is None
    model = autofact.load(out)
    assert (model.task, model.alpha, model.beta) == ("ranking", 1.0, 0.01)
    assert [int(model.recommend(u, 1).items[0]) for u in range(10)] == list(range(10))
    code = cli.main(["fit", str(data), "--out", str(tmp_path / "b.npz"), "--task", "ranking",
                     "--loss", "bpr", "--epochs", "2", "-q"])
    assert code == 0 and autofact.load(tmp_path / "b.npz").loss == "bpr"


def test_cli_fit_prints_the_resolved_rank(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    # issue 12: with rank="auto" the summary line said "fitted rank auto"; it names rank_
    from autofact import cli

    data = tmp_path / "cb.csv"
    _write_checkerboard(data)
    code = cli.main(["fit", str(data), "--out", str(tmp_path / "m.npz"), "--solver", "als",
                     "--epochs", "1", "-q"])
    out = capsys.readouterr().out
    assert code == 0 and "fitted rank 10 (als, 1 epochs" in out, out
    code = cli.main(["fit", str(data), "--out", str(tmp_path / "m.npz"), "--rank", "auto",
                     "--solver", "als", "--epochs", "1", "-q"])
    out = capsys.readouterr().out
    assert code == 0 and "fitted rank 10 (als, 1 epochs" in out, out  # --rank auto, as rank="auto"
    code = cli.main(["fit", str(data), "--out", str(tmp_path / "m.npz"), "--rank", "big", "-q"])
    assert code == 2 and "argument --rank: must be a positive int, got 'big'" in \
        capsys.readouterr().err


def test_cli_solver_cg_is_the_ranking_tasks(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    # issue 12 review: the refusal of --task ranking --solver gibbs says "use --solver auto/'cg'",
    # but argparse refused --solver cg; and cg for the rating task names the task it is for
    import json

    from autofact import cli

    data = tmp_path / "cb.csv"
    _write_checkerboard(data)
    code = cli.main(["fit", str(data), "--out", str(tmp_path / "m.npz"), "--task", "ranking",
                     "--rank", "2", "--solver", "cg", "--epochs", "1", "--json", "-q"])
    assert code == 0 and json.loads(capsys.readouterr().out)["solver"] == "cg"
    code = cli.main(["fit", str(data), "--out", str(tmp_path / "m.npz"), "--solver", "cg", "-q"])
    assert code == 2 and "got 'cg'; 'cg' is for --task ranking" in capsys.readouterr().err


# ---------------------------------------------------------------------------- partial_fit
def _ranking_model(seed: int = 8) -> tuple[Any, Ratings]:
    from autofact import MatrixFactorization

    r = _tiny(seed=seed, m=25, n=15, density=0.35)
    return MatrixFactorization(rank=3, task="ranking", dtype="float64").fit(r), r


def test_partial_fit_new_user_is_its_exact_row(tmp_path: Any) -> None:
    import autofact

    model, r = _ranking_model()
    folded = model.fold_in({1: 5.0, 4: 2.0, 9: 4.0})
    P_before, Q_before = model.user_factors_.copy(), model.item_factors_.copy()
    model.partial_fit(Ratings(np.array([0, 0, 0]), np.array([0, 1, 2]), [5.0, 2.0, 4.0],
                              shape=(1, 3), user_ids=np.array([99]),
                              item_ids=np.array([1, 4, 9])))
    assert model.user_ids_[-1] == 99 and len(model.user_ids_) == 26
    np.testing.assert_allclose(model.user_factors_[-1], folded.factors, rtol=1e-10)
    np.testing.assert_array_equal(model.user_factors_[:-1], P_before)  # nobody else moved
    np.testing.assert_array_equal(model.item_factors_, Q_before)
    assert not {1, 4, 9} & set(model.recommend(99, 12).items.tolist())
    model.save(tmp_path / "m.npz")
    back = autofact.load(tmp_path / "m.npz")
    assert back.recommend(99, 5).items.tolist() == model.recommend(99, 5).items.tolist()


def test_partial_fit_replaces_a_users_history_and_adds_items() -> None:
    model, r = _ranking_model()
    user = r.user_ids[4]
    before = set(r.items[r.users == 4].tolist())
    # user 4's complete history is now items 0 and 1 plus a new item 'n1', shared with user 5
    new = Ratings(np.array([0, 0, 0, 1]), np.array([0, 1, 2, 2]), [4.0, 4.0, 5.0, 3.0],
                  shape=(2, 3), user_ids=np.array([user, r.user_ids[5]], dtype=object),
                  item_ids=np.array([0, 1, "n1"], dtype=object))
    model.partial_fit(new)
    assert model.item_ids_[-1] == "n1" and model.item_factors_.shape[0] == 16
    assert np.abs(model.item_factors_[-1]).sum() > 0  # solved, not left at zero
    seen = set(model.index_.seen[4].indices.tolist())
    assert seen == {0, 1, 15}
    recs = set(model.recommend(user, 13).items.tolist())
    assert not recs & {0, 1, "n1"} and (before - {0, 1}) <= recs  # old items rankable again
    with pytest.raises(ValueError, match="partial_fit re-solves implicit-feedback ALS rows"):
        from autofact import MatrixFactorization

        MatrixFactorization(rank=2, epochs=1).fit(r).partial_fit(new)
    with pytest.raises(ValueError, match="confidence needs finite values >= 0"):
        model.partial_fit(Ratings.from_dense(np.array([[-1.0]])))


def test_cli_recommend_all_writes_every_users_top_n(tmp_path: Any,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # issue 12, item 5: batch top-N to a file, training items filtered, same lists as recommend
    import csv

    from autofact import cli

    model, r = _ranking_model()
    path = tmp_path / "m.npz"
    model.save(path)
    out = tmp_path / "recs.csv"
    assert cli.main(["recommend", str(path), "--all", "--out", str(out), "-n", "4"]) == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 * 24  # user 0 has every item: nothing left to recommend
    for user in (0, 7, 24):
        mine = [row for row in rows if int(row["user"]) == user]
        expected = model.recommend(user, 4)
        assert [int(row["item"]) for row in mine] == expected.items.tolist()
        np.testing.assert_allclose([float(row["score"]) for row in mine], expected.scores)
        assert [int(row["rank"]) for row in mine] == list(range(1, len(mine) + 1))
        assert not {int(row["item"]) for row in mine} & set(r.items[r.users == user].tolist())
    assert cli.main(["recommend", str(path), "--all", "--out", str(out), "-n", "2"]) == 0  # ours
    capsys.readouterr()
    (tmp_path / "notes.csv").write_text("my notes\n")
    cases = [
        (["--all", "--out", str(tmp_path / "notes.csv")], "is not a recommendations csv file"),
        (["--all", "--out", str(tmp_path / "r.txt")], "ending in .csv or .parquet"),
        (["--user", "0", "--out", str(tmp_path / "r.csv")], "--all and --out go together"),
        (["--all"], "--all and --out go together"),
    ]
    for extra, message in cases:
        assert cli.main(["recommend", str(path), *extra]) == 2
        assert message in capsys.readouterr().err
    assert (tmp_path / "notes.csv").read_text() == "my notes\n"


def test_cli_recommend_all_parquet(tmp_path: Any) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    from autofact import cli

    model, _ = _ranking_model()
    model.save(tmp_path / "m.npz")
    out = tmp_path / "recs.parquet"
    assert cli.main(["recommend", str(tmp_path / "m.npz"), "--all", "--out", str(out),
                     "-n", "3"]) == 0
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["user", "rank", "item", "score"] and len(frame) == 3 * 24
    assert frame[frame.user == 5].item.tolist() == model.recommend(5, 3).items.tolist()


@pytest.mark.parametrize("scale", [0.0, 1.0])
def test_short_rows_woodbury_and_long_rows_cholesky_agree_with_dense(scale: float) -> None:
    # rows with fewer than rank/2 entries go through Woodbury (same lambda for all rows), the
    # others through a Cholesky; scale_regularization=1 sends every row through the Cholesky
    r = _tiny(seed=9, m=30, n=40, density=0.15)
    conf = confidence(r.values, alpha=1.5)
    R = InteractionMatrix.from_ratings(r, conf)
    assert np.diff(R.indptr).min() < 4 < np.diff(R.indptr).max()
    rng = np.random.default_rng(1)
    P0, Q0 = rng.normal(size=(30, 8)), rng.normal(size=(40, 8))
    P1, _ = implicit_als(R, 8, weight=0.5, regularization=0.3, scale_regularization=scale,
                         iterations=1, init=(torch.as_tensor(P0), torch.as_tensor(Q0)),
                         dtype=torch.float64)
    C = np.zeros(r.shape)
    C[r.users, r.items] = conf
    observed = C > 0
    counts = observed.sum(1)
    ref = np.stack([_numpy_user_solve(Q0, C[u], observed[u],
                                      0.3 * (counts[u] + 0.5 * 40) ** scale, 0.5)
                    for u in range(30)])
    np.testing.assert_allclose(P1.numpy(), ref, rtol=1e-8, atol=1e-10)


def test_gradient_solver_on_the_gram_trick_term_reaches_the_als_objective() -> None:
    # issue 12: the all-unobserved term is usable by a gradient solver (autograd through
    # implicit_loss, never densified): L-BFGS on (P, Q) reaches the objective ALS reaches
    r = _tiny(seed=10, m=12, n=9, density=0.4)
    conf = confidence(r.values, alpha=1.0)
    R = InteractionMatrix.from_ratings(r, conf)
    lam, w0 = 0.5, 0.5
    P0, Q0 = implicit_als(R, 2, weight=w0, regularization=lam, iterations=200,
                          dtype=torch.float64)
    als_value = implicit_objective(P0, Q0, R, w0, lam)
    g = torch.Generator().manual_seed(0)
    P = (0.1 * torch.randn(12, 2, generator=g, dtype=torch.float64)).requires_grad_()
    Q = (0.1 * torch.randn(9, 2, generator=g, dtype=torch.float64)).requires_grad_()
    u, i = torch.as_tensor(r.users.astype(np.int64)), torch.as_tensor(r.items.astype(np.int64))
    c = torch.as_tensor(conf)
    opt = torch.optim.LBFGS([P, Q], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = implicit_loss(P, Q, u, i, c, w0) + lam * (P.square().sum() + Q.square().sum())
        value.backward()
        return value

    for _ in range(5):
        opt.step(closure)
    grad_value = implicit_objective(P.detach(), Q.detach(), R, w0, lam)
    assert abs(grad_value - als_value) < 1e-6 * max(1.0, abs(als_value))


# ---------------------------------------------------------------------------- defaults by task
def test_rank_auto_is_the_tasks_own(tmp_path: Any) -> None:
    # issue 12: rank='auto' (the default) is 64 for the ranking task, 10 for rating; the saved
    # model keeps 'auto' and loads with the factors it had
    import autofact
    from autofact import MatrixFactorization
    from autofact.model import RANK_DEFAULTS

    assert RANK_DEFAULTS == {"rating": 10, "ranking": 64}
    rng = np.random.default_rng(0)
    u, i = np.nonzero(rng.random((80, 70)) < 0.3)
    r = Ratings(u, i, rng.integers(1, 6, len(u)).astype(float), shape=(80, 70))
    ranking = MatrixFactorization(task="ranking", epochs=2).fit(r)
    rating = MatrixFactorization(epochs=2, seed=0).fit(r)
    assert MatrixFactorization().rank == "auto"
    assert (ranking.rank_, ranking.user_factors_.shape[1]) == (64, 64)
    assert (rating.rank_, rating.item_factors_.shape[1]) == (10, 10)
    assert MatrixFactorization(rank=5, task="ranking", epochs=1).fit(r).rank_ == 5
    ranking.save(tmp_path / "m.npz")
    back = autofact.load(tmp_path / "m.npz")
    assert (back.rank, back.rank_) == ("auto", 64)
    with pytest.raises(ValueError, match="rank must be a positive int or 'auto', got 'big'"):
        MatrixFactorization(rank="big").fit(r)


def test_evaluate_a_ranking_model_has_no_rmse(tmp_path: Any,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # issue 12: a ranking model predicts a preference score, not a rating: evaluate (and the
    # CLI's evaluate) report the top-k metrics only
    import json

    from autofact import MatrixFactorization, cli
    from autofact.evaluation import evaluate

    r = _checkerboard()
    model = MatrixFactorization(rank=2, task="ranking", beta=0.01).fit(r)
    test = Ratings(np.arange(10), np.arange(10), np.full(10, 5.0), shape=(10, 10))
    metrics = evaluate(model, test)
    assert "rmse" not in metrics and "mae" not in metrics
    assert metrics["precision@10"] == pytest.approx(0.1)  # the one test item is the top item
    path = tmp_path / "m.npz"
    model.save(path)
    data = tmp_path / "test.csv"
    data.write_text("user,item,rating\n" + "".join(f"{k},{k},5\n" for k in range(10)))
    assert cli.main(["evaluate", str(path), str(data), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "rmse" not in out and out["ndcg@10"] == pytest.approx(1.0)
