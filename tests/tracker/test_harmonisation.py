"""ComBat and MR intensity standardisation against known truths."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tracker.errors import MetatrackError
from tracker.harmonisation import (
    CombatModel,
    NyulModel,
    apply_combat,
    apply_nyul,
    fit_combat,
    fit_nyul,
    zscore_in_mask,
    zscore_stats,
)

# A small three-site data set and neuroCombat 0.2.12's output for it (covariate: age, continuous), computed
# once with numpy 2.3.5 / pandas 2.3.3 in a separate environment and rounded to 6 decimals.
X = [[2.91, 4.63, 6.12], [4.86, 4.25, 5.9], [7.75, 6.15, 3.53], [5.12, 5.69, 6.7], [3.13, 4.62, 10.61],
     [4.36, 5.7, 8.52], [7.36, 6.57, 7.85], [-1.11, 7.08, 6.79], [5.12, 7.81, 6.46], [2.64, 2.72, 4.86],
     [3.68, 4.84, 4.75], [4.21, 4.81, 3.8], [3.14, 4.3, 4.58], [4.06, 3.56, 3.99], [2.95, 4.83, 3.78]]  # fmt: skip
SITES = ["s1"] * 4 + ["s2"] * 5 + ["s3"] * 6
AGE = [43.0, 49.0, 72.0, 63.0, 44.0, 57.0, 59.0, 46.0, 69.0, 45.0, 56.0, 61.0, 57.0, 63.0, 70.0]
NEUROCOMBAT_PARAMETRIC = [
    [1.863163, 4.778712, 6.255972], [4.349955, 4.008864, 6.039291], [7.192546, 6.057767, 3.657065],
    [3.892802, 5.678283, 6.868499], [2.50941, 3.715478, 8.037697], [3.910148, 4.730244, 6.378751],
    [5.897304, 5.332256, 5.903089], [-0.066884, 5.324775, 5.569313], [4.966528, 6.372098, 4.764691],
    [4.085201, 3.681969, 5.94904], [4.960646, 6.0276, 6.379308], [5.439917, 5.934917, 4.94444],
    [4.139014, 5.386259, 6.128566], [5.117492, 4.453965, 5.403108], [3.158155, 5.854395, 5.42329],
]  # fmt: skip
NEUROCOMBAT_NONPARAMETRIC = [
    [3.19563, 4.676512, 5.377457], [5.114248, 4.412631, 5.343822], [8.007019, 6.26828, 2.287334],
    [5.416175, 5.784297, 7.783802], [0.808703, 3.576703, 8.136357], [2.196382, 4.592579, 6.436882],
    [4.261008, 5.199154, 5.942947], [-1.894843, 5.200481, 5.540888], [3.230093, 6.242403, 4.780892],
    [5.111249, 2.571673, 6.400362], [6.159649, 5.230003, 6.276773], [6.692238, 5.050449, 5.338969],
    [5.634026, 4.448215, 6.108804], [6.55104, 3.249423, 5.522211], [5.484397, 4.830615, 5.306421],
]  # fmt: skip
# neuroCombat's convergence test differs slightly from ours (it divides by signed gamma), so the two agree to
# about 1e-6, not to machine precision.
NEUROCOMBAT_ATOL = 1e-4


@pytest.mark.parametrize(
    ("parametric", "expected"), [(True, NEUROCOMBAT_PARAMETRIC), (False, NEUROCOMBAT_NONPARAMETRIC)]
)
def test_combat_matches_neurocombat(parametric: bool, expected: list[list[float]]) -> None:
    x, age = np.array(X), np.array(AGE)[:, None]
    model = fit_combat(x, SITES, age, parametric=parametric)
    np.testing.assert_allclose(apply_combat(model, x, SITES, age), expected, atol=NEUROCOMBAT_ATOL)


def _simulate(rng: np.random.Generator, n_per_site: int, beta: np.ndarray):
    """Three sites with known additive/multiplicative effects and a known age effect."""
    offsets, scales = np.array([0.0, 3.0, -2.0]), np.array([1.0, 2.0, 0.5])
    site = np.repeat(np.arange(3), n_per_site)
    age = rng.uniform(30, 80, site.size)
    noise = rng.normal(0, 1, (site.size, beta.size))
    x = 10 + np.outer(age - 55, beta) + noise * scales[site, None] + offsets[site, None]
    return x, site, age


def _site_stats(x: np.ndarray, site: np.ndarray, age: np.ndarray, beta: np.ndarray):
    resid = x - np.outer(age - 55, beta)
    means = np.array([resid[site == s].mean(axis=0) for s in range(3)])
    sds = np.array([resid[site == s].std(axis=0, ddof=1) for s in range(3)])
    return means, sds


def test_combat_removes_site_effects_and_keeps_covariate() -> None:
    rng = np.random.default_rng(11)
    beta = np.array([0.2, -0.1, 0.05, 0.0])
    x, site, age = _simulate(rng, 150, beta)
    means, sds = _site_stats(x, site, age, beta)
    assert np.ptp(means, axis=0).min() > 4.5 and (sds.max(axis=0) / sds.min(axis=0)).min() > 3.5

    model = fit_combat(x, site, age[:, None])
    np.testing.assert_allclose(model.beta_covariates[0], beta, atol=0.015)
    h = apply_combat(model, x, site, age[:, None])
    means, sds = _site_stats(h, site, age, beta)
    assert np.ptp(means, axis=0).max() < 0.35  # was 5 (site offsets 3 and -2)
    assert (sds.max(axis=0) / sds.min(axis=0)).max() < 1.3  # was 4 (site scales 2 and 0.5)
    slope = np.linalg.lstsq(np.c_[np.ones(age.size), age, np.eye(3)[site][:, 1:]], h, rcond=None)[0][1]
    np.testing.assert_allclose(slope, beta, atol=0.015)


def test_combat_parametric_posterior_is_closed_form_fixed_point() -> None:
    x, age = np.array(X), np.array(AGE)[:, None]
    sites = np.array(SITES)
    model = fit_combat(x, sites, age)
    # Standardise independently: OLS on [site indicators, age], sample-weighted grand mean, pooled variance.
    design = np.c_[(sites[:, None] == np.array(["s1", "s2", "s3"])).astype(float), age]
    coef = np.linalg.lstsq(design, x, rcond=None)[0]
    grand = np.array([4, 5, 6]) @ coef[:3] / 15
    var = ((x - design @ coef) ** 2).mean(axis=0)
    z = (x - grand - age * coef[3]) / np.sqrt(var)
    for k, s in enumerate(["s1", "s2", "s3"]):
        zk = z[sites == s]
        n = zk.shape[0]
        g_hat, d_hat = zk.mean(axis=0), zk.var(axis=0, ddof=1)
        g_bar, tau2 = g_hat.mean(), g_hat.var(ddof=1)
        m, s2 = d_hat.mean(), d_hat.var(ddof=1)
        a, b = (2 * s2 + m**2) / s2, (m * s2 + m**3) / s2
        g_star, d_star = model.gamma_star[k], model.delta_star[k]
        np.testing.assert_allclose(g_star, (n * tau2 * g_hat + d_star * g_bar) / (n * tau2 + d_star), rtol=1e-3)
        np.testing.assert_allclose(d_star, (b + 0.5 * ((zk - g_star) ** 2).sum(axis=0)) / (n / 2 + a - 1), rtol=1e-3)


def test_combat_new_samples_roundtrip_and_unknown_batch() -> None:
    rng = np.random.default_rng(5)
    beta = np.array([0.1, 0.3, -0.2])
    x, site, age = _simulate(rng, 400, beta)
    train = np.arange(site.size) % 4 != 0
    model = fit_combat(x[train], site[train], age[train, None])
    stored = CombatModel.from_dict(json.loads(json.dumps(model.to_dict())))
    new = apply_combat(stored, x[~train], site[~train], age[~train, None])
    np.testing.assert_allclose(new, apply_combat(model, x[~train], site[~train], age[~train, None]))
    means, _ = _site_stats(new, site[~train], age[~train], beta)
    assert np.ptp(means, axis=0).max() < 0.6  # held-out site offsets (0, 3, -2) removed
    with pytest.raises(MetatrackError, match="'7'"):
        apply_combat(model, x[:2], [0, 7], age[:2, None])


def test_combat_constant_feature_passes_through() -> None:
    x, age = np.array(X), np.array(AGE)[:, None]
    x1 = np.c_[x, np.ones(len(X))]  # e.g. ngl_dc_perc, always 1
    h = apply_combat(fit_combat(x1, SITES, age), x1, SITES, age)
    np.testing.assert_array_equal(h[:, -1], 1.0)
    np.testing.assert_allclose(h[:, :3], NEUROCOMBAT_PARAMETRIC, atol=NEUROCOMBAT_ATOL)


def test_combat_rejects_bad_input() -> None:
    x = np.array(X)
    with pytest.raises(MetatrackError, match="'s1'"):
        fit_combat(x[3:], SITES[3:])  # s1 keeps one sample
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(MetatrackError, match="sample 2, feature 1"):
        fit_combat(bad, SITES)


def _phantom_mr(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A body with three tissues on a dark background."""
    zz, yy, xx = np.mgrid[:16, :32, :32]
    r = np.sqrt((yy - 16) ** 2 + (xx - 16) ** 2)
    body = r < 13
    img = np.where(body, 300.0, 5.0) + np.where(r < 8, 200.0, 0.0) + np.where(r < 3, 300.0, 0.0)
    img = img + np.where(body, 40.0, 2.0) * rng.normal(size=img.shape) + zz
    return img, body


def test_nyul_linear_rescalings_map_to_same_standard_scale() -> None:
    rng = np.random.default_rng(2)
    train = [_phantom_mr(rng) for _ in range(3)]
    train = [(img * (1 + 0.5 * n) + 40 * n, body) for n, (img, body) in enumerate(train)]
    model = fit_nyul(train)
    model = NyulModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert model.standard_landmarks[0] == 0.0 and model.standard_landmarks[-1] == pytest.approx(100.0)
    img, body = _phantom_mr(rng)
    a = apply_nyul(model, img, body)
    b = apply_nyul(model, 3.7 * img - 250.0, body)
    np.testing.assert_allclose(a, b, atol=1e-9)
    # The image's own landmarks land on the standard landmarks (up to percentile interpolation between two
    # samples that straddle a breakpoint of the piecewise-linear map).
    np.testing.assert_allclose(np.percentile(a[body], model.percentiles), model.standard_landmarks, atol=1e-3)


def test_nyul_rejects_flat_histogram() -> None:
    img = np.zeros((4, 4, 4))
    img[0, 0, 0] = 1.0
    with pytest.raises(MetatrackError, match="not strictly increasing"):
        fit_nyul([(img, None)])


def test_zscore_in_mask() -> None:
    img, body = _phantom_mr(np.random.default_rng(4))
    z = zscore_in_mask(img, body)
    assert z[body].mean() == pytest.approx(0.0, abs=1e-12) and z[body].std() == pytest.approx(1.0)
    np.testing.assert_allclose(zscore_in_mask(2.5 * img + 100, body), z, atol=1e-9)
    with pytest.raises(MetatrackError, match="empty"):
        zscore_in_mask(img, np.zeros_like(body))
    flat = np.where(body, 120.0, img)  # constant inside the body: the z-score is undefined, refused
    with pytest.raises(MetatrackError, match="constant"):
        zscore_in_mask(flat, body)


def test_zscore_stats_one_rule_for_sd_zero() -> None:
    values = np.array([1.0, 2.0, 4.0, 7.0])
    assert zscore_stats(values, "x") == (values.mean(), values.std())
    assert zscore_stats(values.astype(np.int16), "x") == (values.mean(), values.std())
    for flat in (np.zeros(5), np.full(7, 0.1), np.full(3, -1e6), np.array([1.0, np.nan])):
        with pytest.raises(MetatrackError, match=r"^x are constant"):
            zscore_stats(flat, "x")
    with pytest.raises(MetatrackError, match="no values"):
        zscore_stats(np.array([]), "x")
