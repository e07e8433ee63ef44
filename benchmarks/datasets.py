"""Deterministic benchmark data: synthetic low-rank ratings and MovieLens 100K.

Every loader returns the same dict form::

    {
        "name": str,
        "shape": (m, n),
        "train": {"users": int32[N], "items": int32[N], "ratings": float32[N]},
        "test":  {"users": int32[T], "items": int32[T], "ratings": float32[T]},
    }

with 0-based user/item indices.

Synthetic cells are sampled as int64 flat ids ``u * n + i`` drawn *with* replacement, de-duplicated
by an in-place sort and topped up until enough distinct cells exist, then shuffled in place and
split into train/test, so train and test are disjoint and every (user, item) cell appears at most
once. This is O(N log N) time and about 2 x 8 x N bytes of transient memory (the int64 ids and the
compacted copy): ~18 MB for 1.1M cells, ~0.4 GB for the 25M shape, ~1.7 GB for the Netflix shape
(100M). It never materialises anything of size m x n. Factor products are computed in chunks so the
gathered factor rows never exceed ``chunk x rank`` floats.

Real data is read from ``../shared/datasets`` relative to the repository root (``AUTOFACT_DATASETS``
overrides); it is never copied into the project.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Named shapes (m users, n items, total ratings) used by the scale cases.
SHAPES: dict[str, tuple[int, int, int]] = {
    "ml1m": (6040, 3706, 1_000_209),
    "ml25m": (162_541, 59_047, 25_000_095),
    "netflix": (480_189, 17_770, 100_480_507),
}


def datasets_dir() -> Path:
    """Folder holding the shared real datasets (env var ``AUTOFACT_DATASETS`` overrides)."""
    env = os.environ.get("AUTOFACT_DATASETS")
    if env:
        return Path(env).expanduser().resolve()
    return (REPO_ROOT / ".." / "shared" / "datasets").resolve()


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values of ``x``; sorts ``x`` in place (np.unique is much slower here)."""
    x.sort()
    if x.size == 0:
        return x
    keep = np.empty(x.shape[0], dtype=bool)
    keep[0] = True
    np.not_equal(x[1:], x[:-1], out=keep[1:])
    return x if keep.all() else x[keep]


def _distinct_cells(rng: np.random.Generator, m: int, n: int, count: int) -> np.ndarray:
    """``count`` distinct flat ids in ``[0, m*n)``, in random order (int64)."""
    total = m * n
    if count > total:
        raise ValueError(f"cannot draw {count} distinct cells from a {m} x {n} matrix")
    if count > total // 2:
        # dense regime: a full permutation is cheaper than rejection
        return rng.permutation(total)[:count].astype(np.int64, copy=False)
    # expected duplicate fraction ~ count / (2 * total); draw a little extra up front
    extra = int(count * (count / total) * 0.6) + 1024
    flat = _sorted_unique(rng.integers(0, total, size=count + extra, dtype=np.int64))
    while flat.size < count:
        more = rng.integers(0, total, size=2 * (count - flat.size) + 1024, dtype=np.int64)
        flat = _sorted_unique(np.concatenate([flat, more]))
    rng.shuffle(flat)  # in place: the de-duplicated ids are sorted
    if flat.size > count:
        flat = flat[:count].copy()
    return flat


def _split_flat(flat: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    users = (flat // n).astype(np.int32)
    items = (flat % n).astype(np.int32)
    return users, items


def _lowrank_values(
    users: np.ndarray,
    items: np.ndarray,
    P: np.ndarray,
    QT: np.ndarray,
    mu: float,
    noise: float,
    rng: np.random.Generator,
    chunk: int = 1 << 20,
) -> np.ndarray:
    out = np.empty(users.shape[0], dtype=np.float32)
    for s in range(0, users.shape[0], chunk):
        u = users[s : s + chunk]
        i = items[s : s + chunk]
        signal = np.einsum("ij,ij->i", P[u], QT[i])
        vals = mu + signal + noise * rng.standard_normal(u.shape[0], dtype=np.float32)
        np.clip(vals, 1.0, 5.0, out=out[s : s + chunk])
    return out


def synthetic_lowrank(
    m: int = 6040,
    n: int = 3706,
    n_train: int = 1_000_000,
    n_test: int = 100_000,
    rank: int = 10,
    noise: float = 0.5,
    seed: int = 0,
    mu: float = 3.5,
) -> dict[str, Any]:
    """Ratings ``clip(mu + p_u . q_i + noise * N(0,1), 1, 5)`` on distinct random cells.

    Factor entries are N(0, rank**-1/4) (variance 1/sqrt(rank)), so the signal ``p_u . q_i`` has
    variance rank * (1/sqrt(rank))**2 = 1, i.e. std ~1 around ``mu`` = 3.5; with noise 0.5 and
    clipping the ratings spread over 1..5 with std ~1.0. The best achievable test RMSE is about
    ``noise`` (slightly less because of clipping). Fully deterministic in ``seed``.
    """
    rng = np.random.default_rng(seed)
    scale = float(rank) ** -0.25
    P = (rng.standard_normal((m, rank)) * scale).astype(np.float32)
    QT = (rng.standard_normal((n, rank)) * scale).astype(np.float32)  # Q^T, n x rank
    flat = _distinct_cells(rng, m, n, n_train + n_test)
    users, items = _split_flat(flat, n)
    del flat
    ratings = _lowrank_values(users, items, P, QT, mu, noise, rng)
    return {
        "name": f"synthetic {m}x{n} r{rank} ({n_train:,} train)",
        "shape": (m, n),
        "train": {
            "users": users[:n_train],
            "items": items[:n_train],
            "ratings": ratings[:n_train],
        },
        "test": {
            "users": users[n_train:],
            "items": items[n_train:],
            "ratings": ratings[n_train:],
        },
        "truth": {"rank": rank, "noise": noise, "mu": mu, "seed": seed},
    }


def synthetic_shape(
    shape: str, scale: float = 1.0, test_fraction: float = 0.01, rank: int = 10, seed: int = 0
) -> dict[str, Any]:
    """A named real-world shape (``ml1m``, ``ml25m``, ``netflix``) filled with synthetic ratings.

    ``scale`` < 1 multiplies the number of ratings by ``scale`` and users and items by
    ``sqrt(scale)``, so the density stays that of the real shape (for ``--quick`` runs).
    """
    m, n, total = SHAPES[shape]
    if scale != 1.0:
        m = max(int(m * scale**0.5), 10)
        n = max(int(n * scale**0.5), 10)
        total = max(int(total * scale), 1000)
    n_test = int(total * test_fraction)
    return synthetic_lowrank(m=m, n=n, n_train=total - n_test, n_test=n_test, rank=rank, seed=seed)


def movielens_like(total: int = 10_000_000, test_fraction: float = 0.1, rank: int = 10,
                   seed: int = 0) -> dict[str, Any]:
    """``total`` synthetic ratings at the ML-25M shape's density (users and items scaled by
    ``sqrt(total / 25M)``, as :func:`synthetic_shape` does), split ``1 - test_fraction`` /
    ``test_fraction`` (issue 10, item 4: 10M ratings -> 102,799 x 37,344, 9M train / 1M test).
    Seeded; the train and test cells are disjoint."""
    return synthetic_shape("ml25m", scale=total / SHAPES["ml25m"][2],
                           test_fraction=test_fraction, rank=rank, seed=seed)


def _read_ml100k_file(path: Path) -> np.ndarray:
    # user \t item \t rating \t timestamp
    return np.loadtxt(path, dtype=np.int64, delimiter="\t", usecols=(0, 1, 2))


def movielens_100k(split: int | str = 1) -> dict[str, Any]:
    """MovieLens 100K canonical split ``u{split}.base`` / ``u{split}.test`` (1..5, a, b).

    User and item ids are mapped to 0-based indices over the union of base and test ids (sorted, so
    for ML-100K this is simply ``id - 1``); the shape covers both files.
    """
    folder = datasets_dir() / "ml-100k"
    base_path = folder / f"u{split}.base"
    test_path = folder / f"u{split}.test"
    if not base_path.exists():
        raise FileNotFoundError(
            f"{base_path} not found; set AUTOFACT_DATASETS to the folder holding ml-100k/"
        )
    base = _read_ml100k_file(base_path)
    test = _read_ml100k_file(test_path)
    user_ids, user_idx = np.unique(np.concatenate([base[:, 0], test[:, 0]]), return_inverse=True)
    item_ids, item_idx = np.unique(np.concatenate([base[:, 1], test[:, 1]]), return_inverse=True)
    nb = base.shape[0]
    user_idx = user_idx.astype(np.int32)
    item_idx = item_idx.astype(np.int32)
    return {
        "name": f"MovieLens 100K u{split}",
        "shape": (int(user_ids.size), int(item_ids.size)),
        "train": {
            "users": user_idx[:nb],
            "items": item_idx[:nb],
            "ratings": base[:, 2].astype(np.float32),
        },
        "test": {
            "users": user_idx[nb:],
            "items": item_idx[nb:],
            "ratings": test[:, 2].astype(np.float32),
        },
        "ids": {"users": user_ids, "items": item_ids},
    }


def quuxlabs_example() -> np.ndarray:
    """The 5 x 4 toy matrix from the quuxlabs tutorial (0 = missing)."""
    return np.array(
        [[5, 3, 0, 1], [4, 0, 0, 1], [1, 1, 0, 5], [1, 0, 0, 4], [0, 1, 5, 4]], dtype=np.float64
    )


def nbytes(d: dict[str, Any]) -> int:
    """Bytes held by the train + test rating arrays."""
    return sum(int(a.nbytes) for part in ("train", "test") for a in d[part].values())


def _holdout(name: str, users: np.ndarray, items: np.ndarray, ratings: np.ndarray,
             fraction: float = 0.9, seed: int = 0) -> dict[str, Any]:
    """The issues' 90/10 split: ``default_rng(seed).permutation`` of the rows, first 90% train;
    ids mapped to 0-based indices over all rows."""
    user_ids, u = np.unique(users, return_inverse=True)
    item_ids, i = np.unique(items, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(ratings))
    cut = int(fraction * len(ratings))
    tr, te = order[:cut], order[cut:]

    def part(rows: np.ndarray) -> dict[str, np.ndarray]:
        return {"users": u[rows].astype(np.int32), "items": i[rows].astype(np.int32),
                "ratings": ratings[rows].astype(np.float32)}

    return {"name": name, "shape": (int(user_ids.size), int(item_ids.size)),
            "train": part(tr), "test": part(te), "ids": {"users": user_ids, "items": item_ids}}


def ml_latest_small() -> dict[str, Any]:
    """MovieLens latest-small ``ratings.csv``, 90/10 seeded split."""
    path = datasets_dir() / "ml-latest-small" / "ratings.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; set AUTOFACT_DATASETS")
    a = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1, 2))
    return _holdout("ml-latest-small 90/10", a[:, 0].astype(np.int64), a[:, 1].astype(np.int64),
                    a[:, 2])


def filmtrust() -> dict[str, Any]:
    """FilmTrust ``ratings.txt``, duplicate pairs keeping the last, then the 90/10 seeded split."""
    path = datasets_dir() / "filmtrust" / "ratings.txt"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; set AUTOFACT_DATASETS")
    a = np.loadtxt(path, usecols=(0, 1, 2))
    u, i = a[:, 0].astype(np.int64), a[:, 1].astype(np.int64)
    key = u * (int(i.max()) + 1) + i
    # last occurrence of each pair, in file order
    _, last_rev = np.unique(key[::-1], return_index=True)
    keep = np.sort(len(key) - 1 - last_rev)
    return _holdout("filmtrust 90/10", u[keep], i[keep], a[keep, 2])


def sparse_reviews(
    m: int = 17_615,
    n: int = 16_121,
    total: int = 72_345,
    exponent: float = 0.8,
    rank: int = 10,
    noise: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    """A review site's shape (issue 10, item 3): ``m`` users and ``n`` items, ``total`` ratings,
    every user and every item rated at least once, ratings per user and per item following a
    power law (the ``r``-th most active has weight ``r**-exponent``), then the 90/10 seeded split.

    Values are ``clip(3.5 + b_u + b_i + p_u . q_i + noise * N(0,1), 1, 5)`` with biases
    N(0, 0.5^2) and the factors of :func:`synthetic_lowrank`. Fully deterministic in ``seed``.
    """
    if total < max(m, n):
        raise ValueError(f"total={total} ratings cannot cover {m} users and {n} items")
    rng = np.random.default_rng(seed)

    def power_law(size: int) -> np.ndarray:
        w = np.arange(1, size + 1, dtype=np.float64) ** -exponent
        return rng.permutation(w / w.sum())

    # users: one rating each, the rest spread by the power law (none beyond n)
    u_w = power_law(m)
    counts = 1 + rng.multinomial(total - m, u_w)
    while counts.max() > n:  # practically never at these sizes
        over = counts - n
        counts = np.minimum(counts, n)
        counts += rng.multinomial(int(over[over > 0].sum()), u_w)
    users = rng.permutation(np.repeat(np.arange(m), counts))
    # items: the first n ratings give every item one, the rest follow the item power law
    i_w = power_law(n)
    items = np.empty(total, dtype=np.int64)
    items[:n] = rng.permutation(n)
    items[n:] = rng.choice(n, size=total - n, p=i_w)
    # a user rates an item once: redraw the later of two equal cells (the guaranteed first n
    # are earlier, so they stay)
    for _ in range(1000):
        key = users.astype(np.int64) * n + items
        _, first = np.unique(key, return_index=True)
        dup = np.ones(total, dtype=bool)
        dup[first] = False
        if not dup.any():
            break
        items[dup] = rng.choice(n, size=int(dup.sum()), p=i_w)
    else:
        raise RuntimeError("could not draw distinct cells")
    scale = float(rank) ** -0.25
    P = (rng.standard_normal((m, rank)) * scale).astype(np.float32)
    QT = (rng.standard_normal((n, rank)) * scale).astype(np.float32)
    bu = (0.5 * rng.standard_normal(m)).astype(np.float32)
    bi = (0.5 * rng.standard_normal(n)).astype(np.float32)
    signal = np.einsum("ij,ij->i", P[users], QT[items]) + bu[users] + bi[items]
    ratings = np.clip(3.5 + signal + noise * rng.standard_normal(total), 1.0, 5.0)
    return _holdout(f"sparse reviews {m:,}x{n:,} ({total:,} ratings)", users, items,
                    ratings.astype(np.float32), seed=seed)
