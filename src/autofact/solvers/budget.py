"""The sampler's sweep budget (issue 9): stop a Gibbs chain when more sweeps would not pay.

The model's predictions are the running means of the kept sweeps (:mod:`.gibbs`). Those means
carry a Monte Carlo error that shrinks as sweeps are added; once it is small against the noise
in the ratings, more sweeps cost time and change nothing a user would see. After each kept sweep
``n``, on a fixed sample ``S`` of 2000 training pairs (0.2 ms a sweep, ~2 % of an ml-100k fit),
compare the predictions of the mean of all ``n`` kept sweeps with those of the mean of the first
``n // 2``::

    D_n^2 = mean_{(u,i) in S} (pred_n(u,i) - pred_{n//2}(u,i))^2
    gain_n = D_n^2 / (2 sigma^2)

For independent sweeps ``D_n^2`` is the Monte Carlo variance of ``pred_n`` (the difference of the
two means is half the difference of two independent means of ``n // 2`` sweeps), and a
prediction error with that variance, independent of the noise ``sigma`` (the chain's residual
RMSE, that sweep's ``loss``), raises the RMSE by the factor ``sqrt(1 + D^2 / sigma^2) ~ 1 +
gain``: ``gain`` is the fraction of the RMSE that averaging forever would still remove. A chain
that is still drifting (burn-in not over, a slow mode still moving) makes the two means differ
more, so it keeps sampling. The rule stops when ``gain <= tol`` for ``patience`` kept sweeps in a
row and at least ``min_kept`` sweeps are kept. It needs no held-out data: every training rating
is in the chain, and a user's fit learns from all of them.

Measured (``benchmarks/results/2026-11-28_2315_gibbs_budget.md``): on validation splits of
ml-100k, ml-latest-small and filmtrust ``gain`` stays at 0.002-0.005 up to 100 sweeps (the chain
mixes slowly there and the validation RMSE still improves by 0.002-0.004 from sweep 50 to 100),
so those fits run every sweep of the default count; on synthetic matrices of the ML-25M shape
(5M, 10M, 25M ratings) it falls under ``1e-3`` within 20-30 sweeps, where the test RMSE is
within 0.04-0.10 % of sweep 40's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from ..sharding import ShardPlan

__all__ = ["SweepBudget"]


class SweepBudget:
    """Decide after each sweep of a Gibbs chain whether to stop (module docstring).

    ``users``, ``items``: the training pairs, of which ``sample`` (seeded by ``seed``) are
    scored; ``burn_in``: the chain's discarded sweeps; ``max_sweeps``: the chain's length.

    Processes that share a chain (``plan``, issue 11) each score the sampled pairs of the users
    they hold (``held``: a mask over the users, ``None``: all of those sampled from ``users``)
    and sum ``D^2``'s terms over the processes, so every process stops at the same sweep: given
    every process all the pairs and its ``held`` users, the sweep one process would stop at.

    >>> b = SweepBudget(np.arange(4), np.arange(4), burn_in=0, max_sweeps=10, min_kept=2,
    ...                 patience=1)
    >>> b.update(1, lambda u, i: np.ones(len(u)), 1.0) is None
    True
    >>> b.update(2, lambda u, i: np.ones(len(u)), 1.0)
    'converged: more sweeps would lower the RMSE by an estimated 0 % (<= 0.1 %) for 1 sweep'
    """

    def __init__(self, users: Any, items: Any, *, burn_in: int, max_sweeps: int,
                 min_kept: int = 10, tol: float = 1e-3, patience: int = 3,
                 sample: int = 2000, seed: int | None = 0, plan: ShardPlan | None = None,
                 held: np.ndarray | None = None) -> None:
        # the sample is drawn at the first kept sweep (:meth:`_pairs`), not here: a permutation
        # of every pair (0.9 ms at 80k, 0.33-0.45 s at 9M) then costs nothing before the
        # burn-in's end (issue 10: the time to the first sweeps); the same seed, the same pairs
        self._source: tuple[Any, ...] | None = (users, items, sample, seed, held)
        self._sample: tuple[np.ndarray, np.ndarray] | None = None
        self.plan = plan
        self.burn_in, self.max_sweeps = int(burn_in), int(max_sweeps)
        self.min_kept = min(int(min_kept), self.max_sweeps - self.burn_in)
        self.tol, self.patience = float(tol), int(patience)
        self.kept: list[np.ndarray] = []  # the sample's predictions after each kept sweep
        self.run = 0  # kept sweeps in a row with gain <= tol
        self.gain: float | None = None

    def _pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """The scored pairs ``(users, items)``: ``sample`` of the training pairs by a
        permutation seeded by ``seed`` (of the ``held`` users'), drawn on first use."""
        if self._sample is None:
            assert self._source is not None
            users, items, sample, seed, held = self._source
            users, items = np.asarray(users), np.asarray(items)
            pick = np.random.default_rng(seed).permutation(len(users))[:sample]
            pick.sort()  # gathers in memory order
            if held is not None:
                pick = pick[np.asarray(held)[users[pick]]]
            self._sample, self._source = (users[pick], items[pick]), None
        return self._sample

    @property
    def users(self) -> np.ndarray:
        """The scored pairs' users (set by a resumed chain, with :attr:`items`)."""
        return self._pairs()[0]

    @users.setter
    def users(self, value: np.ndarray) -> None:
        self._sample = (value, self._pairs()[1])

    @property
    def items(self) -> np.ndarray:
        """The scored pairs' items."""
        return self._pairs()[1]

    @items.setter
    def items(self, value: np.ndarray) -> None:
        self._sample = (self._pairs()[0], value)

    def update(self, sweep: int, predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
               sigma: float) -> str | None:
        """Record sweep ``sweep`` (``predict``: the running means' predictions for index
        pairs; ``sigma``: the sweep's residual RMSE); return why to stop, or ``None``."""
        self.gain = None
        if sweep <= self.burn_in:
            return None
        users, items = self._pairs()
        self.kept.append(np.asarray(predict(users, items), dtype=np.float32))
        n = len(self.kept)
        if n < 2:
            return None
        diff = self.kept[-1].astype(np.float64) - self.kept[n // 2 - 1]
        terms = np.array([np.sum(diff * diff), diff.size], dtype=np.float64)
        if self.plan is not None:  # summed over the processes, in place (one: a no-op)
            self.plan.all_sum([torch.from_numpy(terms)])
        d2 = float(terms[0] / terms[1]) if terms[1] > 0 else 0.0
        gain = d2 / (2.0 * sigma * sigma) if sigma > 0 else math.inf
        self.gain = gain
        self.run = self.run + 1 if gain <= self.tol else 0
        if n >= self.min_kept and self.run >= self.patience:
            return (f"converged: more sweeps would lower the RMSE by an estimated "
                    f"{100 * gain:.2g} % (<= {100 * self.tol:.2g} %) for {self.run} "
                    f"sweep{'s' if self.run > 1 else ''}")
        return None
