"""The default model on a few ratings in a wide declared shape (trust: the sampler's spectral
start took the density over the whole shape, scaled the factors by 1/sqrt(rho) and crashed with
LinAlgError at sweep 1 when most users and items had no rating)."""

import numpy as np
import pytest

import autofact


def _few_in_wide(m: int, n: int, count: int, seed: int = 0) -> autofact.Ratings:
    rng = np.random.default_rng(seed)
    u = rng.integers(0, m, count)
    i = rng.integers(0, n, count)
    keep = np.unique(u * n + i, return_index=True)[1]
    r = rng.integers(1, 6, count).astype(float)
    return autofact.Ratings(u[keep], i[keep], r[keep], shape=(m, n))


@pytest.mark.parametrize("shape", [(102_799, 37_344), (40_000, 20_000)])
def test_default_fit_on_few_ratings_in_a_wide_shape(shape: tuple[int, int]) -> None:
    # issue 10 review (trust): 1,000 ratings, rho 2.6e-7 over the whole shape
    R = _few_in_wide(*shape, count=1000)
    model = autofact.MatrixFactorization(seed=0, epochs=5).fit(R)
    assert model.solver_ == "gibbs"
    pred = np.asarray(model.predict_indices(R.users, R.items))
    assert np.isfinite(pred).all()
    rmse = float(np.sqrt(np.mean((pred - R.values) ** 2)))
    assert rmse < float(np.std(R.values)) + 0.05  # no worse than the mean, give or take


def test_spectral_start_density_counts_rated_rows_only() -> None:
    # the same ratings in a shape with 10x the users and items, none of the extra ones rated,
    # give the same start (item factors of the rated items, precisions): rows without a rating
    # have no part in the residual matrix, so they must not dilute its density
    from autofact.solvers import gibbs

    from .test_gibbs_start import _sides

    R = _few_in_wide(300, 200, count=3000)
    u, i, r = R.users, R.items, R.values
    starts = []
    for m, n in ((300, 200), (3000, 2000)):
        u_side, i_side = _sides(u, i, r, m, n)
        starts.append(gibbs._spectral_start(np.random.default_rng(0), u_side, i_side, 3, len(r),
                                            None))
    (Q_a, c_a, lu_a, li_a), (Q_b, c_b, lu_b, li_b) = starts
    rated = np.unique(i)
    np.testing.assert_allclose(lu_b, lu_a, rtol=1e-6)
    np.testing.assert_allclose(li_b, li_a, rtol=1e-6)
    np.testing.assert_allclose(np.abs(Q_b[rated]), np.abs(Q_a[rated]), rtol=1e-4, atol=1e-6)
