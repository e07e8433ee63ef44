"""Built-in losses: plain elementwise functions ``loss(pred, target) -> per-entry tensor``.

The library applies per-entry weights and the sum, in one place (:mod:`autofact.objective`); a
loss never reduces, masks or weights. Any callable with this signature works as a loss, and its
gradient (and, for the ``als`` solver, its second derivative) comes from autograd.

A loss also fixes what a prediction means. ``pred`` is a raw score (the link scale); the mean
response the model predicts is ``inverse_link(pred)``: the identity for the regression losses
(``squared``, ``absolute``, ``huber``: a rating, clipped by the model to the training range),
``exp`` for ``poisson`` (a rate) and the sigmoid for ``logistic`` (a probability). A user's loss
predicts its raw score (identity, not clipped) unless the function declares its inverse link as
an attribute::

    def cauchy_logit(pred, target):
        ...
    cauchy_logit.inverse_link = torch.sigmoid   # predictions are sigmoid(score)

:func:`inverse_link` is the one place that reads it.

>>> import torch
>>> squared(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 0.0]))
tensor([0.2500, 4.0000])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "squared", "absolute", "huber", "logistic", "poisson", "get_loss", "loss_spec", "loss_from_spec",
    "inverse_link", "link_name", "link_label", "clips_to_range", "check_targets", "LOSSES",
]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def squared(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(target - pred)**2``: the post's loss."""
    return (target - pred) ** 2


def absolute(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``|target - pred|``."""
    return (target - pred).abs()


def huber(delta: float = 1.0) -> Loss:
    """Huber loss: ``r**2 / 2`` for ``|r| <= delta``, ``delta * (|r| - delta/2)`` beyond."""
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta!r}")

    def huber_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        r = (target - pred).abs()
        return torch.where(r <= delta, 0.5 * r**2, delta * (r - 0.5 * delta))

    huber_loss.__qualname__ = f"huber(delta={delta!r})"
    huber_loss.spec = {"name": "huber", "delta": float(delta)}  # type: ignore[attr-defined]
    return huber_loss


def logistic(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Logistic loss on a logit ``pred`` for 0/1 or -1/+1 targets: ``log(1 + exp(-y * pred))``."""
    y = torch.where(target > 0, 1.0, -1.0).to(pred.dtype)
    return F.softplus(-y * pred)


logistic.inverse_link = torch.sigmoid  # type: ignore[attr-defined]


def poisson(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Poisson negative log-likelihood with a log link: ``exp(pred) - target * pred``."""
    return torch.exp(pred) - target * pred


poisson.inverse_link = torch.exp  # type: ignore[attr-defined]


LOSSES: dict[str, Loss] = {
    "squared": squared,
    "absolute": absolute,
    "huber": huber(1.0),
    "logistic": logistic,
    "poisson": poisson,
}


_REGRESSION = ("squared", "absolute", "huber")
_LINK_NAMES: dict[Any, str] = {torch.sigmoid: "logit", torch.special.expit: "logit",
                               torch.exp: "log"}
#: inverse links a saved model may name (``'custom'``: only the loss function knows it)
INVERSE_LINKS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "logit": torch.sigmoid, "log": torch.exp,
}


def loss_spec(loss: str | Loss) -> dict[str, object] | None:
    """A JSON-able description of a loss: a built-in name (with huber's ``delta``) or a
    ``'module:function'`` path, plus the name of its inverse link (``'identity'``, ``'log'``,
    ``'logit'`` or ``'custom'``) when that is not the identity.

    ``None`` when the loss is a callable that cannot be re-imported (a lambda or closure).
    """
    if isinstance(loss, str):
        # the ranking task's pairwise losses are saved by name too (autofact.ranking, issue 12)
        return {"name": loss} if loss in LOSSES or loss in _PAIRWISE else {"path": loss}
    spec = getattr(loss, "spec", None)
    if isinstance(spec, dict):
        return dict(spec)
    for name, fn in LOSSES.items():
        if fn is loss:
            return {"name": name}
    from ._imports import object_path

    path = object_path(loss)
    if path is None:
        return None
    out: dict[str, object] = {"path": path}
    link = link_name(loss)
    if link != "identity":
        out["link"] = link
    return out


def loss_from_spec(spec: dict[str, object]) -> str | Loss:
    """A built-in loss from its :func:`loss_spec` (a name, huber with its ``delta``).

    A ``'module:function'`` path is returned as the string: nothing is imported here (a model
    file's loss is never imported; see :func:`autofact.load`).
    """
    if "path" in spec:
        return str(spec["path"])
    name = spec.get("name")
    if name == "huber" and "delta" in spec:
        delta = spec["delta"]
        if not isinstance(delta, int | float) or isinstance(delta, bool):
            raise ValueError(f"unknown loss specification {spec!r}: delta must be a number")
        return huber(float(delta))
    if isinstance(name, str) and (name in LOSSES or name in _PAIRWISE):
        return name
    raise ValueError(f"unknown loss specification {spec!r}")


#: the ranking task's pairwise loss names (``autofact.ranking.PAIRWISE_LOSSES``), known here only
#: so that a saved ranking model's loss is read back by name
_PAIRWISE = ("bpr", "warp")


def _function(loss: str | Loss) -> Any:
    if isinstance(loss, str):
        return LOSSES.get(loss)  # a path is not imported here
    return loss


def inverse_link(loss: str | Loss) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The function from a raw score to the mean response for ``loss``, ``None`` for the identity.

    ``torch.sigmoid`` for ``logistic``, ``torch.exp`` for ``poisson``, and for any other callable
    its ``inverse_link`` attribute when it has one (see the module docstring). A
    ``'module:function'`` string is not imported here: resolve it with :func:`get_loss` first.
    """
    link = getattr(_function(loss), "inverse_link", None)
    if link is None:
        return None
    if not callable(link):
        raise TypeError(
            f"the loss's inverse_link must be a function of a tensor (such as torch.sigmoid), "
            f"got {link!r}; set loss.inverse_link = torch.sigmoid or remove the attribute"
        )
    return link  # type: ignore[no-any-return]


def link_name(loss: str | Loss) -> str:
    """``'identity'``, ``'log'`` (mean ``exp(score)``), ``'logit'`` (mean ``sigmoid(score)``) or
    ``'custom'`` (another inverse link, known only to the loss function)."""
    return link_label(inverse_link(loss))


def link_label(inverse: Callable[[torch.Tensor], torch.Tensor] | None) -> str:
    """The name :func:`link_name` gives an inverse link function (``None``: ``'identity'``)."""
    if inverse is None:
        return "identity"
    return _LINK_NAMES.get(inverse, "custom")


def clips_to_range(loss: str | Loss) -> bool:
    """Whether predictions are ratings, clipped to the training ratings' range: the regression
    built-ins (``squared``, ``absolute``, ``huber``), by name or as the library's functions.
    A rate, a probability or a user's loss is never clipped."""
    if isinstance(loss, str):
        return loss in _REGRESSION
    spec = getattr(loss, "spec", None)
    if isinstance(spec, dict):
        return spec.get("name") in _REGRESSION
    return any(loss is LOSSES[name] for name in _REGRESSION)


def check_targets(loss: str | Loss, values: np.ndarray, what: str = "ratings") -> None:
    """Refuse targets a built-in loss cannot model: ``logistic`` needs {0, 1} or {-1, 1}."""
    if _function(loss) is not logistic:
        return
    found = np.unique(np.asarray(values))
    if np.isin(found, (0.0, 1.0)).all() or np.isin(found, (-1.0, 1.0)).all():
        return
    shown = ", ".join(f"{v:g}" for v in found[:6]) + (", ..." if len(found) > 6 else "")
    raise ValueError(
        f"loss='logistic' models 0/1 (or -1/+1) outcomes, but the {what} hold the values "
        f"{{{shown}}}; binarize them first (for example liked = ratings >= 4) or use a regression "
        "loss such as 'squared'"
    )


def get_loss(loss: str | Loss) -> Loss:
    """A loss by built-in name, ``'module:function'`` import path, or the callable itself."""
    if callable(loss):
        return loss
    if isinstance(loss, str):
        if loss in LOSSES:
            return LOSSES[loss]
        if ":" in loss:
            from ._imports import call_if_factory, import_object

            # a factory such as huber is called with its defaults
            return call_if_factory(import_object(loss, what="loss"), 2)  # type: ignore[no-any-return]
    if isinstance(loss, str):
        from .ranking import PAIRWISE_LOSSES

        if loss in PAIRWISE_LOSSES:  # trust: the message listed only the rating losses
            raise ValueError(
                f"loss={loss!r} is a pairwise loss of the ranking task: pass task='ranking' "
                f"(with loss={loss!r}), or choose a rating loss: one of {sorted(LOSSES)}"
            )
    raise ValueError(
        f"loss must be one of {sorted(LOSSES)}, a 'module:function' path, or a callable "
        f"loss(pred, target); got {loss!r}"
    )
