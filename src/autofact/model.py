"""``MatrixFactorization``: the estimator (scikit-learn contract)."""

from __future__ import annotations

import functools
import inspect
import math
import os
import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._imports import NotLoaded
from ._memory import release_freed_memory
from .data import Ratings, as_ratings
from .errors import FitError
from .index import ModelIndex
from .losses import LOSSES, Loss, check_targets, clips_to_range, get_loss, inverse_link
from .objective import Objective, check_unobserved_weight, resolve_device, resolve_dtype
from .regularizers import REGULARIZERS, Regularizer
from .sharding import ShardPlan
from .solvers import DEFAULT_EPOCHS, DEFAULT_LR, RANK_DEFAULTS, choose_solver, fit_params
from .threads import check_n_threads, use_threads

if TYPE_CHECKING:
    from .recommend import FoldedUser, Recommendations, SimilarItems

__all__ = ["MatrixFactorization", "load"]

_KINDS = ("response", "link")


class MatrixFactorization:
    """Low-rank factorization of a ratings matrix with missing entries, fitted by autograd.

    Minimizes, over the observed entries only,

    .. math::

        \\sum_{(u,i) \\in \\Omega} w_{ui}\\, \\ell(\\mu + b_u + b_i + p_u \\cdot q_i,\\ r_{ui})
        + R(P) + R(Q) + R(b^u) + R(b^i)

    where ``ell`` is ``loss`` (any elementwise torch function), ``R`` the ``regularization``
    (``'l2'`` is ``beta/2 * ||X||^2``) and the bias terms are present when ``bias=True``. No
    gradient is written by hand: autograd differentiates ``ell`` and ``R``.

    The score ``s = mu + b_u + b_i + p_u . q_i`` is on the loss's link scale; :meth:`predict`
    returns the mean response ``g^{-1}(s)``: the rating for ``squared``/``absolute``/``huber``
    (clipped to the training range), the rate ``exp(s)`` for ``poisson``, the probability
    ``sigmoid(s)`` for ``logistic``, and for a user's loss ``s`` itself unless the function
    declares ``loss.inverse_link`` (see :mod:`autofact.losses`). ``predict(..., kind="link")``
    gives ``s``.

    With ``task='ranking'`` (issue 12) the model learns which items a user chooses rather than
    the ratings they give: implicit-feedback matrix factorization (Hu, Koren and Volinsky 2008),
    every unobserved entry a zero of weight ``w0`` and every observed one a preference ``1`` of
    confidence ``1 + alpha * r``,

    .. math::

        \\sum_{(u,i) \\in \\Omega} (1 + \\alpha r_{ui}) (1 - p_u \\cdot q_i)^2
        + w_0 \\sum_{(u,i) \\notin \\Omega} (p_u \\cdot q_i)^2 + \\beta (\\|P\\|^2 + \\|Q\\|^2)

    solved exactly by alternating least squares with the Gram trick (the unobserved sum is never
    formed; see :mod:`autofact.ranking`), or, with ``loss='bpr'`` or ``'warp'``, a pairwise
    ranking loss over sampled negatives (Adam, item biases). The values must be ``>= 0``
    (ratings, counts; binary data is fine). Its :meth:`predict` returns the preference score
    ``p_u . q_i (+ b_i)``, not a rating: use it to rank, as :meth:`recommend` does.

    Parameters
    ----------
    rank : number of latent factors ``k``, or ``'auto'`` (the default): the task's own, 10 for
        ``task='rating'`` and 64 for ``task='ranking'`` (chosen on validation splits carved from
        training data; see :data:`RANK_DEFAULTS`). ``rank_`` holds the number used.
    task : ``'rating'`` (predict ratings: the default) or ``'ranking'`` (top-N recommendation
        from implicit feedback; ``loss`` is then ``'squared'``, the implicit-feedback ALS
        above (``solver='auto'`` or ``'cg'``: three conjugate-gradient steps a row from the
        last sweep's, as implicit does, each lowering the objective; ``'als'``: each row solved
        exactly, the same top-N on MovieLens at 3.6-5x the time), or
        ``'bpr'``/``'warp'``; ``beta`` is ``lambda``; ``epochs`` defaults to 15 ALS
        sweeps or 30 pairwise epochs; ``bias``, ``regularization`` and ``max_memory`` are not
        used).
    alpha : the ranking task's confidence slope, ``c = 1 + alpha * r`` (not used for rating).
    loss : ``'squared'``, ``'absolute'``, ``'huber'``, ``'logistic'``, ``'poisson'``, a
        ``'module:function'`` path, or a callable ``loss(pred, target) -> per-entry tensor``.
    regularization : ``'l2'``, ``'l1'``, ``'none'``, a path, or a callable ``reg(param) -> scalar``.
    beta : strength of a named regularization (not used by ``'gibbs'``, which samples it; so
        ``'auto'`` does not pick ``'gibbs'`` when ``beta`` is set to other than its default).
    unobserved_weight : ``w0 >= 0`` (issue 12). ``0`` (the default): the rating objective above.
        ``w0 > 0`` adds implicit feedback's all-unobserved term ``w0 * sum over the unrated
        (u, i) of (mu + b_u + b_i + p_u . q_i)^2``: every pair a user did not rate counts as a
        rating of 0 with weight ``w0`` (never formed: the Gram trick, see
        :mod:`autofact.objective`), so the model also learns which items each user chose to
        rate: better top-N recommendations, worse RMSE. Measured against ``solver='als'`` at
        ``w0 = 0`` (benchmarks/ranking.py ``--combined``, weights chosen on validation
        splits): ``w0 = 0.003`` on MovieLens 100K u1 costs 1% in RMSE for 30% more NDCG@10,
        ``w0 = 0.0003`` on ml-latest-small 0.1% for 14% more; ``w0 = 0.1`` nearly matches
        ``task='ranking'``'s top-10 with an RMSE of 1.65 to 1.87. The weight's scale depends on
        the density (a sparser matrix has more unrated pairs): choose it on validation data.
        ``'auto'`` then picks ``'als'`` (exact for the term) rather than ``'gibbs'``, which does
        not carry it.
    solver : ``'auto'``, ``'gibbs'``, ``'als'``, ``'adam'``, ``'sgd'``, ``'lbfgs'`` or ``'gd'``.
        ``'auto'`` picks ``'gibbs'`` for the squared loss with ``'l2'`` (the default model:
        Bayesian MF by Gibbs sampling with sampled regularization and per-user/per-item noise,
        the posterior means kept as the factors; see :mod:`autofact.solvers.gibbs`) unless the
        ratings have weights, ``beta`` is not the default, ``bias=False``, ``nonnegative=True``
        or ``batch_size`` is set (a fit shared by processes samples too: the chain sharded by
        user; so does a checkpointed fit, issue 11); otherwise ``'adam'`` when
        ``batch_size`` is set, else
        ``'als'`` where its assumptions hold (an elementwise loss with curvature, a smooth
        separable regularizer), else ``'lbfgs'`` (``'adam'`` with ``nonnegative=True``); see
        :mod:`autofact.solvers.contract`. An explicit ``'als'`` or ``'gibbs'`` outside its
        assumptions raises a ValueError naming the fix. An explicit ``'gibbs'`` with ``'l2'``
        and another loss with a second derivative (``'huber'``, ``'logistic'``, ``'poisson'``,
        a user's) samples the loss as a likelihood by Metropolis-Hastings with Laplace
        proposals (:mod:`autofact.solvers.laplace`, issue 9).
    lr : learning rate (``None``: the solver's default).
    epochs : passes over the data (``None``: the solver's default; for ``'gibbs'`` the sweeps:
        at most 130, the first tenth discarded as burn-in, and fewer when the chain settles, i.e.
        when more sweeps would lower the RMSE by under 0.1 % (:mod:`autofact.solvers.budget`;
        on large data 20-30 sweeps); 100 for a loss sampled by Laplace-MH; a number runs exactly
        that many sweeps).
    batch_size : mini-batch size for ``'adam'``/``'sgd'`` (``None``: full batch for ``adam``).
    bias : learn a global mean and user/item biases.
    implicit : add SVD++'s implicit-feedback term (Koren, KDD 2008): each user's factor is
        centred on ``|N(u)|^-1/2 sum_{j in N(u)} y_j``, the normalized sum of implicit factors
        ``y_j`` of the items the user rated, so which items a user rated informs their factor
        (and a user folded in gets it from their rated items). Learned by the Gibbs sampler
        (one more block of each sweep) and by the full-batch gradient solvers (``'lbfgs'``,
        ``'adam'``, ``'gd'``: the loss sees ``p_u + |N(u)|^-1/2 sum y_j``, the regularizer ``P``
        and ``Y``; autograd differentiates through the sum); ``'als'`` and mini-batches refuse
        it, and ``'auto'`` picks ``'lbfgs'`` where it would pick ``'als'``. ``user_factors_``
        hold the whole factor (the implicit part included), ``implicit_factors_`` the ``y_j``.
        Off by default: on validation splits carved from training data the sampler's RMSE
        changed by -0.002 on ml-100k, +0.0005 on ml-latest-small and -0.0001 on filmtrust, at
        1.4-1.9x the fit time, which the default's time budget does not allow (see
        :mod:`autofact.solvers.gibbs`).
    nonnegative : project ``P`` and ``Q`` onto ``>= 0``: after each block of rows for ``als``,
        after each epoch's step for the first-order solvers (not with ``lbfgs``).
    init_std : standard deviation of the random initial factors. The Bayesian sampler (the
        default model) starts from a truncated SVD of the centred ratings instead, unless
        ``init_std`` is set to other than its default.
    seed : makes a CPU run repeatable.
    device : ``'auto'``, ``'cpu'`` or ``'cuda'``.
    dtype : ``'float32'`` or ``'float64'``.
    max_memory : bound in bytes on the extra memory of one full-batch step (for the Bayesian
        sampler: of the row conditionals it draws at once). Under torchrun it is the machine's:
        the processes started on one machine (``LOCAL_WORLD_SIZE``) split it evenly.
    strict : raise on unknown users/items in :meth:`predict` instead of falling back.
    verbose : show a progress bar with the loss and validation RMSE.
    patience : with validation data, stop when the validation RMSE has not improved for this
        many epochs and keep the best epoch's parameters. ``'auto'`` (the default) is
        ``max(5, epochs // 10)``: 5 for ALS's 15 epochs, 20 for Adam's 200, whose validation
        error can stall for a while before it falls. ``None``: run every epoch, keep the last.
    validation_fraction : carve this fraction of the training ratings (seeded by ``seed``) as
        the validation data, and fit on the rest (``None``: validate only on ``validation=``).
    n_threads : the most CPU threads the fit may use (``None``: the environment,
        ``AUTOFACT_NUM_THREADS``/``OMP_NUM_THREADS``/``MKL_NUM_THREADS``, else the usable cores).
        ALS runs large sides as row blocks on that many threads; operations too small to gain
        from threads run on one (see :mod:`autofact.threads`); ALS factors do not depend on it;
        torch's own thread count is set only during the fit and put back after it. Fitting from
        several Python threads at once, give each fit ``n_threads``.

    Attributes (after :meth:`fit`)
    ----------
    user_factors_ (m x k), item_factors_ (n x k), user_bias_, item_bias_, global_mean_,
    index_ (:class:`~autofact.index.ModelIndex`: id maps, seen items, counts, clipping range,
    the unknown-id rule), user_ids_, item_ids_, rating_range_, fallback_mean_ (from
    ``index_``), history_ (one dict per epoch: epoch, loss, val_rmse, time; the epoch whose
    parameters were kept has ``kept: True``), n_epochs_, best_epoch_, solver_,
    implicit_factors_ (n x k, the ``y_j`` of ``implicit=True``; ``None`` without).

    As a scikit-learn estimator: ``fit(X, y)`` takes an ``(n, 2)`` array of (user id, item id)
    pairs and their ratings ``y``, and :meth:`score` is higher-is-better (the negative RMSE, as
    scikit-learn's ``'neg_root_mean_squared_error'``), so ``GridSearchCV(MatrixFactorization(),
    {"rank": [5, 10]})`` picks the most accurate model. ``fit`` never touches torch's global
    random generator; ``seed`` makes a run repeatable.

    Examples
    --------
    >>> model = MatrixFactorization(rank=10, seed=0).fit(train)
    >>> model.predict([196], [242])
    """

    def __init__(
        self,
        rank: int | str = "auto",
        *,
        task: str = "rating",
        alpha: float = 0.5,
        loss: str | Loss = "squared",
        regularization: str | Regularizer | None = "l2",
        beta: float = 25.0,
        unobserved_weight: float = 0.0,
        solver: str = "auto",
        lr: float | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        bias: bool = True,
        implicit: bool = False,
        nonnegative: bool = False,
        init_std: float = 0.1,
        seed: int | None = 0,
        device: str = "auto",
        dtype: str = "float32",
        max_memory: int = 256 * 2**20,
        strict: bool = False,
        verbose: bool = False,
        patience: int | str | None = "auto",
        validation_fraction: float | None = None,
        n_threads: int | None = None,
    ) -> None:
        self.rank = rank
        self.task = task
        self.alpha = alpha
        self.loss = loss
        self.regularization = regularization
        self.beta = beta
        self.unobserved_weight = unobserved_weight
        self.solver = solver
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.bias = bias
        self.implicit = implicit
        self.nonnegative = nonnegative
        self.init_std = init_std
        self.seed = seed
        self.device = device
        self.dtype = dtype
        self.max_memory = max_memory
        self.strict = strict
        self.verbose = verbose
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.n_threads = n_threads

    # ------------------------------------------------------------------ estimator contract
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def set_params(self, **params: Any) -> MatrixFactorization:
        valid = self.get_params()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"invalid parameter {name!r} for MatrixFactorization; valid ones are "
                    f"{sorted(valid)}"
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = type(self)().get_params()
        changed = {k: v for k, v in self.get_params().items() if v != defaults[k]}
        args = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        return f"MatrixFactorization({args})"

    def _resolved_rank(self) -> int:
        """``rank`` as a number: ``'auto'`` is the task's own (:data:`RANK_DEFAULTS`)."""
        if self.rank == "auto":
            return RANK_DEFAULTS.get(self.task, RANK_DEFAULTS["rating"])
        return int(self.rank)

    def _validate_common(self) -> None:
        """The checks both tasks share."""
        if not (self.rank == "auto" or (isinstance(self.rank, int | np.integer)
                                        and not isinstance(self.rank, bool) and self.rank >= 1)):
            raise ValueError(f"rank must be a positive int or 'auto', got {self.rank!r}")
        for flag in ("bias", "implicit", "nonnegative", "strict", "verbose"):
            if not isinstance(getattr(self, flag), bool | np.bool_):
                raise ValueError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.seed is not None and not (
            isinstance(self.seed, int | np.integer) and not isinstance(self.seed, bool)
        ):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")
        if self.seed is not None and not 0 <= int(self.seed) < 2**63:
            # trust: numpy's "expected non-negative integer" did not name seed
            raise ValueError(
                f"seed must be a non-negative int below 2**63 or None, got {self.seed!r}; pass "
                f"a seed such as {abs(int(self.seed)) % 2**63}"
            )
        if not (isinstance(self.beta, int | float | np.floating) and math.isfinite(self.beta)
                and self.beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta!r}")
        if self.patience is not None and self.patience != "auto" and not (
            isinstance(self.patience, int | np.integer) and not isinstance(self.patience, bool)
            and self.patience >= 1
        ):
            raise ValueError(
                f"patience must be a positive int, 'auto' or None, got {self.patience!r}"
            )
        f = self.validation_fraction
        if f is not None and not (isinstance(f, int | float | np.floating)
                                  and not isinstance(f, bool) and 0 < f < 1):
            raise ValueError(
                f"validation_fraction must be a number strictly between 0 and 1 or None, got {f!r}"
            )
        check_n_threads(self.n_threads)

    def _validate(self, sampler: bool = True) -> tuple[str, float, int]:
        self._validate_common()
        # which solver may run this loss and regularizer, and what 'auto' picks (issue 8);
        # sampler: whether the Gibbs sampler may run on this data and these settings (issue 9)
        solver = choose_solver(
            self.solver, self.loss, self.regularization, beta=self.beta,
            dtype=resolve_dtype(self.dtype), batch_size=self.batch_size,
            nonnegative=self.nonnegative, sampler=sampler,
            unobserved_weight=check_unobserved_weight(self.unobserved_weight),
        )
        if self.implicit and self.solver == "auto" and solver == "als":
            solver = "lbfgs"  # issue 9: ALS's row steps cannot carry Y; auto's next choice
        lr = DEFAULT_LR[solver] if self.lr is None else self.lr
        if not (isinstance(lr, int | float | np.floating) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        epochs = DEFAULT_EPOCHS[solver] if self.epochs is None else self.epochs
        if not (isinstance(epochs, int | np.integer) and epochs >= 1):
            raise ValueError(f"epochs must be a positive int, got {self.epochs!r}")
        if self.batch_size is not None and not (
            isinstance(self.batch_size, int | np.integer) and self.batch_size >= 1
        ):
            raise ValueError(f"batch_size must be a positive int or None, got {self.batch_size!r}")
        # first: with implicit=True 'auto' picks lbfgs, whose refusal below would suggest als
        if self.implicit and self.nonnegative:
            raise ValueError(
                "implicit=True does not combine with nonnegative=True: the users' factors "
                "p_u + |N(u)|^-1/2 sum y_j would not stay >= 0; use one of them"
            )
        if self.nonnegative and solver == "lbfgs":
            raise ValueError(
                "nonnegative=True does not combine with solver='lbfgs' (a projection breaks its "
                "curvature pairs); use solver='als', 'adam' or 'gd'"
            )
        if self.implicit and solver == "als":
            raise ValueError(
                "implicit=True does not combine with solver='als': a user's implicit part sums "
                "the y_j of all their items, which ALS's row-by-row Newton steps do not carry; "
                "use solver='gibbs' (the squared loss with 'l2'), 'lbfgs', 'adam' or 'gd'"
            )
        if self.implicit and (solver == "sgd" or self.batch_size is not None):
            raise ValueError(
                f"implicit=True trains on full batches (a user's implicit part sums over all "
                f"their items), got solver={solver!r} with batch_size={self.batch_size!r}; use "
                "batch_size=None with solver 'adam', 'gd' or 'lbfgs'"
            )
        if self.lr is not None and solver in ("als", "gibbs"):
            raise ValueError(
                f"lr={self.lr!r} has no meaning for solver={solver!r} (its steps need no "
                "learning rate); leave lr=None or pick a first-order solver"
            )
        if solver == "gibbs" and (not self.bias or self.nonnegative):
            raise ValueError(
                f"solver='gibbs' samples a model with biases and real-valued factors; got "
                f"bias={self.bias!r}, nonnegative={self.nonnegative!r}: use solver='als'"
            )
        if self.batch_size is not None and solver in ("gd", "lbfgs", "als", "gibbs"):
            raise ValueError(
                f"batch_size={self.batch_size!r} has no meaning for solver={solver!r}, which is "
                "full batch; use solver='adam' or 'sgd' for mini-batches, or batch_size=None"
            )
        if isinstance(self.regularization, str) and self.regularization not in REGULARIZERS \
                and ":" not in self.regularization:
            raise ValueError(
                f"regularization must be one of {sorted(REGULARIZERS)}, a 'module:function' path "
                f"or a callable, got {self.regularization!r}"
            )
        if isinstance(self.loss, str) and self.loss not in LOSSES and ":" not in self.loss:
            get_loss(self.loss)  # trust: names task='ranking' for its pairwise losses
            raise ValueError(
                f"loss must be one of {sorted(LOSSES)}, a 'module:function' path or a callable, "
                f"got {self.loss!r}"
            )
        if not (isinstance(self.init_std, int | float) and self.init_std >= 0):
            raise ValueError(f"init_std must be a number >= 0, got {self.init_std!r}")
        resolve_dtype(self.dtype)
        resolve_device(self.device)
        return solver, float(lr), int(epochs)

    # ------------------------------------------------------------------ fitting
    def _at_default(self, name: str) -> bool:
        """Whether the setting ``name`` is at its constructor default (left as it came)."""
        default = inspect.signature(type(self).__init__).parameters[name].default
        return bool(getattr(self, name) == default)

    def _workspace(self, plan: ShardPlan | None) -> int:
        """``max_memory`` for this process: the machine's, split between the processes torchrun
        started on it (``plan.local_processes``), as they split its cores (issue 11, item 3:
        each process's memory is its share)."""
        if plan is None:
            return int(self.max_memory)
        return max(2**16, int(self.max_memory) // max(1, plan.local_processes))

    def fit(self, X: Any, y: Any = None, *, validation: Any = None,
            plan: ShardPlan | None = None, checkpoint: str | os.PathLike[str] | None = None,
            checkpoint_every: int = 1) -> MatrixFactorization:
        """Fit on ratings: ``X`` a :class:`Ratings` (or any form it is built from: a scipy.sparse
        matrix, a masked or NaN-dense array, a DataFrame with user/item/rating columns), or ``X``
        an ``(n, 2)`` array of (user id, item id) pairs with their ratings in ``y`` (the
        scikit-learn form).

        ``validation`` (the same forms as ``X``, or a tuple ``(pairs, ratings)``) is scored after
        every epoch into ``history_`` by the same rule as :meth:`score` (its RMSE).

        ``plan`` (:mod:`autofact.sharding`) shares the fit between processes: which ratings this
        one holds and how sums are taken; ``None`` is one process.
        :func:`autofact.distributed.fit` passes a :class:`~autofact.sharding.TorchShardPlan`.

        ``checkpoint`` (a folder): write the whole training state there every
        ``checkpoint_every`` epochs, after the last one and on Ctrl-C, and resume from what an
        earlier call left there, refusing one written for other data or settings (see
        :mod:`autofact.checkpoint`). A fit killed and resumed ends as an uninterrupted one.

        Runs with the threads :mod:`autofact.threads` decides (``n_threads``), and puts torch's
        thread count back afterwards.
        """
        self._validate_common()  # rank and n_threads, before they size the threads
        # issue 10: threads by the size of the data; the solver's blocks decide again below
        with use_threads(_n_entries(X, y) * (self._resolved_rank() + 1), self.n_threads):
            return self._fit(X, y, validation=validation, plan=plan, checkpoint=checkpoint,
                             checkpoint_every=checkpoint_every)

    def _fit(self, X: Any, y: Any, *, validation: Any, plan: ShardPlan | None,
             checkpoint: str | os.PathLike[str] | None = None, checkpoint_every: int = 1
             ) -> MatrixFactorization:
        start = time.perf_counter()
        if isinstance(y, Ratings):
            raise TypeError(
                "the second argument of fit is y, the ratings of the (user, item) pairs in X; "
                "pass validation data by name: fit(train, validation=test)"
            )
        if self.task != "rating":
            if plan is not None and plan.world_size > 1:
                raise ValueError(
                    f"task={self.task!r} trains in one process; a plan shared by "
                    f"{plan.world_size} processes is not supported for it: fit without plan="
                )
            if checkpoint is not None:
                raise ValueError(
                    f"checkpoint= is not available for task={self.task!r} yet; fit without it"
                )
            return self._fit_ranking(X, y, validation, start)
        shared = plan is not None and plan.world_size > 1
        # issue 8 (never silently wrong): the sampler draws the regularization strength itself,
        # so 'auto' samples only while beta is left at its default; a beta the user set is
        # honoured (by ALS), never ignored without a word
        # issue 11: a checkpointed fit is the same model as one without (every solver writes one)
        solver, lr, epochs = self._validate(
            sampler=bool(self.bias) and not self.nonnegative and self._at_default("beta"))
        for what in ("loss", "regularization"):
            if isinstance(getattr(self, what), NotLoaded):
                raise ValueError(getattr(self, what).message)
        train = _as_ratings(X, y, "ratings")
        # trust: settings with no effect on a rating fit are no longer ignored without a word:
        # alpha raises, as unobserved_weight does for the ranking task; patience warns (one
        # settings dict is used for fits with and without validation data, e.g.
        # tests/test_distributed_als.py, where a refusal would stop the fit)
        if self.alpha != 0.5:
            raise ValueError(
                f"alpha={self.alpha!r} is the ranking task's confidence slope (1 + alpha * "
                "rating) and changes nothing in a rating model: pass task='ranking', or leave "
                "alpha at its default 0.5"
            )
        if validation is None and self.validation_fraction is None and _is_count(self.patience):
            warnings.warn(
                f"patience={self.patience!r} stops on the validation RMSE, and this fit has no "
                "validation data, so every epoch runs: pass validation= (or "
                "validation_fraction=), or leave patience at its default 'auto' (None: no early "
                "stopping)",
                UserWarning,
                stacklevel=3,
            )
        if self.validation_fraction is not None:
            if validation is not None:
                raise ValueError(
                    f"validation= and validation_fraction={self.validation_fraction!r} both give "
                    "validation data; pass one (validation_fraction=None to use validation=)"
                )
            from .evaluation import random_split

            # never silently wrong: unseeded, every process of a shared fit (local=False: each
            # passes all the ratings) must hold out the same ratings, so rank 0's seed is used
            split_seed = self.seed if plan is None else plan.common_seed(self.seed)
            train, validation = random_split(train, self.validation_fraction, seed=split_seed)
        loss_fn = get_loss(self.loss)
        check_targets(loss_fn, train.values)
        if solver == "gibbs" and train.weights is not None:
            if self.solver == "gibbs":
                raise ValueError(
                    "solver='gibbs' samples unweighted ratings; these ratings have weights: "
                    "use solver='als' (or drop the weights)"
                )
            solver, lr, epochs = self._validate(sampler=False)  # auto: the next choice
        # trust: a rating whose square overflows the fit's numbers ended in a LinAlgError (the
        # sampler, whose ratings are float32 whatever the dtype) or a message blaming the loss
        _check_magnitude(train.values, torch.float32 if solver == "gibbs"
                         else resolve_dtype(self.dtype), "ratings", plan if shared else None)
        if solver == "gibbs":
            return self._fit_gibbs(train, validation, epochs, loss_fn, start,
                                   plan if shared else None, checkpoint, checkpoint_every,
                                   workspace=self._workspace(plan))
        obj = Objective(
            train, loss=loss_fn, regularization=self.regularization, beta=self.beta,
            bias=self.bias, device=self.device, dtype=self.dtype,
            max_memory=self._workspace(plan), plan=plan,
            unobserved_weight=self.unobserved_weight, implicit=bool(self.implicit),
        )
        params = obj.init_params(self._resolved_rank(), seed=self.seed, init_std=self.init_std)
        # issue 11: shared ALS partitions the users: each process keeps only its users' rows
        # (and biases) while it trains, gathered onto every process after the fit
        # (and shared mini-batches, issue 11, item 2: each process's batches are its users')
        minibatch = solver == "sgd" or (solver == "adam" and self.batch_size is not None)
        if shared and minibatch and checkpoint is not None:
            raise ValueError(
                f"checkpoint= is not available for mini-batches shared by processes "
                f"(solver={solver!r}, batch_size={self.batch_size!r}) yet; fit without it, or "
                "use batch_size=None or solver='als'"
            )
        owned = obj.plan.owned_rows(obj.users, obj.shape[0]) \
            if shared and (solver == "als" or minibatch) else None
        gathered = [owned is None]
        if owned is not None:
            own_idx = torch.nonzero(owned).flatten()
            for k in ("P", "bu"):
                if k in params:
                    params[k] = params[k].detach()[own_idx].requires_grad_()

        def gather() -> None:
            """Every process's users' rows into the whole tables, on every process."""
            assert owned is not None
            whole = {}
            for k in ("P", "bu"):
                if k in params:
                    t = params[k].detach()
                    whole[k] = t.new_zeros((obj.shape[0], *t.shape[1:]))
                    whole[k][own_idx] = t
                    # issue 11, item 3: the compact table goes before the gather, not after
                    # it (its rows are in the whole one: the processes' peak was there)
                    params[k] = whole[k]
                    del t
            obj.plan.gather_rows(list(whole.values()), owned)
            params.update({k: t.requires_grad_() for k, t in whole.items()})
            gathered[0] = True
        fallback = obj.mu if self.bias else obj.best_constant()
        # clipped or not by the loss as named (what a saved model knows), not as imported
        index = ModelIndex.from_ratings(train, fallback=fallback, clip=clips_to_range(self.loss),
                                        inverse_link=inverse_link(loss_fn), plan=obj.plan)
        val = None
        if validation is not None:
            vx, vy = validation if isinstance(validation, tuple) else (validation, None)
            v = _as_ratings(vx, vy, "validation")
            check_targets(loss_fn, v.values, "validation ratings")
            _check_magnitude(v.values, resolve_dtype(self.dtype), "validation ratings", None)
            val = _Validation(index, v, owned, obj.plan)
        ckpt = resumed = None
        if checkpoint is not None:  # issue 11: find (and check) the state to resume from
            from . import checkpoint as ck

            ckpt = ck.Checkpointer(
                checkpoint, checkpoint_every, plan=obj.plan, solver=solver,
                settings=ck.settings_of(self.get_params()),
                data=ck.data_fingerprint(train, None if val is None else v))
            resumed = ckpt.resume()
            if resumed is not None:  # trust: its arrays fit this model (whole tables)
                ck.check_shapes(resumed, str(ckpt.path), {
                    k: (obj.shape[0], *p.shape[1:]) if owned is not None and k in ("P", "bu")
                    else tuple(p.shape) for k, p in params.items()})
            if resumed is not None and resumed.epoch > epochs:
                raise ValueError(
                    f"checkpoint {str(ckpt.path)!r} is at epoch {resumed.epoch}, beyond "
                    f"epochs={epochs}; ask for at least {resumed.epoch} epochs to resume, or "
                    "pass another checkpoint folder to start over"
                )
        # all checks passed: only now replace what an earlier fit left
        self.index_ = index
        self.global_mean_ = obj.mu
        self.solver_ = solver
        self._params = params
        self.history_: list[dict[str, Any]] = []
        self.best_epoch_: int | None = None
        bar = _progress(epochs) if self.verbose else None
        stopper = self._early_stopping(epochs) if val is not None else None
        best: int | None = None  # the epoch whose parameters are restored at the end
        stopped = [resumed is not None and resumed.finished]  # early stopping said stop
        def own_rows(name: str, table: np.ndarray) -> torch.Tensor:
            """A checkpoint's whole table as this process holds it (shared ALS: its users' rows
            of ``P`` and ``bu``)."""
            t = torch.from_numpy(table)
            return t[own_idx.cpu()] if owned is not None and name in ("P", "bu") else t

        if resumed is not None:
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(own_rows(k, resumed.params[k]))
            self.history_ = [{k: v for k, v in h.items() if k != "kept"}
                             for h in resumed.history]
            start -= float(self.history_[-1]["time"]) if self.history_ else 0.0
            if stopper is not None and resumed.best_params is not None:
                stopper.best, stopper.best_epoch = float(resumed.best or math.inf), \
                    resumed.best_epoch
                stopper.snapshot = {k: own_rows(k, a).to(params[k]) for k, a in
                                    resumed.best_params.items()}
            if bar is not None:
                bar.update(resumed.epoch)

        def on_epoch(epoch: int, value: float, seconds: float) -> bool:
            rec: dict[str, Any] = {"epoch": epoch, "loss": value, "time": seconds}
            self.history_.append(rec)  # first: Ctrl-C from here on keeps this epoch (issue 8)
            stop = False
            if val is not None:
                rec["val_rmse"] = val.rmse(obj.effective(params), self.global_mean_)
            if stopper is not None:
                stop = stopper.update(epoch, rec["val_rmse"], params)
                stopped[0] = stop
            if bar is not None:
                bar.set_postfix({k: f"{v:.4g}" for k, v in rec.items() if k in ("loss", "val_rmse")})
                bar.update(1)
            return stop

        def on_state(epoch: int, state: Any, last: bool) -> None:
            from .checkpoint import gather_to_main, snapshot

            assert ckpt is not None
            has_best = stopper is not None and stopper.snapshot is not None
            rows = None if owned is None else own_idx.cpu().numpy()

            def whole(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
                """The tables as one process holds them: a shared ALS's users' rows of ``P``
                and ``bu`` gathered from every process onto the one that writes (issue 11)."""
                arrays = {k: v.detach().cpu().numpy().copy() for k, v in tensors.items()}
                mine: dict[str, np.ndarray] = {
                    k: arrays.pop(k) for k in ("P", "bu") if k in arrays and owned is not None}
                return {**arrays, **gather_to_main(obj.plan, mine, rows, obj.shape[0])}

            def make() -> Any:
                return snapshot(
                    epoch, state(), whole(params), finished=stopped[0], solver=solver,
                    settings=ckpt.settings, data=ckpt.data,
                    history=[dict(h) for h in self.history_],
                    best=stopper.best if has_best else None,  # type: ignore[union-attr]
                    best_epoch=stopper.best_epoch if has_best else None,  # type: ignore
                    best_params=whole(stopper.snapshot) if has_best else None,  # type: ignore
                )

            ckpt.epoch_end(epoch, make, last, collective=owned is not None)

        # issue 10: threads by the size of one block's operations, set for the fit only
        work = min(obj.nnz, obj.max_nnz) * (self._resolved_rank() + 1)
        try:
            with use_threads(work, self.n_threads):
                self.n_epochs_ = fit_params(
                    obj, params, solver=solver, batch_size=self.batch_size, lr=lr,
                    epochs=resumed.epoch if resumed is not None and stopped[0] else epochs,
                    seed=self.seed, nonnegative=self.nonnegative, on_epoch=on_epoch,
                    start_time=start, on_state=None if ckpt is None else on_state,
                    resume=None if resumed is None else resumed.solver_state(),
                )
        except KeyboardInterrupt:
            # issue 8: fit_params left the parameters of the last finished epoch; keep a usable
            # model of that epoch (exported below) and let the interrupt go on; issue 11: its
            # state goes to the checkpoint first
            self.n_epochs_ = len(self.history_)
            if ckpt is not None:
                ckpt.interrupted()
            raise
        except FitError:
            if owned is not None:  # every process raises it (from the summed objective)
                gather()
            raise
        else:
            if stopper is not None and stopper.best_epoch is not None:
                best = stopper.best_epoch
                stopper.restore(params)  # the best validation epoch's parameters (issue 9)
            if owned is not None:  # every process's users' rows onto every process, once
                # issue 11, item 3: the solver's freed workspace back to the system first (the
                # gather's tables came on top of it: every process's peak)
                release_freed_memory()
                gather()
        finally:
            if bar is not None:
                bar.close()
            # kept: the best validation epoch, else the last finished one (also after Ctrl-C)
            if best is None and self.history_:
                best = int(self.history_[-1]["epoch"])
            self.best_epoch_ = best
            for rec in self.history_:
                if rec["epoch"] == best:
                    rec["kept"] = True
            if gathered[0]:
                self._export(obj.effective(params))
            else:  # a shared ALS stopped before its users' rows were gathered: no model
                for name in ("user_factors_", "item_factors_", "user_bias_", "item_bias_"):
                    self.__dict__.pop(name, None)
        return self

    def _early_stopping(self, epochs: int) -> _EarlyStopping | None:
        """The early-stopping rule for a fit of ``epochs`` epochs (``None``: never stop)."""
        if self.patience is None:
            return None
        patience = max(5, epochs // 10) if self.patience == "auto" else int(self.patience)
        return _EarlyStopping(patience)

    def _fit_gibbs(self, train: Ratings, validation: Any, sweeps: int, loss_fn: Loss,
                   start: float, plan: ShardPlan | None = None,
                   checkpoint: str | os.PathLike[str] | None = None, checkpoint_every: int = 1,
                   workspace: int | None = None) -> MatrixFactorization:
        """``fit`` for ``solver='gibbs'`` (issue 9): Bayesian MF by Gibbs sampling
        (:mod:`autofact.solvers.gibbs`); the posterior means become the factors and biases, so
        everything a fitted model does works as for any other solver. ``beta`` is not used: the
        regularization strength is sampled. With validation data each sweep's record holds the
        validation RMSE of the running posterior means, and ``patience`` stops sampling when it
        has not improved for that many sweeps (the running means are kept: they average every
        sweep after burn-in). With ``epochs=None`` the squared loss's chain also stops once more
        sweeps would not change its predictions (:mod:`autofact.solvers.budget`); the last
        record of ``history_`` says why it stopped (``'stopped'``).

        ``plan`` (shared by several processes, issue 11): the chain is sharded by user
        (:func:`~autofact.solvers.gibbs.gibbs_mf`), the budget's ``D^2`` and the validation
        RMSE are taken over every process (validation gathers every user's running means each
        sweep), and every process ends with the whole model and the same ``history_``.

        ``checkpoint`` (issue 11): the chain's whole state after every ``checkpoint_every``
        sweeps, the last one and Ctrl-C (one process), resumed to the same draws
        (:class:`_ChainCheckpoint`)."""
        from .solvers.budget import SweepBudget
        from .solvers.gibbs import gibbs_mf
        from .solvers.laplace import DEFAULT_SWEEPS as LAPLACE_SWEEPS
        from .solvers.laplace import best_constant, laplace_mf

        # issue 9: the squared loss is sampled exactly (gibbs), any other twice-differentiable
        # loss by Metropolis-Hastings with Laplace proposals (autofact.solvers.laplace)
        exact = loss_fn is LOSSES["squared"]
        if checkpoint is not None and not exact:
            raise ValueError(
                f"solver='gibbs' with loss={self.loss!r} samples by Laplace-MH, which keeps no "
                "checkpoint yet; fit without checkpoint=, or use loss='squared' (the exact "
                "sampler) or solver='als'"
            )
        if plan is not None:  # issue 11: the sharded chain is the squared loss's, explicit only
            if not exact:
                raise ValueError(
                    f"solver='gibbs' with loss={self.loss!r} samples by Laplace-MH, which runs "
                    f"in one process; got a plan shared by {plan.world_size} processes: use "
                    "loss='squared', or solver='als'"
                )
            if self.implicit:
                raise ValueError(
                    f"solver='gibbs' with implicit=True samples in one process (its Y draw "
                    f"sums over every user); got a plan shared by {plan.world_size} "
                    "processes: fit without plan=, or with implicit=False"
                )
        # issue 10: the exact sampler starts from a truncated SVD of the centred ratings; an
        # init_std the user set is honoured (issue 8: never ignored without a word): the random
        # start N(0, init_std^2) it sets
        sample: Any = functools.partial(
            gibbs_mf, init="spectral" if self._at_default("init_std") else "random") if exact \
            else functools.partial(laplace_mf, loss=loss_fn)
        if not exact and self.epochs is None:  # the sampler's own default, as validated
            sweeps = LAPLACE_SWEEPS
        if plan is not None and plan.local:  # each process holds its own ratings
            n_all = plan.all_sum_float(float(len(train)))
            mu = plan.all_sum_float(float(np.sum(train.values, dtype=np.float64))) / n_all
        else:
            mu = (float(np.mean(train.values, dtype=np.float64)) if exact
                  else best_constant(loss_fn, train.values))
        mine = train if plan is None else plan.share(train)  # every rating of its users
        # issue 11 (review): a shared chain is one random stream drawn alike on every process
        # (and a checkpoint keeps rank 0's state for all): unseeded, rank 0's fresh seed
        # everywhere (each process drew its own: different item rows)
        seed = self.seed if plan is None else plan.common_seed(self.seed)

        def make_index() -> ModelIndex:
            return ModelIndex.from_ratings(train, fallback=mu, clip=clips_to_range(self.loss),
                                           inverse_link=inverse_link(loss_fn), plan=plan)

        # the index (its seen-items CSR: 4 bytes a rating) is built after sampling unless
        # validation needs it, so it does not coexist with the sampler's two views of the data
        built: list[ModelIndex | None] = [make_index() if validation is not None else None]
        val = None
        if validation is not None:
            index = built[0]
            assert index is not None
            vx, vy = validation if isinstance(validation, tuple) else (validation, None)
            v = _as_ratings(vx, vy, "validation")
            check_targets(loss_fn, v.values, "validation ratings")
            _check_magnitude(v.values, torch.float32, "validation ratings", None)
            val = _Validation(index, v)
        # (after the validation data is checked, as in the other solvers' fit)
        m, n = train.shape
        k = self._resolved_rank()
        if k > min(m, n):  # issue 8: as for the other solvers
            warnings.warn(
                f"rank={k} exceeds min(users, items) = min({m}, {n}) = {min(m, n)}: a "
                "rank above it adds nothing the model can express and only costs time and "
                f"memory; gibbs draws a {k}x{k} system for every row (cost ~ "
                f"rank^3 per row); try rank <= {min(m, n)}",
                UserWarning,
                stacklevel=3,
            )
        dtype, device = resolve_dtype(self.dtype), resolve_device(self.device)
        history: list[dict[str, Any]] = []
        stopper = self._early_stopping(sweeps) if val is not None else None
        bar = _progress(sweeps) if self.verbose else None
        # issue 9, item 4: the default sweep count adapts to the data (large data: far fewer)
        burn_in = sweeps // 10
        budget = None
        if exact and self.epochs is None:
            held = sample_size = None
            if plan is not None and plan.local:  # its share of the 2000 pairs, from its ratings
                sample_size = max(1, round(2000 * len(train) / n_all))
            elif plan is not None:  # the one-process sample, scored where each user is held
                held = np.zeros(m, dtype=bool)
                held[mine.users] = True
            budget = SweepBudget(train.users, train.items, burn_in=burn_in, max_sweeps=sweeps,
                                 seed=seed, plan=plan, held=held,
                                 **({} if sample_size is None else {"sample": sample_size}))

        chain = resumed = None
        if checkpoint is not None:  # issue 11: find (and check) the chain to go on from
            from . import checkpoint as ck

            chain = _ChainCheckpoint(
                ck.Checkpointer(checkpoint, checkpoint_every, plan=plan or ShardPlan(),
                                solver="gibbs", settings=ck.settings_of(self.get_params()),
                                data=ck.data_fingerprint(train, None if val is None else v)),
                plan, mine, m, sweeps, burn_in, budget, stopper,
                shape=(m, n, k, bool(self.implicit)))
            resumed = chain.resume()
            if resumed is not None:
                history[:] = [{k: v for k, v in h.items() if k != "kept"}
                              for h in chain.history]
                start -= float(history[-1]["time"]) if history else 0.0
                if bar is not None:
                    bar.update(resumed.sweep)
        # a finished chain's checkpoint: its posterior means, no sweep drawn
        finished = chain is not None and chain.finished and resumed is not None
        length = resumed.sweep if finished and resumed is not None else sweeps

        def params_of(res: Any) -> dict[str, torch.Tensor]:
            return {k: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)
                    for k, a in (("P", res.P), ("Q", res.Q), ("bu", res.bu), ("bi", res.bi))}

        # issue 8: the posterior means after the last finished sweep, kept for Ctrl-C
        last: list[Any] = [0, None]

        def on_sweep(sweep: int, rmse: float, means: Any = None) -> bool:
            now = means() if means is not None else None
            # kept for Ctrl-C in one process only (a shared chain keeps none: issue 11, item 3,
            # a copy of the means less on each process)
            last[:] = [sweep, now if plan is None else None]
            rec: dict[str, Any] = {"epoch": sweep, "loss": rmse,
                                   "time": time.perf_counter() - start}
            history.append(rec)
            stop = False
            if val is not None and now is not None:
                whole = now if plan is None else means(True)  # every user's rows
                rec["val_rmse"] = val.rmse(params_of(whole), mu)
                if stopper is not None and stopper.update(sweep, rec["val_rmse"], {}):
                    stop = True
                    p = stopper.patience
                    rec["stopped"] = (f"the validation RMSE has not improved for {p} "
                                      f"sweep{'' if p == 1 else 's'}")
            if budget is not None and now is not None:
                why = budget.update(sweep, now.predict, rmse)
                if budget.gain is not None:
                    rec["gain"] = budget.gain
                if why is not None and not stop:
                    stop = True
                    rec["stopped"] = why
            if bar is not None:
                bar.set_postfix({k: f"{v:.4g}" for k, v in rec.items() if k in ("loss", "val_rmse")})
                bar.update(1)
            return stop

        def keep(res: Any, done: int, why: str) -> None:
            index = built[0] if built[0] is not None else make_index()
            built[0] = index
            self.index_ = index
            self.global_mean_ = res.mu
            self.solver_ = "gibbs"
            self._params = params_of(res)
            y = getattr(res, "Y", None)  # gibbs_mf with implicit=True only
            if y is not None:
                self._params["Y"] = torch.as_tensor(np.ascontiguousarray(y), dtype=dtype,
                                                     device=device)
            self.history_ = [h for h in history if h["epoch"] <= done]
            self.n_epochs_ = len(self.history_)
            self.best_epoch_ = len(self.history_)
            if self.history_:
                self.history_[-1]["kept"] = True
                self.history_[-1].setdefault("stopped", why)
            self._export()

        saving: dict[str, Any] = {} if chain is None else {
            "on_state": functools.partial(chain.on_state, history), "resume": resumed}
        try:
            res = sample(mine, rank=self._resolved_rank(), sweeps=length,
                         burn_in=min(burn_in, length - 1), seed=seed,
                         implicit=bool(self.implicit),
                         init_std=float(self.init_std), n_threads=self.n_threads,
                         callback=on_sweep, **({} if plan is None else {"plan": plan}),
                         # issue 11, item 3: the exact sampler's row blocks within max_memory
                         **({"max_memory": workspace or self.max_memory} if exact else {}),
                         **saving)
        except KeyboardInterrupt:
            # issue 8: Ctrl-C keeps a usable model, the posterior means of the last finished
            # sweep (as the other solvers keep their last finished epoch), and goes on; a
            # shared chain's hold only this process's users: none is kept; issue 11: the
            # last finished sweep's chain goes to the checkpoint first (one process)
            if chain is not None:
                chain.checkpointer.interrupted()
            if last[1] is not None and plan is None:
                keep(last[1], int(last[0]), "interrupted (Ctrl-C)")
            raise
        finally:
            if bar is not None:
                bar.close()
        keep(res, len(history), f"all {sweeps} sweeps" + (
            " (the most epochs=None runs; the chain had not settled)" if budget is not None else ""))
        return self

    def _fit_ranking(self, X: Any, y: Any, validation: Any, start: float
                     ) -> MatrixFactorization:
        """``fit`` for ``task='ranking'`` (:func:`autofact.ranking.fit_ranking`)."""
        from .ranking import PAIRWISE_LOSSES, fit_ranking

        if self.task != "ranking":
            raise ValueError(f"task must be 'rating' or 'ranking', got {self.task!r}")
        self._validate_common()
        if not (isinstance(self.alpha, int | float | np.floating) and math.isfinite(self.alpha)
                and self.alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha!r}")
        pairwise = isinstance(self.loss, str) and self.loss in PAIRWISE_LOSSES
        if not (self.loss == "squared" or pairwise):
            raise ValueError(
                f"task='ranking' takes loss='squared' (implicit-feedback ALS, the default), "
                f"'bpr' or 'warp', got loss={_describe(self.loss)}; for a pairwise loss of your "
                "own call autofact.ranking.fit_pairwise"
            )
        # issue 12: 'auto' takes three conjugate-gradient steps a row (as implicit does): the same
        # NDCG@10 as the exact solve on ml-100k and ml-latest-small, 3.6-5x faster there and
        # about implicit's epoch time at 10M interactions; 'als' solves each row exactly
        solver = "adam" if pairwise else "als" if self.solver == "als" else "cg"
        if self.solver not in ("auto", solver):
            choices = "'auto'" if pairwise else "'auto'/'cg' or 'als' (exact)"
            raise ValueError(
                f"task='ranking' with loss={self.loss!r} is solved by {solver!r}, got "
                f"solver={self.solver!r}; use solver={choices}"
            )
        if self.regularization != "l2":
            raise ValueError(
                f"task='ranking' takes regularization='l2' (strength beta), got "
                f"{_describe(self.regularization)}"
            )
        if self.nonnegative:
            raise ValueError("nonnegative=True is not available for task='ranking'; leave it False")
        if self.implicit:
            raise ValueError(
                "implicit=True (SVD++'s implicit term) is for task='rating'; task='ranking' "
                "learns from which items each user chose already: leave implicit=False"
            )
        if self.unobserved_weight != 0:
            raise ValueError(
                f"unobserved_weight={self.unobserved_weight!r} is for task='rating' (a rating "
                "model that also learns from the unrated entries); task='ranking' has that term "
                "built in (weight 0.5): leave unobserved_weight=0"
            )
        if self.epochs is not None and not (isinstance(self.epochs, int | np.integer)
                                            and not isinstance(self.epochs, bool)
                                            and self.epochs >= 1):
            raise ValueError(f"epochs must be a positive int or None, got {self.epochs!r}")
        if _is_count(self.patience):  # trust: as for validation below
            raise ValueError(
                f"patience={self.patience!r} stops on a validation RMSE, which task='ranking' "
                "has none of: leave patience at its default 'auto'"
            )
        if validation is not None or self.validation_fraction is not None:
            raise ValueError(
                "validation has no meaning for task='ranking' (it is scored by RMSE); leave "
                "validation and validation_fraction unset and score the fitted model with "
                "autofact.evaluation.evaluate(model, test) instead"
            )
        train = _as_ratings(X, y, "ratings")
        index = ModelIndex.from_ratings(train, fallback=0.0, clip=False)
        self.history_ = []

        def on_epoch(epoch: int, value: float) -> None:
            self.history_.append({"epoch": epoch + 1, "loss": value,
                                  "time": time.perf_counter() - start})

        if not pairwise:  # trust: ratings of 1e30 gave NaN factors without a word
            _check_magnitude(train.values, resolve_dtype(self.dtype), "ratings", None)
        P, Q, b = fit_ranking(
            train, self._resolved_rank(), loss=self.loss, alpha=float(self.alpha),
            beta=float(self.beta), epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
            init_std=float(self.init_std), seed=self.seed, dtype=resolve_dtype(self.dtype),
            device=resolve_device(self.device), cg_steps=3 if solver == "cg" else 0,
            callback=on_epoch,
        )
        for name, t in (("user factors", P), ("item factors", Q), ("item biases", b)):
            if t is not None and not bool(torch.isfinite(t).all()):  # trust: never NaN silently
                raise FitError(
                    f"the ranking fit's {name} turned non-finite (NaN or infinity); rescale the "
                    f"ratings (their largest is {float(np.max(np.abs(train.values))):g}), lower "
                    f"alpha (now {self.alpha!r}) or beta, or pass dtype='float64'"
                )
        self.index_ = index
        self.global_mean_ = 0.0
        self.solver_ = solver
        self.n_epochs_ = len(self.history_)
        self.user_factors_ = P.cpu().numpy()
        self.item_factors_ = Q.cpu().numpy()
        self.user_bias_ = np.zeros(len(self.user_factors_), self.user_factors_.dtype)
        self.item_bias_ = (b.cpu().numpy() if b is not None
                           else np.zeros(len(self.item_factors_), self.item_factors_.dtype))
        self.implicit_factors_: np.ndarray | None = None
        return self

    def _export(self, effective: dict[str, torch.Tensor] | None = None) -> None:
        """The fitted attributes from ``self._params``; ``effective``: the parameters as the
        predictions use them when they differ (``implicit=True``: ``P + X Y``, from
        :meth:`Objective.effective`)."""
        y = self._params.get("Y")
        self.implicit_factors_ = None if y is None else y.detach().cpu().numpy()
        p = self._params if effective is None else effective
        self.user_factors_ = p["P"].detach().cpu().numpy()
        self.item_factors_ = p["Q"].detach().cpu().numpy()
        if self.bias:
            self.user_bias_ = p["bu"].detach().cpu().numpy()
            self.item_bias_ = p["bi"].detach().cpu().numpy()
        else:
            self.user_bias_ = np.zeros(len(self.user_factors_), self.user_factors_.dtype)
            self.item_bias_ = np.zeros(len(self.item_factors_), self.item_factors_.dtype)

    # ------------------------------------------------------------------ prediction
    def _check_fitted(self) -> None:
        if not hasattr(self, "user_factors_") or not hasattr(self, "index_"):
            raise RuntimeError(
                "this MatrixFactorization is not fitted yet; call fit(ratings) first"
            )

    @property
    def rank_(self) -> int:
        """The number of latent factors of the fitted model (``rank``, ``'auto'`` resolved)."""
        self._check_fitted()
        return int(self.user_factors_.shape[1])

    @property
    def user_ids_(self) -> np.ndarray:
        """The user ids, in the order of the rows of ``user_factors_`` (``index_.user_ids``)."""
        return self.index_.user_ids

    @property
    def item_ids_(self) -> np.ndarray:
        """The item ids, in the order of the rows of ``item_factors_`` (``index_.item_ids``)."""
        return self.index_.item_ids

    @property
    def rating_range_(self) -> tuple[float, float]:
        """``(min, max)`` of the training ratings (``index_.rating_range``)."""
        return self.index_.rating_range

    @property
    def fallback_mean_(self) -> float:
        """The raw score of a pair whose user and item are both unknown (``index_.fallback``)."""
        return self.index_.fallback

    def _factors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        return (self.user_factors_, self.item_factors_, self.user_bias_, self.item_bias_,
                float(self.global_mean_))

    def predict_indices(self, users: Any, items: Any) -> np.ndarray:
        """Raw scores (the link scale) for 0-based index arrays: no id lookup, no fallback, no
        inverse link, no clipping."""
        self._check_fitted()
        u = np.asarray(users, dtype=np.int64)
        i = np.asarray(items, dtype=np.int64)
        for what, idx, size in (("user", u, len(self.user_factors_)),
                                ("item", i, len(self.item_factors_))):
            bad = (idx < 0) | (idx >= size)
            if bad.any():
                raise ValueError(
                    f"{what} index {int(idx[np.flatnonzero(bad)[0]])} is out of range: expected "
                    f"0 <= index < {size} (use predict() for the user's own ids)"
                )
        return self.index_.link_scores(u, i, *self._factors())

    def _scores(self, u: np.ndarray, i: np.ndarray, kind: str = "response",
                warn: bool = True) -> np.ndarray:
        """Scores of index pairs, ``-1`` marking an unknown user or item: the index's one rule,
        then the mean response unless ``kind='link'``."""
        if kind not in _KINDS:
            raise ValueError(
                f"kind must be 'response' (the predicted rating, rate or probability) or 'link' "
                f"(the raw score), got {kind!r}"
            )
        out = self.index_.link_scores(u, i, *self._factors())
        unknown = int(np.count_nonzero((u < 0) | (i < 0)))
        if unknown and warn:
            warnings.warn(
                f"{unknown} of {len(u)} pairs have a user or item that is not in the training "
                "data; they are predicted as the average known item (or user) for the known "
                "side, and from the global mean when both are unknown (pass strict=True to raise "
                "instead)",
                UserWarning,
                stacklevel=3,
            )
        return out if kind == "link" else self.index_.response(out)

    def predict(self, users: Any, items: Any, *, kind: str = "response") -> np.ndarray:
        """Predictions for pairs ``(users[k], items[k])`` given in the user's own ids.

        ``kind='response'`` (the default) gives the mean response: the rating (clipped to the
        training ratings' range) for the regression losses, the rate for ``poisson``, the
        probability for ``logistic`` (see the class docstring); ``kind='link'`` the raw score
        ``mu + b_u + b_i + p_u . q_i``. A ``task='ranking'`` model gives its preference score
        ``p_u . q_i`` (plus ``b_i`` for ``bpr``/``warp``) for both kinds, never clipped: higher
        means more likely to be chosen, not a rating.

        A pair whose user (or item) was not in the training data is scored as the average known
        user (item): the known side's mean score, ``mu + b_i + mean(b^u) + mean(P) . q_i``; a pair
        with neither known gets the global mean (:meth:`ModelIndex.link_scores`, the library's
        one rule). They are counted in one warning; with ``strict=True`` it raises
        :class:`~autofact.UnknownIdError` instead.
        """
        self._check_fitted()
        u = self.index_.user_index(users, strict=self.strict)
        i = self.index_.item_index(items, strict=self.strict)
        if len(u) != len(i):
            raise ValueError(
                f"users and items must have the same length, got {len(u)} and {len(i)}"
            )
        return self._scores(u, i, kind)

    def user_index(self, ids: Any, *, strict: bool = True) -> np.ndarray:
        """0-based indices of user ids (-1 for unknown when ``strict=False``).

        A user in the id map with no training rating (possible when the ratings keep a larger
        shape, as the splits do) is unknown too.
        """
        self._check_fitted()
        return self.index_.user_index(ids, strict=strict)

    def item_index(self, ids: Any, *, strict: bool = True) -> np.ndarray:
        """0-based indices of item ids (-1 for unknown when ``strict=False``; see user_index)."""
        self._check_fitted()
        return self.index_.item_index(ids, strict=strict)

    # ---- recommendation (recommend.py) ----
    def recommend(
        self, user: Any, n: int = 10, *, exclude_seen: bool = True, fallback: bool = False
    ) -> Recommendations:
        """Top ``n`` items for a user id or FoldedUser (:func:`autofact.recommend.recommend`)."""
        from .recommend import recommend

        return recommend(self, user, n, exclude_seen=exclude_seen, fallback=fallback)

    def recommend_batch(
        self, users: Any, n: int = 10, *, exclude_seen: bool = True, fallback: bool = False
    ) -> list[Recommendations]:
        """:meth:`recommend` for many user ids (:func:`autofact.recommend.recommend_batch`)."""
        from .recommend import recommend_batch

        return recommend_batch(self, users, n, exclude_seen=exclude_seen, fallback=fallback)

    def similar_items(self, item: Any, n: int = 10) -> SimilarItems:
        """Most similar items by factor cosine (:func:`autofact.recommend.similar_items`)."""
        from .recommend import similar_items

        return similar_items(self, item, n)

    def partial_fit(self, X: Any, y: Any = None) -> MatrixFactorization:
        """Update a ``task='ranking'`` model with new interactions, re-solving only the rows
        they touch (issue 12); returns ``self``.

        ``X`` (and ``y``, as in :meth:`fit`) holds the **complete** interactions of every user
        it mentions, as implicit's ``partial_fit_users`` takes them: a known user's training
        interactions are replaced by these, a new user (or item) id is appended. Each touched
        user's row is the exact implicit-ALS solve against the item factors (the all-unobserved
        term included), new items are solved against the users who have them, then the touched
        users once more against those; every other row stays as it is (so the result is close
        to, not equal to, a refit). ``user_ids_``, ``item_ids_`` and the seen items follow.
        """
        import pandas as pd
        import scipy.sparse as sp

        from .ranking import confidence, solve_rows

        self._check_fitted()
        if self.task != "ranking" or self.loss != "squared":
            raise ValueError(
                f"partial_fit re-solves implicit-feedback ALS rows, so it needs task='ranking' "
                f"with loss='squared', got task={self.task!r}, loss={_describe(self.loss)}; "
                "refit, or fold_in a new user"
            )
        new = _as_ratings(X, y, "ratings")
        confidence(new.values, float(self.alpha))  # values >= 0, before anything changes
        index = self.index_
        # issue 11: the updated pattern would drop other processes' users' seen items
        index.require_seen(action="update the model with partial_fit")
        uid, iid = new.user_ids[new.users], new.item_ids[new.items]

        def rows_of(ids: np.ndarray, known: np.ndarray, what: str
                    ) -> tuple[np.ndarray, np.ndarray]:
            # trust: ids of the other kind (7 for a model's '7') are the model's by their text,
            # as predict matches them; new ids join the map in the map's kind
            ids = index.as_kind_of(ids, what)
            row = np.asarray(pd.Index(known).get_indexer(ids), dtype=np.int64)
            fresh = np.asarray(pd.unique(ids[row < 0]))
            row[row < 0] = len(known) + np.asarray(pd.Index(fresh).get_indexer(ids[row < 0]))
            return row, fresh

        urow, new_users = rows_of(uid, index.user_ids, "user")
        irow, new_items = rows_of(iid, index.item_ids, "item")
        m, n = index.n_users + len(new_users), index.n_items + len(new_items)
        k = self.user_factors_.shape[1]
        dt = self.user_factors_.dtype
        P = np.vstack([self.user_factors_, np.zeros((len(new_users), k), dt)])
        Q = np.vstack([self.item_factors_, np.zeros((len(new_items), k), dt)])
        opts = {"alpha": float(self.alpha), "beta": float(self.beta)}

        def csr(rows: np.ndarray, cols: np.ndarray, size: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            touched, local = np.unique(rows, return_inverse=True)
            order = np.lexsort((cols, local))
            indptr = np.zeros(len(touched) + 1, dtype=np.int64)
            np.cumsum(np.bincount(local, minlength=len(touched)), out=indptr[1:])
            return touched, indptr, cols[order], new.values[order]

        users, u_ptr, u_cols, u_vals = csr(urow, irow, m)
        P[users] = solve_rows(Q, u_ptr, u_cols, u_vals, **opts)
        if len(new_items):
            fresh = irow >= index.n_items
            items, i_ptr, i_cols, i_vals = csr(irow[fresh], urow[fresh], n)
            Q[items] = solve_rows(P, i_ptr, i_cols, i_vals, **opts)
            P[users] = solve_rows(Q, u_ptr, u_cols, u_vals, **opts)
        old = index.seen.tocoo()
        keep = ~np.isin(old.row, users)
        seen = sp.csr_matrix(
            (np.ones(int(keep.sum()) + len(urow), dtype=bool),
             (np.concatenate([old.row[keep], urow]), np.concatenate([old.col[keep], irow]))),
            shape=(m, n))
        seen.sort_indices()
        lo, hi = index.rating_range

        def extend(ids: np.ndarray, fresh: np.ndarray) -> np.ndarray:
            # concatenate promotes ('<U3' and '<U6' give '<U6'); nothing new keeps ids as they are
            return np.concatenate([ids, fresh]) if len(fresh) else ids

        self.index_ = ModelIndex(
            extend(index.user_ids, new_users), extend(index.item_ids, new_items), seen,
            rating_range=(min(lo, float(new.values.min())), max(hi, float(new.values.max()))),
            fallback=index.fallback,
        )
        self.user_factors_, self.item_factors_ = P, Q
        self.user_bias_ = np.concatenate([self.user_bias_, np.zeros(len(new_users), dt)])
        self.item_bias_ = np.concatenate([self.item_bias_, np.zeros(len(new_items), dt)])
        return self

    def fold_in(self, ratings: Any, user: Any = None, *, max_iter: int = 50) -> FoldedUser:
        """Fit a new user against the frozen items (:func:`autofact.recommend.fold_in`)."""
        from .recommend import fold_in

        return fold_in(self, ratings, user, max_iter=max_iter)

    def score_items(self, user: Any, items: Any = None) -> np.ndarray:
        """Predictions of one user id or FoldedUser (:func:`autofact.recommend.score_items`)."""
        from .recommend import score_items

        return score_items(self, user, items)
    # ---- end recommendation ----

    # ---- persistence (io.py) ----
    def save(self, path: Any) -> Any:
        """Write the fitted model to one file (``np.savez`` arrays + JSON metadata, no pickle).

        Read it back with :func:`autofact.load`. The loss must be a built-in name or importable
        (``'module:function'`` or a module-level function); a lambda raises ``ValueError``.
        """
        from .io import save

        return save(self, path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        loss: str | Loss | None = None,
        regularization: str | Regularizer | None = None,
    ) -> MatrixFactorization:
        """Read a model written by :meth:`save`; never unpickles, imports or calls anything the
        file names.

        Built-in losses and regularizers come back by name (with huber's ``delta`` and the
        ``beta``). A model trained with a user's function (saved as ``'module:function'``)
        loads for predict, recommend and similar_items; what needs the function itself
        (:meth:`fold_in`, a refit) raises a ``ValueError`` asking for it: pass it here,
        ``load(path, loss=mymod.cauchy)`` (or the path as a string you type,
        ``loss='mymod:cauchy'``); it must be the one the file names. Raises ``ValueError`` naming
        the file for a damaged or foreign file (see :func:`autofact.io.read`).
        """
        from .io import read
        from .losses import loss_from_spec

        saved = read(path)
        meta, name = saved.meta, saved.name
        params = dict(meta["params"])
        valid = cls().get_params()
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ValueError(
                f"{name} has hyper-parameter(s) {unknown!r} that this autofact version does not "
                "know"
            )
        params["loss"] = _saved_function("loss", meta["loss"], loss, name)
        params["regularization"] = _saved_function("regularization", meta.get("regularization"),
                                                   regularization, name)
        model = cls(**params)
        ranking = params.get("task", "rating") == "ranking"  # scores, never clipped (issue 12)
        loss_fn = params["loss"] if isinstance(params["loss"], NotLoaded) or ranking \
            else get_loss(params["loss"])
        model.index_ = ModelIndex(
            saved.user_ids, saved.item_ids, saved.seen,
            rating_range=tuple(meta["rating_range"]),
            fallback=float(meta.get("fallback_mean", meta["global_mean"])),
            clip=tuple(meta["rating_range"])
            if clips_to_range(loss_from_spec(meta["loss"])) and not ranking else None,
            inverse_link=None if ranking else inverse_link(loss_fn),
        )
        model.user_factors_ = saved.arrays["user_factors"]
        model.item_factors_ = saved.arrays["item_factors"]
        model.user_bias_ = saved.arrays["user_bias"]
        model.item_bias_ = saved.arrays["item_bias"]
        model.implicit_factors_ = saved.arrays.get("implicit_factors")
        model.global_mean_ = float(meta["global_mean"])
        model.history_ = list(meta.get("history") or [])
        n_epochs = meta.get("n_epochs")
        model.n_epochs_ = int(n_epochs) if isinstance(n_epochs, int) else len(model.history_)
        kept = [h.get("epoch") for h in model.history_ if isinstance(h, dict) and h.get("kept")]
        model.best_epoch_ = int(kept[0]) if kept and isinstance(kept[0], int) else None
        model.solver_ = str(meta.get("solver") or params.get("solver", "auto"))
        return model

    # ---- end persistence ----

    def score(self, X: Any, y: Any = None) -> float:
        """The negative RMSE on ratings (higher is better, like scikit-learn's
        ``'neg_root_mean_squared_error'``): ``X`` and ``y`` as in :meth:`fit`.

        Predictions are :meth:`predict`'s (the mean response; unknown users/items get the
        fallback, with a warning). For the RMSE itself use ``-model.score(test)`` or
        :func:`autofact.evaluation.evaluate`.
        """
        self._check_fitted()
        r = _as_ratings(X, y, "ratings")
        u = self.index_.user_index(r.user_ids[r.users], strict=self.strict)
        i = self.index_.item_index(r.item_ids[r.items], strict=self.strict)
        pred = self._scores(u, i)
        return -float(np.sqrt(np.mean((pred - r.values) ** 2)))

    def __sklearn_tags__(self) -> Any:
        """Estimator tags for scikit-learn (imported only when scikit-learn asks)."""
        from sklearn.utils import Tags, TargetTags

        return Tags(estimator_type="regressor", target_tags=TargetTags(required=False))


def load(
    path: str | os.PathLike[str],
    *,
    loss: str | Loss | None = None,
    regularization: str | Regularizer | None = None,
) -> MatrixFactorization:
    """Read a model written by :meth:`MatrixFactorization.save`
    (:meth:`MatrixFactorization.load`; nothing the file names is imported or called).

    >>> model = autofact.load("model.npz")
    >>> model = autofact.load("model.npz", loss=mymod.cauchy)   # trained with a user's loss
    """
    return MatrixFactorization.load(path, loss=loss, regularization=regularization)


def _saved_function(what: str, saved: Any, given: Any, name: str) -> Any:
    """The loss or regularization of a loaded model: a built-in from its saved name, the user's
    ``given`` function when it matches the saved one, or a :class:`NotLoaded` stand-in."""
    from ._imports import object_path
    from .losses import loss_from_spec, loss_spec

    if what == "loss":
        saved_fn = loss_from_spec(saved)
        path = saved.get("path")
        label = repr(path) if path is not None else repr(saved_fn if isinstance(saved_fn, str)
                                                         else saved)
    else:
        saved_fn = saved
        path = saved if isinstance(saved, str) and ":" in saved else None
        label = repr(saved)
    if given is None:
        if path is None:
            return saved_fn
        return NotLoaded(path, what, name, str(saved.get("link", "identity"))
                         if what == "loss" else "identity")
    # the user's own function (or a path they typed): it must be the one the file names
    got: Any
    if what == "loss":
        got = loss_spec(given)
        same = got is not None and {k: v for k, v in got.items() if k != "link"} == \
            {k: v for k, v in saved.items() if k != "link"}
    else:
        got = given if isinstance(given, str) or given is None else object_path(given)
        same = got == saved
    if not same:
        raise ValueError(
            f"{what}={_describe(given)} was passed to load, but {name} was trained with {what} "
            f"{label}; pass that one, or leave {what} out to load the model for prediction"
        )
    if isinstance(given, str) and ":" in given:
        # a path the user typed: import it now (the user's choice, not the file's)
        from .losses import get_loss
        from .regularizers import get_regularizer

        (get_loss if what == "loss" else lambda g: get_regularizer(g, 0.0))(given)
    return given


def _describe(obj: Any) -> str:
    if isinstance(obj, str):
        return repr(obj)
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else repr(obj)


def _n_entries(X: Any, y: Any) -> int:
    """How many ratings ``fit(X, y)`` was given, before conversion (0 when it cannot tell)."""
    for obj in (y, X):
        if obj is None:
            continue
        nnz = getattr(obj, "nnz", None)  # scipy.sparse: len() is ambiguous
        if isinstance(nnz, int | np.integer):
            return int(nnz)
        try:
            return len(obj)
        except TypeError:
            continue
    return 0


def _as_ratings(X: Any, y: Any = None, name: str = "ratings") -> Ratings:
    """``X`` as Ratings: any form :func:`as_ratings` takes, or, with ``y``, an ``(n, 2)`` array
    of (user id, item id) pairs rated ``y`` (scikit-learn's ``fit(X, y)``)."""
    if y is None:
        if isinstance(X, np.ndarray) and X.ndim == 2 and X.shape[1] == 2 and X.dtype == object:
            raise ValueError(
                f"{name} looks like (user, item) pairs but no ratings were given; pass them as "
                "y: fit(pairs, ratings)"
            )
        return as_ratings(X, name)
    import pandas as pd

    pairs = X.to_numpy() if isinstance(X, pd.DataFrame) else X
    if isinstance(pairs, list | tuple):
        pairs = np.asarray(pairs, dtype=object)
    if not (isinstance(pairs, np.ndarray) and pairs.ndim == 2 and pairs.shape[1] == 2):
        raise ValueError(
            f"with ratings y, X must be an (n, 2) array of (user id, item id) pairs, got "
            f"{type(X).__name__} with shape {np.shape(X)}"
        )
    try:
        values = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"y must be numbers (the ratings of X's pairs), got {y!r:.80}") from None
    if values.shape != (len(pairs),):
        raise ValueError(
            f"y must hold one rating per row of X: X has {len(pairs)} rows, y has shape "
            f"{values.shape}"
        )
    frame = pd.DataFrame({"user": pairs[:, 0], "item": pairs[:, 1], "rating": values})
    return Ratings.from_frame(frame)


class _Validation:
    """Held-out RMSE after each epoch, by the one rule of :meth:`MatrixFactorization.predict`
    (:meth:`ModelIndex.link_scores` and :meth:`ModelIndex.response`)."""

    def __init__(self, index: ModelIndex, v: Ratings, owned: torch.Tensor | None = None,
                 plan: ShardPlan | None = None) -> None:
        self.index = index
        self.u = index.user_index(v.user_ids[v.users], strict=False)
        self.i = index.item_index(v.item_ids[v.items], strict=False)
        self.y = np.asarray(v.values, dtype=np.float64)
        self.plan = plan
        self.shared = owned is not None and plan is not None
        if self.shared:
            # issue 11 (shared ALS, each process holding only its users' rows, in order): each
            # process scores the pairs of the users it owns; rank 0 those of unknown users,
            # from the mean known user taken over the processes; the squared errors are summed
            # over the processes, so every one gets the same RMSE and stops alike
            assert owned is not None and plan is not None
            mine = owned.cpu().numpy()
            known = self.u >= 0
            keep = known & mine[np.maximum(self.u, 0)]
            self.own_pairs = (np.cumsum(mine)[self.u[keep]] - 1, self.i[keep], self.y[keep])
            self.own_known = (index.user_counts > 0)[mine]  # over this process's rows
            cold = ~known if plan.is_main else np.zeros(len(self.u), dtype=bool)
            self.cold_pairs = (self.i[cold], self.y[cold])
            self.any_cold = bool((~known).any())  # the same on every process

    @torch.no_grad()
    def rmse(self, params: dict[str, torch.Tensor], global_mean: float) -> float:
        P, Q, bu, bi = (self._array(params, k) for k in ("P", "Q", "bu", "bi"))
        if not self.shared:
            return float(np.sqrt(np.mean(self._errors(self.u, self.i, self.y, P, Q, bu, bi,
                                                      global_mean))))
        assert self.plan is not None
        sse = float(np.sum(self._errors(*self.own_pairs, P, Q, bu, bi, global_mean)))
        if self.any_cold:  # the mean known user: its sums over every process's users
            k = P.shape[1]
            sums = torch.zeros(k + 2, dtype=torch.float64)
            sums[:k] = torch.from_numpy(P[self.own_known].astype(np.float64).sum(0))
            sums[k] = float(bu[self.own_known].astype(np.float64).sum())
            sums[k + 1] = float(self.own_known.sum())
            self.plan.all_sum([sums])
            mean = (sums / sums[k + 1]).numpy()
            items, y = self.cold_pairs
            # the one rule for an unknown user (ModelIndex.link_scores): the mean known user
            users = np.where(items >= 0, 0, -1)
            sse += float(np.sum(self._errors(users, items, y, mean[None, :k], Q,
                                             mean[k : k + 1], bi, global_mean)))
        total = torch.tensor([sse], dtype=torch.float64)
        self.plan.all_sum([total])
        return float(np.sqrt(float(total[0]) / len(self.y)))

    @staticmethod
    def _array(params: dict[str, torch.Tensor], name: str) -> np.ndarray:
        if name in params:
            return params[name].detach().cpu().numpy()
        rows = params["P" if name == "bu" else "Q"]
        return np.zeros(len(rows), rows.detach().cpu().numpy().dtype)

    def _errors(self, u: np.ndarray, i: np.ndarray, y: np.ndarray, P: np.ndarray,
                Q: np.ndarray, bu: np.ndarray, bi: np.ndarray, global_mean: float
                ) -> np.ndarray:
        """The squared errors of the pairs ``(u, i)`` with targets ``y``."""
        pred = self.index.response(
            self.index.link_scores(u, i, P, Q, bu, bi, float(global_mean))
        )
        return (pred - y) ** 2


class _EarlyStopping:
    """Stop when the validation RMSE has not improved for ``patience`` epochs; keep a copy of the
    best epoch's parameters (one copy of the factors) to restore at the end."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.best = math.inf
        self.best_epoch: int | None = None
        self.snapshot: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, rmse: float, params: dict[str, torch.Tensor]) -> bool:
        if rmse < self.best:
            self.best, self.best_epoch = rmse, epoch
            with torch.no_grad():
                if self.snapshot is None:
                    self.snapshot = {k: v.detach().clone() for k, v in params.items()}
                else:
                    for k, v in params.items():
                        self.snapshot[k].copy_(v)
            return False
        return self.patience is not None and epoch - (self.best_epoch or 0) >= self.patience

    def restore(self, params: dict[str, torch.Tensor]) -> None:
        if self.snapshot is None:
            return
        with torch.no_grad():
            for k, v in params.items():
                v.copy_(self.snapshot[k])


def _is_count(x: Any) -> bool:
    """Whether ``x`` is an int (not a bool): a ``patience`` that asks for early stopping."""
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _check_magnitude(values: np.ndarray, dtype: torch.dtype, what: str,
                     plan: ShardPlan | None) -> None:
    """Refuse ratings too large for a fit in ``dtype``: the largest magnitude ``v`` must keep
    the sum of the squared errors of the ``n`` ratings finite, ``16 n v^2 < max`` of the
    dtype (the errors may start at twice the ratings). ``plan``: the processes of a fit on
    rank-local ratings, which all refuse, or none (trust: a rating of 1e30 in float32, or 1e200
    in float64, ended in "a row's conditional precision is not positive definite", or a message
    blaming the loss)."""
    vals = np.asarray(values)
    if vals.size == 0 or vals.dtype.kind not in "fiu":
        return
    top = float(max(vals.max(), -vals.min()))  # no copy of every rating (np.abs's)
    n = float(vals.size)
    if plan is not None and plan.local:  # every process's largest and count
        largest = torch.tensor([top], dtype=torch.float64)
        plan.all_max([largest])
        top, n = float(largest[0]), plan.all_sum_float(n)
    limit = math.sqrt(torch.finfo(dtype).max / (16.0 * n))
    if math.isfinite(top) and top < limit:
        return
    name = str(dtype).replace("torch.", "")
    scale = 10.0 ** math.floor(math.log10(top)) if math.isfinite(top) else math.inf
    raise ValueError(
        f"the {what} reach {top:g} in magnitude, too large for a {name} fit of {n:.0f} "
        f"ratings: their squared errors would overflow (the largest allowed is about "
        f"{limit:.3g}); rescale them (for example divide by {scale:g})"
        + ("" if name == "float64" else " or pass dtype='float64' (not with the sampler, "
           "whose ratings are float32)")
    )


class _ChainCheckpoint:
    """A Gibbs chain's checkpoints (issue 11, item 4): what :func:`~autofact.solvers.gibbs.gibbs_mf`
    hands ``on_state`` (a :class:`~autofact.solvers.gibbs.ChainState`), with the sweep budget's
    kept predictions, the early stopping's best and the history, as one
    :class:`~autofact.checkpoint.TrainingState`, and back.

    In the file: ``param.P``/``bu``/``Q``/``bi`` the current draw, ``optim.rows.NAME`` the
    chain's other per-user arrays and ``optim.chain.NAME`` the rest, ``optim.budget.kept`` the
    budget's predictions of its sampled pairs after each kept sweep (pairs x sweeps), and the
    pairs, ``optim.budget.users`` and ``.items`` (drawn anew without a ``seed``), and the JSON
    ``chain``: the chain's numbers and its generator's state (``values``), ``sweeps``,
    ``burn_in``, ``processes``, ``budget`` and ``stopper``. A chain shared by processes
    (``plan``) gathers its users' rows (and the budget's pairs, in rank order) onto rank 0,
    which writes, and each process takes its own back on resume; every process holds the same
    generator state (one stream drawn alike), so rank 0's is the chain's.
    """

    def __init__(self, checkpointer: Any, plan: ShardPlan | None, mine: Ratings, m: int,
                 sweeps: int, burn_in: int, budget: Any, stopper: _EarlyStopping | None,
                 shape: tuple[int, int, int, bool] | None = None) -> None:
        self.checkpointer, self.plan, self.m = checkpointer, plan, m
        self.shape = shape  # (users, items, rank, implicit): what the file's arrays must fit
        self.sweeps, self.burn_in, self.budget, self.stopper = sweeps, burn_in, budget, stopper
        self.world = 1 if plan is None else plan.world_size
        self.own: np.ndarray | None = None  # this process's users (None: every user)
        self.sizes = [0 if budget is None else len(budget.users)]  # each process's pairs
        self.finished = False
        self.history: list[dict[str, Any]] = []
        if plan is not None:  # as the sampler finds them (gibbs_mf)
            users = torch.from_numpy(np.asarray(mine.users, dtype=np.int64))
            self.own = np.flatnonzero(plan.owned_rows(users, m).numpy())
            if budget is not None:  # where this process's sampled pairs go among all
                sizes = torch.zeros(plan.world_size, dtype=torch.int64)
                sizes[plan.rank] = len(budget.users)
                plan.all_sum([sizes])
                self.sizes = [int(x) for x in sizes]

    def on_state(self, history: list[dict[str, Any]], sweep: int, state: Any, last: bool
                 ) -> None:
        """``gibbs_mf``'s ``on_state``: write (or keep for Ctrl-C) the state after ``sweep``."""
        self.checkpointer.epoch_end(
            sweep, functools.partial(self._state, history, sweep, state, last), last,
            collective=self.plan is not None)

    def _state(self, history: list[dict[str, Any]], sweep: int, make: Any, last: bool) -> Any:
        from .checkpoint import TrainingState, gather_to_main

        chain = make()
        plan = self.plan or ShardPlan()
        rows = gather_to_main(plan, chain.rows, self.own, self.m)
        arrays = dict(chain.arrays)
        params = {k: a.pop(k) for a, names in ((rows, ("P", "bu")), (arrays, ("Q", "bi")))
                  for k in names if k in a}
        optimizer = {**{f"rows.{k}": a for k, a in rows.items()},
                     **{f"chain.{k}": a for k, a in arrays.items()}}
        budget = stopper = None
        if self.budget is not None:
            b = self.budget
            mine = (np.stack(b.kept, axis=1) if b.kept
                    else np.zeros((len(b.users), 0), dtype=np.float32))
            first = sum(self.sizes[: plan.rank])
            optimizer.update({f"budget.{k}": a for k, a in gather_to_main(
                plan, {"kept": mine, "users": np.asarray(b.users, dtype=np.int64),
                       "items": np.asarray(b.items, dtype=np.int64)},
                None if self.plan is None else np.arange(first, first + len(b.users)),
                sum(self.sizes)).items()})
            budget = {"run": b.run, "gain": b.gain, "sizes": self.sizes}
        if self.stopper is not None:
            stopper = {"best": self.stopper.best, "best_epoch": self.stopper.best_epoch}
        return TrainingState(
            epoch=sweep, finished=last, solver="gibbs", settings=self.checkpointer.settings,
            data=self.checkpointer.data, history=[dict(h) for h in history], start_value=None,
            params=params, optimizer=optimizer,
            chain={"values": chain.values, "sweeps": self.sweeps, "burn_in": self.burn_in,
                   "processes": self.world, "budget": budget, "stopper": stopper})

    def resume(self) -> Any:
        """The :class:`~autofact.solvers.gibbs.ChainState` to go on from (``None``: none),
        with the budget, the early stopping and ``history`` set as they were then."""
        from .solvers.gibbs import ChainState

        ckpt = self.checkpointer
        state = ckpt.resume()
        if state is None:
            return None
        where = str(ckpt.path)
        meta = state.chain or {}
        if meta.get("sweeps") != self.sweeps:
            raise ValueError(
                f"checkpoint {where!r} holds a chain of {meta.get('sweeps')!r} sweeps (burn-in "
                f"{meta.get('burn_in')!r}), got epochs={self.sweeps} now: the burn-in is a "
                f"tenth of the sweeps, so the chain cannot grow; ask for {meta.get('sweeps')!r} "
                "to resume, or pass another checkpoint folder (or delete this one) to start over"
            )
        if self.budget is not None and meta.get("budget", {}) is None:
            raise ValueError(
                f"checkpoint {where!r} holds a chain that ran with epochs={self.sweeps} (no "
                "sweep budget), got epochs=None now: the sweep budget compares each sweep's "
                "predictions with those it kept since the burn-in, which that chain did not "
                f"keep; pass epochs={self.sweeps} to resume, or pass another checkpoint folder "
                "(or delete this one) to start over"
            )
        if meta.get("processes") != self.world:
            raise ValueError(
                f"checkpoint {where!r} was written by {meta.get('processes')!r} process(es) "
                f"sharing the chain, got {self.world} now; resume with "
                f"{meta.get('processes')!r}, or pass another checkpoint folder (or delete this "
                "one) to start over"
            )
        from . import checkpoint as ck

        ck.check_chain(state, where, self.sweeps, self.shape)
        own = slice(None) if self.own is None else self.own
        try:
            rows = {"P": state.params["P"][own], "bu": state.params["bu"][own],
                    **{k[5:]: a[own] for k, a in state.optimizer.items()
                       if k.startswith("rows.")}}
            arrays = {"Q": state.params["Q"], "bi": state.params["bi"],
                      **{k[6:]: a for k, a in state.optimizer.items()
                         if k.startswith("chain.")}}
            if self.budget is not None:  # its pairs then (drawn anew without a seed)
                sizes = [int(x) for x in meta["budget"]["sizes"]]
                rank = 0 if self.plan is None else self.plan.rank
                mine = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
                b, opt = self.budget, state.optimizer
                kept = opt["budget.kept"][mine]
                b.kept = [np.ascontiguousarray(kept[:, j]) for j in range(kept.shape[1])]
                b.users = opt["budget.users"][mine].astype(b.users.dtype)
                b.items = opt["budget.items"][mine].astype(b.items.dtype)
                self.sizes = sizes
                self.budget.run, self.budget.gain = int(meta["budget"]["run"]), \
                    meta["budget"]["gain"]
            if self.stopper is not None:
                self.stopper.best = float(meta["stopper"]["best"])
                self.stopper.best_epoch = meta["stopper"]["best_epoch"]
            resumed = ChainState(state.epoch, rows, arrays, dict(meta["values"]))
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"{where} is damaged: its chain lacks {exc}; delete it to start "
                             "over") from None
        self.finished, self.history = state.finished, state.history
        return resumed


def _progress(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="fit", unit="epoch", leave=True)

