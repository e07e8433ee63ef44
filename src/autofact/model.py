"""``MatrixFactorization``: the estimator (scikit-learn contract)."""

from __future__ import annotations

import inspect
import math
import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .data import Ratings, as_ratings
from .errors import UnknownIdError
from .losses import LOSSES, Loss
from .objective import Objective, resolve_device, resolve_dtype
from .regularizers import REGULARIZERS, Regularizer
from .solvers import DEFAULT_EPOCHS, DEFAULT_LR, SOLVERS, fit_params

if TYPE_CHECKING:
    from .recommend import FoldedUser, Recommendations, SimilarItems

__all__ = ["MatrixFactorization"]

_REGRESSION_LOSSES = ("squared", "absolute", "huber")
_CURVED = ("squared", "huber", "logistic", "poisson")


class MatrixFactorization:
    """Low-rank factorization of a ratings matrix with missing entries, fitted by autograd.

    Minimizes, over the observed entries only,

    .. math::

        \\sum_{(u,i) \\in \\Omega} w_{ui}\\, \\ell(\\mu + b_u + b_i + p_u \\cdot q_i,\\ r_{ui})
        + R(P) + R(Q) + R(b^u) + R(b^i)

    where ``ell`` is ``loss`` (any elementwise torch function), ``R`` the ``regularization``
    (``'l2'`` is ``beta/2 * ||X||^2``) and the bias terms are present when ``bias=True``. No
    gradient is written by hand: autograd differentiates ``ell`` and ``R``.

    Parameters
    ----------
    rank : number of latent factors ``k``.
    loss : ``'squared'``, ``'absolute'``, ``'huber'``, ``'logistic'``, ``'poisson'``, a
        ``'module:function'`` path, or a callable ``loss(pred, target) -> per-entry tensor``.
    regularization : ``'l2'``, ``'l1'``, ``'none'``, a path, or a callable ``reg(param) -> scalar``.
    beta : strength of a named regularization.
    solver : ``'auto'`` (``'als'`` for losses with curvature, else ``'adam'``), ``'als'``,
        ``'adam'``, ``'sgd'``, ``'lbfgs'`` or ``'gd'``.
    lr : learning rate (``None``: the solver's default).
    epochs : passes over the data (``None``: the solver's default).
    batch_size : mini-batch size for ``'adam'``/``'sgd'`` (``None``: full batch for ``adam``).
    bias : learn a global mean and user/item biases.
    nonnegative : project ``P`` and ``Q`` onto ``>= 0``: after each block of rows for ``als``,
        after each epoch's step for the first-order solvers (not with ``lbfgs``).
    init_std : standard deviation of the random initial factors.
    seed : makes a CPU run repeatable.
    device : ``'auto'``, ``'cpu'`` or ``'cuda'``.
    dtype : ``'float32'`` or ``'float64'``.
    max_memory : bound in bytes on the extra memory of one full-batch step.
    strict : raise on unknown users/items in :meth:`predict` instead of falling back.
    verbose : show a progress bar with the loss and validation RMSE.

    Attributes (after :meth:`fit`)
    ----------
    user_factors_ (m x k), item_factors_ (n x k), user_bias_, item_bias_, global_mean_,
    user_ids_, item_ids_, rating_range_, history_ (one dict per epoch: epoch, loss, val_rmse,
    time), n_epochs_, solver_.

    Examples
    --------
    >>> model = MatrixFactorization(rank=10, seed=0).fit(train)
    >>> model.predict([196], [242])
    """

    def __init__(
        self,
        rank: int = 10,
        *,
        loss: str | Loss = "squared",
        regularization: str | Regularizer | None = "l2",
        beta: float = 25.0,
        solver: str = "auto",
        lr: float | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        bias: bool = True,
        nonnegative: bool = False,
        init_std: float = 0.1,
        seed: int | None = 0,
        device: str = "auto",
        dtype: str = "float32",
        max_memory: int = 256 * 2**20,
        strict: bool = False,
        verbose: bool = False,
    ) -> None:
        self.rank = rank
        self.loss = loss
        self.regularization = regularization
        self.beta = beta
        self.solver = solver
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.bias = bias
        self.nonnegative = nonnegative
        self.init_std = init_std
        self.seed = seed
        self.device = device
        self.dtype = dtype
        self.max_memory = max_memory
        self.strict = strict
        self.verbose = verbose

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

    def _validate(self) -> tuple[str, float, int]:
        if not (isinstance(self.rank, int | np.integer) and not isinstance(self.rank, bool)
                and self.rank >= 1):
            raise ValueError(f"rank must be a positive int, got {self.rank!r}")
        for flag in ("bias", "nonnegative", "strict", "verbose"):
            if not isinstance(getattr(self, flag), bool | np.bool_):
                raise ValueError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.seed is not None and not (
            isinstance(self.seed, int | np.integer) and not isinstance(self.seed, bool)
        ):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")
        if not (isinstance(self.beta, int | float | np.floating) and math.isfinite(self.beta)
                and self.beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta!r}")
        solver = self.solver
        if solver == "auto":
            solver = "als" if (isinstance(self.loss, str) and self.loss in _CURVED) else "adam"
            if isinstance(self.loss, str) and ":" in self.loss:
                solver = "adam"
        if solver not in SOLVERS:
            raise ValueError(f"solver must be 'auto' or one of {SOLVERS}, got {self.solver!r}")
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
        if self.nonnegative and solver == "lbfgs":
            raise ValueError(
                "nonnegative=True does not combine with solver='lbfgs' (a projection breaks its "
                "curvature pairs); use solver='als', 'adam' or 'gd'"
            )
        if self.lr is not None and solver == "als":
            raise ValueError(
                f"lr={self.lr!r} has no meaning for solver='als' (its Newton steps need no "
                "learning rate); leave lr=None or pick a first-order solver"
            )
        if self.batch_size is not None and solver in ("gd", "lbfgs", "als"):
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
    def fit(self, ratings: Any, validation: Any = None) -> MatrixFactorization:
        """Fit on ``ratings`` (a :class:`Ratings` or any form it is built from).

        ``validation`` (same forms, in the same user/item ids) is scored by RMSE after every
        epoch into ``history_``.
        """
        start = time.perf_counter()
        solver, lr, epochs = self._validate()
        train = as_ratings(ratings, "ratings")
        if self.seed is not None:
            torch.manual_seed(int(self.seed))
        # autofact.distributed.fit swaps in its sharded objective here, for one call
        make_objective = getattr(self, "_objective_type", Objective)
        obj = make_objective(
            train, loss=self.loss, regularization=self.regularization, beta=self.beta,
            bias=self.bias, device=self.device, dtype=self.dtype, max_memory=self.max_memory,
        )
        params = obj.init_params(self.rank, seed=self.seed, init_std=self.init_std)
        rating_range = (float(train.values.min()), float(train.values.max()))
        fallback = obj.mu if self.bias else obj._best_constant()
        clips = _clips_loss(self.loss)
        val = None
        if validation is not None:
            v = as_ratings(validation, "validation")
            if _same_ids(v.user_ids, train.user_ids) and _same_ids(v.item_ids, train.item_ids):
                vu, vi = v.users.astype(np.int64), v.items.astype(np.int64)
            else:
                vu = train.user_index(v.user_ids[v.users], strict=False)
                vi = train.item_index(v.item_ids[v.items], strict=False)
            val = _Validation(vu, vi, v.values, obj, fallback, rating_range if clips else None)
        # all checks passed: only now replace what an earlier fit left
        self.user_ids_ = train.user_ids
        self.item_ids_ = train.item_ids
        self._train = train
        self._seen_cache = None
        self._counts_cache: tuple[np.ndarray, np.ndarray] | None = None
        self.global_mean_ = obj.mu
        self.fallback_mean_ = fallback
        self.rating_range_ = rating_range
        self.solver_ = solver
        self._params = params
        self.history_: list[dict[str, float]] = []
        bar = _progress(epochs) if self.verbose else None

        def on_epoch(epoch: int, value: float, seconds: float) -> bool:
            rec: dict[str, float] = {"epoch": epoch, "loss": value, "time": seconds}
            self.history_.append(rec)  # first: Ctrl-C from here on keeps this epoch (issue 8)
            if val is not None:
                rec["val_rmse"] = val.rmse(params)
            if bar is not None:
                bar.set_postfix({k: f"{v:.4g}" for k, v in rec.items() if k in ("loss", "val_rmse")})
                bar.update(1)
            return False

        try:
            self.n_epochs_ = fit_params(
                obj, params, solver=solver, epochs=epochs, lr=lr, batch_size=self.batch_size,
                seed=self.seed, nonnegative=self.nonnegative, on_epoch=on_epoch, start_time=start,
            )
        except KeyboardInterrupt:
            # issue 8: fit_params left the parameters of the last finished epoch; keep a usable
            # model of that epoch (exported below) and let the interrupt go on
            self.n_epochs_ = len(self.history_)
            raise
        finally:
            if bar is not None:
                bar.close()
            self._export()
        return self

    def _export(self) -> None:
        p = self._params
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
        if not hasattr(self, "user_factors_"):
            raise RuntimeError(
                "this MatrixFactorization is not fitted yet; call fit(ratings) first"
            )

    def _clips(self) -> bool:
        return _clips_loss(self.loss)

    def predict_indices(self, users: Any, items: Any) -> np.ndarray:
        """Raw model output for 0-based index arrays (no id lookup, no clipping)."""
        self._check_fitted()
        u = np.asarray(users, dtype=np.int64)
        i = np.asarray(items, dtype=np.int64)
        P, Q = self.user_factors_, self.item_factors_
        for what, idx, size in (("user", u, len(P)), ("item", i, len(Q))):
            bad = (idx < 0) | (idx >= size)
            if bad.any():
                raise ValueError(
                    f"{what} index {int(idx[np.flatnonzero(bad)[0]])} is out of range: expected "
                    f"0 <= index < {size} (use predict() for the user's own ids)"
                )
        out = np.empty(len(u), dtype=np.float64)
        step = 1 << 16  # in slices, so the gathered rows stay small whatever the number of pairs
        for s in range(0, len(u), step):
            uu, ii = u[s : s + step], i[s : s + step]
            out[s : s + step] = np.einsum("ij,ij->i", P[uu], Q[ii])
        out += self.global_mean_ + self.user_bias_[u] + self.item_bias_[i]
        return out

    def _predict_index(self, u: np.ndarray, i: np.ndarray, *, warn: bool = True) -> np.ndarray:
        """Predictions for indices where ``-1`` marks an unknown user or item (fallback)."""
        known = (u >= 0) & (i >= 0)
        out = np.empty(len(u), dtype=np.float64)
        if known.any():
            out[known] = self.predict_indices(u[known], i[known])
        unknown = ~known
        if unknown.any():
            fb = np.full(int(unknown.sum()), getattr(self, "fallback_mean_", self.global_mean_),
                         dtype=np.float64)
            uu, ii = u[unknown], i[unknown]
            fb += np.where(uu >= 0, self.user_bias_[np.maximum(uu, 0)], 0.0)
            fb += np.where(ii >= 0, self.item_bias_[np.maximum(ii, 0)], 0.0)
            out[unknown] = np.clip(fb, *self.rating_range_) if self._clips() else fb
            if warn:
                warnings.warn(
                    f"{int(unknown.sum())} of {len(u)} pairs have a user or item that is not in "
                    "the training data; they are predicted from the global mean and the known "
                    "side's bias (pass strict=True to raise instead)",
                    UserWarning,
                    stacklevel=3,
                )
        if self._clips():
            out[known] = np.clip(out[known], *self.rating_range_)
        return out

    def predict(self, users: Any, items: Any) -> np.ndarray:
        """Predicted ratings for pairs ``(users[k], items[k])`` given in the user's own ids.

        A pair whose user or item was not in the training data is predicted from the global mean
        plus the known side's bias, clipped to the training ratings' range, and counted in one
        warning; with ``strict=True`` it raises :class:`~autofact.UnknownIdError` instead.
        """
        self._check_fitted()
        u = self.user_index(users, strict=self.strict)
        i = self.item_index(items, strict=self.strict)
        if len(u) != len(i):
            raise ValueError(
                f"users and items must have the same length, got {len(u)} and {len(i)}"
            )
        return self._predict_index(u, i)

    def user_index(self, ids: Any, *, strict: bool = True) -> np.ndarray:
        """0-based indices of user ids (-1 for unknown when ``strict=False``).

        A user in the id map with no training rating (possible when the ratings keep a larger
        shape, as the splits do) is unknown too.
        """
        self._check_fitted()
        return self._known(self._ratings_index().user_index(ids, strict=strict), ids, "user",
                           strict)

    def item_index(self, ids: Any, *, strict: bool = True) -> np.ndarray:
        """0-based indices of item ids (-1 for unknown when ``strict=False``; see user_index)."""
        self._check_fitted()
        return self._known(self._ratings_index().item_index(ids, strict=strict), ids, "item",
                           strict)

    def _counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Training ratings per user and per item (from the seen pattern, so loaded models too)."""
        counts: tuple[np.ndarray, np.ndarray] | None = getattr(self, "_counts_cache", None)
        if counts is None:
            seen = self._seen()
            counts = (np.diff(seen.indptr),
                      np.bincount(seen.indices, minlength=seen.shape[1]))
            self._counts_cache = counts
        return counts

    def _known(self, idx: np.ndarray, ids: Any, what: str, strict: bool) -> np.ndarray:
        counts = self._counts()[0 if what == "user" else 1]
        empty = (idx >= 0) & (counts[np.maximum(idx, 0)] == 0)
        if empty.any():
            if strict:
                k = int(np.flatnonzero(empty)[0])
                seq = np.atleast_1d(np.asarray(ids, dtype=object))
                label = seq[k] if len(seq) > k else ids
                raise UnknownIdError(
                    f"{what} {label!r} is not in the training data (it is in the id map but has "
                    "no training rating)"
                )
            idx = np.where(empty, -1, idx)
        return idx

    def _ratings_index(self) -> Ratings:
        r = getattr(self, "_train", None)
        if r is None:  # a loaded model: an id-only stand-in
            r = Ratings.__new__(Ratings)
            r.user_ids, r.item_ids = self.user_ids_, self.item_ids_
            r._user_lookup = r._item_lookup = None
            self._train = r
        return r

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

    # ---- end persistence ----

    def _seen(self) -> Any:
        """The training pattern as a boolean scipy CSR (users x items): what each user has rated.

        Built lazily from the training data; a loaded model gets it from the saved file.
        """
        seen = getattr(self, "_seen_cache", None)
        if seen is None:
            import scipy.sparse as sp

            t = self._train
            m, n = len(self.user_ids_), len(self.item_ids_)
            indptr = np.zeros(m + 1, dtype=np.int64)
            np.cumsum(np.bincount(t.users, minlength=m), out=indptr[1:])
            seen = sp.csr_matrix((np.ones(len(t.users), dtype=bool), t.items, indptr), shape=(m, n))
            self._seen_cache = seen
        return seen

    def score(self, ratings: Any) -> float:
        """RMSE on ``ratings`` (user's ids); unknown users/items use the fallback."""
        self._check_fitted()
        r = as_ratings(ratings, "ratings")
        u = self.user_index(r.user_ids[r.users], strict=self.strict)
        i = self.item_index(r.item_ids[r.items], strict=self.strict)
        pred = self._predict_index(u, i)
        return float(np.sqrt(np.mean((pred - r.values) ** 2)))


class _Validation:
    """Held-out RMSE computed on the training device, with the same fallback and clipping as
    :meth:`MatrixFactorization.predict` (unknown users/items: global mean + known bias)."""

    def __init__(self, u: np.ndarray, i: np.ndarray, y: np.ndarray, obj: Objective,
                 fallback: float, clip: tuple[float, float] | None) -> None:
        dev = obj.device
        self.u = torch.tensor(np.asarray(u), dtype=torch.int64, device=dev)
        self.i = torch.tensor(np.asarray(i), dtype=torch.int64, device=dev)
        self.y = torch.tensor(np.asarray(y), dtype=torch.float64, device=dev)
        self.known_u, self.known_i = self.u >= 0, self.i >= 0
        self.uu, self.ii = self.u.clamp_min(0), self.i.clamp_min(0)
        self.clip = clip
        self.mu, self.fallback = obj.mu, fallback

    @torch.no_grad()
    def rmse(self, params: dict[str, torch.Tensor]) -> float:
        sq = torch.zeros((), dtype=torch.float64, device=self.y.device)
        step = 1 << 15  # gathered rows stay a few MB whatever the rank
        bu, bi = params.get("bu"), params.get("bi")
        for s in range(0, len(self.y), step):
            sl = slice(s, s + step)
            u, i, ku, ki = self.uu[sl], self.ii[sl], self.known_u[sl], self.known_i[sl]
            dot = (params["P"][u] * params["Q"][i]).sum(1).double()
            b_u = bu[u].double() * ku if bu is not None else 0.0
            b_i = bi[i].double() * ki if bi is not None else 0.0
            known = ku & ki
            fb = torch.as_tensor(self.fallback + b_u + b_i, dtype=torch.float64)
            if self.clip is not None:
                fb = fb.clamp(*self.clip)
            pred = torch.where(known, self.mu + b_u + b_i + dot, fb)
            if self.clip is not None:
                pred = pred.clamp(*self.clip)
            sq += ((pred - self.y[sl]) ** 2).sum()
        return float(torch.sqrt(sq / len(self.y)))


def _clips_loss(loss: Any) -> bool:
    """Whether predictions are ratings (clipped to the training range): the regression losses,
    by name or as the library's own functions; a logit or log-rate is never clipped."""
    from .losses import loss_spec

    spec = loss_spec(loss)
    return spec is not None and spec.get("name") in _REGRESSION_LOSSES


def _same_ids(a: np.ndarray, b: np.ndarray) -> bool:
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b)))


def _progress(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="fit", unit="epoch", leave=True)

