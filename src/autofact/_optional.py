"""Optional dependencies: imported where they are used, with an error that names the extra.

autofact's core needs torch, numpy, scipy, pandas and tqdm. Reading Parquet needs pyarrow
(``pip install 'autofact[parquet]'``) and drawing learning curves needs matplotlib
(``pip install 'autofact[plot]'``); ``autofact[all]`` brings both.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["optional_import"]


def optional_import(module: str, *, extra: str, purpose: str) -> ModuleType:
    """``import module``, or an ImportError that says which extra to install.

    >>> pyarrow = optional_import("pyarrow", extra="parquet", purpose="reading Parquet")

    Raises ``ImportError("reading Parquet needs pyarrow: pip install 'autofact[parquet]'")``
    when the module (or one of its own dependencies) cannot be imported; the original error is
    chained as its cause.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise ImportError(
            f"{purpose} needs {top}: pip install 'autofact[{extra}]' (importing {module} failed: {exc})",
            name=module,
        ) from exc
