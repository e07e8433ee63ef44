"""Ready to publish (issue 8, item 14): one version source, a license, optional dependencies as
extras with an error that names the extra, nothing private from torch on the ``import autofact``
path, and CI that fails when a real-data test is skipped (item 15). The built wheel itself is
checked by ``.ci/wheel-check`` (a fresh venv, ``autofact demo``)."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import autofact
from autofact._optional import optional_import

from . import conftest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "autofact"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = {"pyarrow": "parquet", "matplotlib": "plot", "optuna": "tune"}
NEEDS_PYARROW = r"reading Parquet needs pyarrow: pip install 'autofact\[parquet\]'"


def test_version_is_the_installed_distributions():
    assert autofact.__version__ == importlib.metadata.version("autofact")
    assert "version" in PYPROJECT["project"]["dynamic"] and "version" not in PYPROJECT["project"]


def test_version_is_written_once():
    """issue 8: one version source, ``autofact/_version.py`` (pyproject.toml reads it)."""
    assigned = [
        path.relative_to(SRC).as_posix()
        for path in SRC.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)
    ]
    assert assigned == ["_version.py"]
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "autofact._version.__version__"}


def test_license_is_mit_and_shipped():
    assert PYPROJECT["project"]["license"] == "MIT"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the autofact developers" in text
    classifiers = PYPROJECT["project"]["classifiers"]
    for version in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    # PEP 639: with a license expression a License classifier is an error for setuptools
    assert not [c for c in classifiers if c.startswith("License ::")]


def _requirement_name(req: str) -> str:
    return req.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip()


def test_optional_dependencies_are_extras_and_torch_is_not_capped():
    """issue 8: pyarrow, matplotlib and optuna are extras; torch has a floor but no ceiling."""
    core = {_requirement_name(r): r for r in PYPROJECT["project"]["dependencies"]}
    extras = PYPROJECT["project"]["optional-dependencies"]
    for module, extra in EXTRAS.items():
        assert module not in core
        assert module in {_requirement_name(r) for r in extras[extra]}
        assert module in {_requirement_name(r) for r in extras["all"]}
    assert "torch" in core and ">=" in core["torch"] and "<" not in core["torch"]


def _top_level_imports(path: Path) -> set[str]:
    """Top-level packages imported at module level (not inside a function) by one file."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_optional_dependencies_are_imported_lazily():
    offenders = {
        path.relative_to(SRC).as_posix(): sorted(_top_level_imports(path) & set(EXTRAS))
        for path in SRC.rglob("*.py")
        if _top_level_imports(path) & set(EXTRAS)
    }
    assert offenders == {}


def test_import_autofact_loads_no_private_torch_replay_plotting_or_cli():
    """issue 8: ``_replay`` (which imports the private ``torch.utils._python_dispatch``) is
    imported only when ``matrix_factorization_bgd`` records, not by ``import autofact``."""
    code = (
        "import sys, autofact\n"
        "print(sorted(m for m in ('autofact._replay', 'autofact.cli', 'matplotlib', 'optuna') "
        "if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_optional_import_names_the_extra(monkeypatch):
    assert optional_import("json", extra="x", purpose="y").__name__ == "json"
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match="^" + NEEDS_PYARROW):
        optional_import("pyarrow", extra="parquet", purpose="reading Parquet")


def test_reading_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "ratings.parquet"
    path.write_bytes(b"PAR1" + bytes(64))  # detected as Parquet by its magic bytes
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=NEEDS_PYARROW):
        autofact.read(path)


def test_plotting_without_matplotlib_names_the_extra(tmp_path, monkeypatch, capsys):
    from autofact.cli import main

    data = tmp_path / "ratings.tsv"
    data.write_text("".join(f"{u}\t{i}\t{1 + (u * i) % 5}\n" for u in range(1, 9) for i in range(1, 7)))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status = main(["fit", str(data), "--out", str(tmp_path / "model.npz"), "--epochs", "1", "--quiet",
                   "--plot", str(tmp_path / "curve.png")])
    assert status != 0
    assert "plotting needs matplotlib: pip install 'autofact[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "curve.png").exists()
    assert not (tmp_path / "model.npz").exists()  # refused before the fit, nothing saved


@pytest.mark.parametrize("ci", ["true", None])
def test_missing_real_data_fails_under_ci_and_skips_elsewhere(tmp_path, monkeypatch, ci):
    """issue 8, item 15: under CI a real-data test must run, never be skipped."""
    monkeypatch.setattr(conftest, "DATASETS", tmp_path / "no-datasets")
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome, match="real data not found at .*no-datasets.*ml-100k"):
        conftest.dataset("ml-100k")
    monkeypatch.setattr(conftest, "DATASETS", tmp_path)
    assert conftest.dataset() == tmp_path  # present: returned, under CI or not


#: What a fit does not need (issue 10, item 5): loaded only where used. tqdm is imported by torch
#: itself, so for it the check is that no autofact module imports it at import time.
LAZY = ("pandas", "scipy", "matplotlib", "threadpoolctl", "tqdm", "pyarrow", "optuna", "sklearn")


def test_no_module_imports_what_a_fit_does_not_need_at_import_time():
    # issue 10 (cold start): a module-level import here would load it on `import autofact`
    offenders = {
        path.relative_to(SRC).as_posix(): sorted(_top_level_imports(path) & set(LAZY))
        for path in SRC.rglob("*.py")
        if _top_level_imports(path) & set(LAZY)
    }
    assert offenders == {}


def test_import_autofact_loads_none_of_pandas_scipy_matplotlib_threadpoolctl():
    # issue 10 (cold start): checked in a fresh process, through sys.modules
    code = (
        "import sys, autofact\n"
        f"print(sorted(m for m in {LAZY!r} if m != 'tqdm' and m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_fit_and_save_need_no_scipy_or_matplotlib(tmp_path):
    # issue 10 (cold start): an ALS fit (autofact fit --solver als) and its save run without
    # importing scipy (the seen pattern is written from its CSR arrays, never built as a scipy
    # matrix) or plotting code
    code = (
        "import sys, numpy as np, autofact\n"
        "r = autofact.Ratings.from_coo(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]),\n"
        "                              np.array([4.0, 3.0, 5.0, 1.0]))\n"
        "model = autofact.MatrixFactorization(rank=2, solver='als', epochs=2).fit(r)\n"
        f"model.save({str(tmp_path / 'm.npz')!r})\n"
        "print(sorted(m for m in ('scipy', 'matplotlib', 'optuna') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    loaded = autofact.load(tmp_path / "m.npz")
    assert loaded.index_.seen.toarray().tolist() == [[True, True, False], [False, True, False],
                                                     [False, False, True]]
