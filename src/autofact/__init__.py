"""autofact: matrix factorization with missing data; state the loss, autograd does the rest.

>>> import autofact
>>> train = autofact.read("u1.base")
>>> model = autofact.MatrixFactorization(rank=10, loss="huber").fit(train)
>>> model.predict([196], [242])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

if TYPE_CHECKING:
    from . import evaluation as evaluation
    from . import losses as losses
    from . import regularizers as regularizers
    from .data import Ratings as Ratings
    from .errors import FitError as FitError
    from .errors import UnknownIdError as UnknownIdError
    from .functional import matrix_factorization_bgd as matrix_factorization_bgd
    from .model import MatrixFactorization as MatrixFactorization
    from .model import load as load
    from .reading import read as read
    from .recommend import FoldedUser as FoldedUser
    from .recommend import Recommendations as Recommendations
    from .tuning import tune as tune

__all__ = [
    "FitError",
    "FoldedUser",
    "MatrixFactorization",
    "Ratings",
    "Recommendations",
    "UnknownIdError",
    "__version__",
    "evaluation",
    "load",
    "losses",
    "matrix_factorization_bgd",
    "read",
    "regularizers",
    "tune",
]

# Issue 10 (cold start): each public name is imported on first use (PEP 562), so that
# `import autofact` costs no torch, and the command line parses its arguments and starts
# reading a ratings file before torch is imported. `from autofact import X` works as before.
_WHERE = {
    "FitError": "errors",
    "FoldedUser": "recommend",
    "MatrixFactorization": "model",
    "Ratings": "data",
    "Recommendations": "recommend",
    "UnknownIdError": "errors",
    "load": "model",
    "matrix_factorization_bgd": "functional",
    "read": "reading",
    "tune": "tuning",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    elif not name.startswith("__"):  # a submodule: autofact.losses, autofact.io, ...
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
