"""The default model's sweep budget (issue 9, item 4): the Gibbs chain stops when more sweeps
would not change its predictions, never before its minimum, and ``history_`` says why."""

from __future__ import annotations

import numpy as np
import pytest

from autofact import MatrixFactorization
from autofact.data import Ratings
from autofact.solvers import DEFAULT_EPOCHS, gibbs
from autofact.solvers.budget import SweepBudget

from .conftest import interrupt_at_call
from .test_gibbs import planted

MAX = DEFAULT_EPOCHS["gibbs"]  # the most sweeps epochs=None runs; the first tenth burn-in
BURN_IN = MAX // 10


def constant(value: float):
    return lambda u, i: np.full(len(u), value)


# ------------------------------------------------------------------------------ the rule itself
def test_never_stops_before_the_minimum_even_when_settled_at_once() -> None:
    # issue 9: predictions that never change (gain 0 from the second kept sweep on) stop at
    # exactly burn_in + min_kept sweeps, not before
    b = SweepBudget(np.arange(50), np.arange(50), burn_in=5, max_sweeps=100, min_kept=10,
                    patience=3)
    stops = [b.update(s, constant(3.0), 0.8) for s in range(1, 21)]
    assert stops[:14] == [None] * 14
    assert stops[14] is not None and stops[14].startswith("converged")
    assert b.gain == 0.0


def test_the_minimum_is_clamped_to_the_kept_sweeps() -> None:
    b = SweepBudget(np.arange(5), np.arange(5), burn_in=2, max_sweeps=6, min_kept=10, patience=1)
    assert b.min_kept == 4
    assert [b.update(s, constant(1.0), 1.0) is None for s in range(1, 7)] == [True] * 5 + [False]


def test_a_moving_chain_is_not_stopped() -> None:
    # a chain still drifting (each kept sweep moves the mean predictions) never converges
    b = SweepBudget(np.arange(50), np.arange(50), burn_in=2, max_sweeps=100, patience=1)
    for s in range(1, 101):
        assert b.update(s, constant(0.05 * s * s), 0.8) is None
    assert b.gain is not None and b.gain > b.tol


def test_gain_is_the_monte_carlo_variance_over_twice_the_noise_variance() -> None:
    # kept sweeps that are independent N(0, s^2) draws per pair: the running mean of n of them
    # minus that of the first h = n // 2 has variance s^2 (n - h) / (n h) (s^2 / n for even n)
    rng = np.random.default_rng(0)
    pairs, s, sigma = 20_000, 0.3, 0.9
    draws = rng.normal(0.0, s, size=(12, pairs))
    running = np.cumsum(draws, 0) / np.arange(1, 13)[:, None]
    b = SweepBudget(np.arange(pairs), np.zeros(pairs, dtype=int), burn_in=0, max_sweeps=12,
                    sample=pairs)
    for n in range(1, 13):
        b.update(n, lambda u, i, n=n: running[n - 1][u], sigma)
    h = 12 // 2
    expected = s * s * (12 - h) / (12 * h) / (2 * sigma * sigma)
    assert b.gain == pytest.approx(expected, rel=0.05)


def test_the_sample_is_seeded_and_bounded() -> None:
    a = SweepBudget(np.arange(1000), np.arange(1000), burn_in=0, max_sweeps=5, sample=100, seed=1)
    b = SweepBudget(np.arange(1000), np.arange(1000), burn_in=0, max_sweeps=5, sample=100, seed=1)
    assert len(a.users) == 100
    np.testing.assert_array_equal(a.users, b.users)


# ------------------------------------------------------------------------------ in the model
def _planted(m: int = 150, n: int = 100) -> tuple[Ratings, tuple[np.ndarray, ...]]:
    (u, i, r), test = planted(m=m, n=n, rank=3, frac=0.3, noise=0.5, seed=0)
    return Ratings.from_coo(u, i, r, shape=(m, n)), test


def rmse(model: MatrixFactorization, test: tuple[np.ndarray, ...]) -> float:
    tu, ti, tr = test
    return float(np.sqrt(np.mean((model.predict(tu, ti) - tr) ** 2)))


def test_the_default_stops_a_planted_problem_early_at_no_cost_in_accuracy(tmp_path) -> None:
    # issue 9, item 4: on a planted low-rank problem the chain settles well before MAX sweeps
    from autofact import load

    train, test = _planted()
    auto = MatrixFactorization(rank=3, seed=0).fit(train)
    assert auto.solver_ == "gibbs"
    assert BURN_IN + 10 <= auto.n_epochs_ < 100
    last = auto.history_[-1]
    assert last["kept"] and last["stopped"].startswith("converged")
    assert last["gain"] <= 1e-3 and last["epoch"] == auto.n_epochs_
    # no gain before two kept sweeps
    assert [h["epoch"] for h in auto.history_ if "gain" in h][0] == BURN_IN + 2
    assert all("stopped" not in h for h in auto.history_[:-1])
    assert load(auto.save(tmp_path / "m")).history_ == auto.history_  # the reason is saved
    full = MatrixFactorization(rank=3, seed=0, epochs=100).fit(train)
    assert full.n_epochs_ == 100 and full.history_[-1]["stopped"] == "all 100 sweeps"
    assert "gain" not in full.history_[-1]  # epochs given: no budget
    # what the stop gives up against 100 sweeps is within the budget's 0.1 % (and noise)
    assert rmse(auto, test) <= 1.005 * rmse(full, test)


def test_validation_patience_says_why_it_stopped() -> None:
    train, (tu, ti, tr) = _planted()
    val = Ratings.from_coo(tu, ti, tr, shape=train.shape)
    model = MatrixFactorization(rank=3, seed=0, epochs=60, patience=1).fit(train, validation=val)
    assert model.n_epochs_ < 60
    assert model.history_[-1]["stopped"] == "the validation RMSE has not improved for 1 sweep"


def test_ctrl_c_is_the_reason_of_an_interrupted_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    train, _ = _planted()
    interrupt_at_call(monkeypatch, gibbs, "_sample_rows", 9)  # the user draw of sweep 5
    model = MatrixFactorization(rank=3, seed=0)
    with pytest.raises(KeyboardInterrupt):
        model.fit(train)
    assert model.n_epochs_ == 4
    assert model.history_[-1]["stopped"] == "interrupted (Ctrl-C)"


def test_ml100k_keeps_every_sweep(ml100k) -> None:
    # issue 9: on real data of this size the chain mixes slowly and its running means still
    # improve at sweep 100 (validation RMSE -0.002 from sweep 50 to 100): the budget must not
    # cut the default's accuracy there
    base = np.loadtxt(ml100k / "u1.base", dtype=np.int64, usecols=(0, 1, 2))
    train = Ratings.from_coo(base[:, 0] - 1, base[:, 1] - 1, base[:, 2].astype(float),
                             shape=(943, 1682))
    model = MatrixFactorization(seed=0).fit(train)
    assert model.n_epochs_ == MAX  # 130 since issue 9's faster sweep
    assert model.history_[-1]["stopped"].startswith(f"all {MAX} sweeps (the most epochs=None")
    assert model.history_[-1]["gain"] > 1e-3


def test_the_scored_pairs_are_drawn_at_the_first_kept_sweep_and_are_the_seeded_ones():
    # issue 10: the sample's permutation of every training pair (0.33-0.45 s at 9M ratings) is
    # drawn when the burn-in ends, not before the first sweep; the same pairs as drawn at once
    rng = np.random.default_rng(5)
    users, items = rng.integers(0, 50, 10_000), rng.integers(0, 40, 10_000)
    b = SweepBudget(users, items, burn_in=2, max_sweeps=20, sample=300, seed=7)
    calls = []

    def predict(u, i):
        calls.append(len(u))
        return np.zeros(len(u))

    for sweep in (1, 2):
        assert b.update(sweep, predict, 1.0) is None
    assert b._sample is None and calls == []  # nothing drawn during the burn-in
    b.update(3, predict, 1.0)
    pick = np.sort(np.random.default_rng(7).permutation(10_000)[:300])
    np.testing.assert_array_equal(b.users, users[pick])
    np.testing.assert_array_equal(b.items, items[pick])
    assert calls == [300]
