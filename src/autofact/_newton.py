"""Levenberg-damped Newton steps for small problems (fold-in of one user, the best constant)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def damped_newton(
    value: Callable[[torch.Tensor], float],
    derivatives: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    max_iter: int,
    *,
    damping: float = 1e-8,
    rtol: float = 1e-13,
) -> tuple[float, int]:
    """Minimize ``value`` over the small float64 vector ``x`` (updated in place).

    ``derivatives(x)`` gives the gradient and Hessian (from autograd, at the callers). A step
    ``(H + damping (1 + max|diag H|) I)^-1 g`` is taken only if it lowers the value; otherwise
    the damping grows tenfold, so a function without curvature (the absolute error) or with
    negative curvature still descends. Stops when the value settles (relative ``rtol``), the step
    vanishes, no step lowers the value, or after ``max_iter`` iterations. Returns the final
    value and the iterations used.
    """
    eye = torch.eye(len(x), dtype=x.dtype, device=x.device)
    current = value(x)
    it = 0
    while it < max_iter:
        it += 1
        g, H = derivatives(x)
        H = 0.5 * (H + H.T)
        scale = 1.0 + float(H.diagonal().abs().max())
        while damping < 1e12:
            step = torch.linalg.solve(H + damping * scale * eye, g)
            new = value(x - step)
            if math.isfinite(new) and new <= current:
                break
            damping *= 10.0
        else:
            break
        x -= step
        done = current - new <= rtol * (1.0 + abs(current)) or float(step.abs().max()) < 1e-10
        current, damping = new, max(damping / 10.0, 1e-12)
        if done:
            break
    return current, it
