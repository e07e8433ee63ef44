"""Built-in losses: plain elementwise functions ``loss(pred, target) -> per-entry tensor``.

The library applies per-entry weights and the sum, in one place (:mod:`autofact.objective`); a
loss never reduces, masks or weights. Any callable with this signature works as a loss, and its
gradient (and, for the ``als`` solver, its second derivative) comes from autograd.

>>> import torch
>>> squared(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 0.0]))
tensor([0.2500, 4.0000])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "squared", "absolute", "huber", "logistic", "poisson", "get_loss", "loss_spec", "loss_from_spec",
    "LOSSES",
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


def poisson(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Poisson negative log-likelihood with a log link: ``exp(pred) - target * pred``."""
    return torch.exp(pred) - target * pred


LOSSES: dict[str, Loss] = {
    "squared": squared,
    "absolute": absolute,
    "huber": huber(1.0),
    "logistic": logistic,
    "poisson": poisson,
}


def loss_spec(loss: str | Loss) -> dict[str, object] | None:
    """A JSON-able description of a loss (built-in name, factory arguments or import path).

    ``None`` when the loss is a callable that cannot be re-imported (a lambda or closure).
    """
    if isinstance(loss, str):
        return {"name": loss} if loss in LOSSES else {"path": loss}
    spec = getattr(loss, "spec", None)
    if isinstance(spec, dict):
        return dict(spec)
    for name, fn in LOSSES.items():
        if fn is loss:
            return {"name": name}
    from ._imports import object_path

    path = object_path(loss)
    return None if path is None else {"path": path}


def loss_from_spec(spec: dict[str, object]) -> str | Loss:
    """The inverse of :func:`loss_spec` (imports a path; never evaluates code)."""
    if "path" in spec:
        return str(spec["path"])
    name = spec.get("name")
    if name == "huber" and "delta" in spec:
        return huber(float(spec["delta"]))  # type: ignore[arg-type]
    if isinstance(name, str) and name in LOSSES:
        return name
    raise ValueError(f"unknown loss specification {spec!r}")


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
    raise ValueError(
        f"loss must be one of {sorted(LOSSES)}, a 'module:function' path, or a callable "
        f"loss(pred, target); got {loss!r}"
    )
