"""Feature and intensity harmonisation across scanners and sites.

- ComBat (Johnson, Li & Rabinovic, Biostatistics 2007; in the neuroCombat form of Fortin et al., NeuroImage
  2017/2018): empirical-Bayes location/scale adjustment of features per batch (site or scanner), preserving
  the effects of biological covariates. ``fit_combat`` estimates a model once; ``apply_combat`` harmonises
  training or new samples of known batches with it.
- MR intensity standardisation: z-score within a body mask, and Nyúl-Udupa piecewise-linear histogram
  standardisation (Nyúl, Udupa & Zhang, IEEE TMI 2000).

Models are dataclasses of plain arrays with ``to_dict()/from_dict()`` (JSON-serialisable) for storage.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tracker.errors import MetatrackError

# Parametric EB: stop when the largest relative change of gamma*/delta* falls below this (as neuroCombat).
EB_CONVERGENCE = 1e-4
EB_MAX_ITERATIONS = 1000
# A feature whose pooled residual variance is below this is constant: it is passed through unchanged (it has
# no batch effect to remove, and one constant feature must not stop the others being harmonised). This is not a
# z-score of values: see ``zscore_stats`` for that, which refuses constant values.
CONSTANT_VARIANCE = 1e-12
# z-score statistics: an SD at most this fraction of |mean| is rounding noise of constant values (their mean is
# not always exact in floating point), i.e. SD 0.
ZSCORE_MIN_RELATIVE_SD = 1e-12
COMBAT_FORMAT = 1
NYUL_FORMAT = 1
# Nyúl-Udupa defaults: landmarks at the 1st/99th percentile (min/max of the standard scale) and the deciles.
NYUL_PERCENTILES: tuple[float, ...] = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)
NYUL_STANDARD_RANGE: tuple[float, float] = (0.0, 100.0)


# --------------------------------------------------------------------------------------------------- ComBat


@dataclass
class CombatModel:
    """A fitted ComBat model.

    Attributes
    ----------
    batches : batch labels (as strings), in the row order of ``gamma_star``/``delta_star``.
    batch_sizes : training samples per batch.
    grand_mean : (n_features,) sample-weighted mean of the batch intercepts.
    var_pooled : (n_features,) pooled residual variance.
    beta_covariates : (n_covariates, n_features) regression coefficients of the biological covariates.
    gamma_star : (n_batches, n_features) EB additive batch effects (standardised units).
    delta_star : (n_batches, n_features) EB multiplicative batch effects (variance ratios).
    parametric : whether parametric priors were used.
    """

    batches: list[str]
    batch_sizes: list[int]
    grand_mean: np.ndarray
    var_pooled: np.ndarray
    beta_covariates: np.ndarray
    gamma_star: np.ndarray
    delta_star: np.ndarray
    parametric: bool = True

    @property
    def n_features(self) -> int:
        """Number of features the model harmonises."""
        return int(self.grand_mean.shape[0])

    @property
    def n_covariates(self) -> int:
        """Number of biological covariate columns the model expects."""
        return int(self.beta_covariates.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable representation (lists of floats)."""
        return {
            "kind": "combat",
            "format": COMBAT_FORMAT,
            "batches": list(self.batches),
            "batch_sizes": [int(n) for n in self.batch_sizes],
            "grand_mean": self.grand_mean.tolist(),
            "var_pooled": self.var_pooled.tolist(),
            "beta_covariates": self.beta_covariates.tolist(),
            "gamma_star": self.gamma_star.tolist(),
            "delta_star": self.delta_star.tolist(),
            "parametric": bool(self.parametric),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CombatModel:
        """Rebuild a model written by ``to_dict``."""
        if data.get("kind") != "combat" or data.get("format") != COMBAT_FORMAT:
            raise MetatrackError(
                f"ComBat model dict has kind={data.get('kind')!r} format={data.get('format')!r}; "
                f"expected kind='combat' format={COMBAT_FORMAT}"
            )
        n_features = len(data["grand_mean"])
        return cls(
            batches=[str(b) for b in data["batches"]],
            batch_sizes=[int(n) for n in data["batch_sizes"]],
            grand_mean=np.asarray(data["grand_mean"], dtype=np.float64),
            var_pooled=np.asarray(data["var_pooled"], dtype=np.float64),
            beta_covariates=np.asarray(data["beta_covariates"], dtype=np.float64).reshape(-1, n_features),
            gamma_star=np.asarray(data["gamma_star"], dtype=np.float64),
            delta_star=np.asarray(data["delta_star"], dtype=np.float64),
            parametric=bool(data["parametric"]),
        )


def _as_features(features: np.ndarray, name: str = "features") -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise MetatrackError(f"ComBat {name} has shape {x.shape}; expected (n_samples, n_features)")
    if not np.all(np.isfinite(x)):
        rows, cols = np.nonzero(~np.isfinite(x))
        raise MetatrackError(
            f"ComBat {name} contain NaN/inf (first at sample {rows[0]}, feature {cols[0]}); "
            "drop or impute those values before harmonising"
        )
    return x


def _as_covariates(covariates: np.ndarray | None, n_samples: int) -> np.ndarray:
    if covariates is None:
        return np.zeros((n_samples, 0))
    c = np.asarray(covariates, dtype=np.float64)
    c = c[:, None] if c.ndim == 1 else c
    if c.ndim != 2 or c.shape[0] != n_samples:
        raise MetatrackError(f"ComBat covariates have shape {c.shape}; expected ({n_samples}, n_covariates)")
    if not np.all(np.isfinite(c)):
        raise MetatrackError("ComBat covariates contain NaN/inf; impute or drop those samples first")
    return c


def _batch_labels(batch: Sequence[Any] | np.ndarray, n_samples: int) -> np.ndarray:
    labels = np.asarray([str(b) for b in np.asarray(batch).ravel()])
    if labels.shape[0] != n_samples:
        raise MetatrackError(f"ComBat batch has {labels.shape[0]} labels for {n_samples} samples")
    return labels


def _eb_parametric(s_data: np.ndarray, gamma_hat: np.ndarray, delta_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parametric EB posterior (gamma*, delta*) of one batch by fixed-point iteration.

    Priors: gamma ~ N(gamma_bar, tau^2) and delta ~ InverseGamma(a, b), moments estimated across features.
    ``s_data`` is (n_samples_in_batch, n_features) standardised data.
    """
    n = s_data.shape[0]
    gamma_bar = gamma_hat.mean()
    tau2 = gamma_hat.var(ddof=1)
    m, s2 = delta_hat.mean(), delta_hat.var(ddof=1)
    a_prior = (2.0 * s2 + m**2) / s2
    b_prior = (m * s2 + m**3) / s2
    g_old, d_old = gamma_hat.copy(), delta_hat.copy()
    for _ in range(EB_MAX_ITERATIONS):
        g_new = (tau2 * n * gamma_hat + d_old * gamma_bar) / (tau2 * n + d_old)
        sum2 = ((s_data - g_new) ** 2).sum(axis=0)
        d_new = (0.5 * sum2 + b_prior) / (n / 2.0 + a_prior - 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            change = max(np.nanmax(np.abs(g_new - g_old) / np.abs(g_old)), np.nanmax(np.abs(d_new - d_old) / d_old))
        g_old, d_old = g_new, d_new
        if change < EB_CONVERGENCE:
            break
    return g_old, d_old


def _eb_nonparametric(
    s_data: np.ndarray, gamma_hat: np.ndarray, delta_hat: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Non-parametric EB: each feature's posterior mean over the other features' (gamma, delta) estimates,
    weighted by the normal likelihood of its data (computed in log space to avoid underflow)."""
    n = s_data.shape[0]
    # sum2[k, f]: residual sum of squares of feature f's data around candidate gamma_hat[k].
    sq = (s_data**2).sum(axis=0)
    sums = s_data.sum(axis=0)
    sum2 = sq[None, :] - 2.0 * gamma_hat[:, None] * sums[None, :] + n * gamma_hat[:, None] ** 2
    log_lh = -0.5 * n * np.log(2.0 * np.pi * delta_hat[:, None]) - sum2 / (2.0 * delta_hat[:, None])
    np.fill_diagonal(log_lh, -np.inf)  # leave the feature's own estimate out
    w = np.exp(log_lh - log_lh.max(axis=0, keepdims=True))
    w /= w.sum(axis=0, keepdims=True)
    return (w * gamma_hat[:, None]).sum(axis=0), (w * delta_hat[:, None]).sum(axis=0)


def fit_combat(
    features: np.ndarray,
    batch: Sequence[Any] | np.ndarray,
    covariates: np.ndarray | None = None,
    parametric: bool = True,
) -> CombatModel:
    """Estimate a ComBat model.

    Parameters
    ----------
    features : (n_samples, n_features) feature values, no NaN.
    batch : (n_samples,) site/scanner labels (compared as strings).
    covariates : (n_samples, n_covariates) numeric biological covariates whose effects are preserved
        (one-hot encode categorical covariates, dropping one level); None for none.
    parametric : parametric (normal / inverse-gamma) priors, else the non-parametric EB estimate.

    Returns
    -------
    CombatModel. Features with zero pooled variance are kept unchanged by ``apply_combat``.
    """
    x = _as_features(features)
    n_samples, n_features = x.shape
    labels = _batch_labels(batch, n_samples)
    cov = _as_covariates(covariates, n_samples)
    batches, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    if batches.size < 2:
        raise MetatrackError(f"ComBat needs at least 2 batches; got only {batches.tolist()}")
    small = batches[sizes < 2]
    if small.size:
        raise MetatrackError(f"ComBat batch {small[0]!r} has fewer than 2 samples; its variance is undefined")
    onehot = np.eye(batches.size)[inverse]
    design = np.hstack([onehot, cov])
    if np.linalg.matrix_rank(design) < design.shape[1]:
        raise MetatrackError(
            "ComBat design (batch indicators + covariates) is rank deficient: a covariate is constant within "
            "batches or confounded with batch; drop it or merge batches"
        )
    beta, *_ = np.linalg.lstsq(design, x, rcond=None)
    grand_mean = (sizes / n_samples) @ beta[: batches.size]
    var_pooled = ((x - design @ beta) ** 2).mean(axis=0)
    beta_cov = beta[batches.size :]
    varying = var_pooled > CONSTANT_VARIANCE
    stand_mean = grand_mean + cov @ beta_cov
    s_data = (x[:, varying] - stand_mean[:, varying]) / np.sqrt(var_pooled[varying])

    gamma_star = np.zeros((batches.size, n_features))
    delta_star = np.ones((batches.size, n_features))
    if varying.sum() >= 2:
        estimate = _eb_parametric if parametric else _eb_nonparametric
        for k in range(batches.size):
            z = s_data[inverse == k]
            g, d = estimate(z, z.mean(axis=0), z.var(axis=0, ddof=1))
            gamma_star[k, varying], delta_star[k, varying] = g, d
    elif varying.any():
        raise MetatrackError("ComBat needs at least 2 non-constant features to estimate its priors")
    return CombatModel(
        batches=batches.tolist(),
        batch_sizes=sizes.tolist(),
        grand_mean=grand_mean,
        var_pooled=var_pooled,
        beta_covariates=beta_cov,
        gamma_star=gamma_star,
        delta_star=delta_star,
        parametric=parametric,
    )


def apply_combat(
    model: CombatModel,
    features: np.ndarray,
    batch: Sequence[Any] | np.ndarray,
    covariates: np.ndarray | None = None,
) -> np.ndarray:
    """Harmonise samples of batches the model knows (training samples or new ones).

    Raises MetatrackError naming the batch when a label was not in the training data (refit instead).
    """
    x = _as_features(features)
    n_samples = x.shape[0]
    if x.shape[1] != model.n_features:
        raise MetatrackError(f"ComBat features have {x.shape[1]} columns; the model expects {model.n_features}")
    labels = _batch_labels(batch, n_samples)
    cov = _as_covariates(covariates, n_samples)
    if cov.shape[1] != model.n_covariates:
        raise MetatrackError(
            f"ComBat covariates have {cov.shape[1]} columns; the model was fitted with {model.n_covariates}"
        )
    index = {b: k for k, b in enumerate(model.batches)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise MetatrackError(
            f"ComBat batch {unknown[0]!r} is not in the fitted model (known: {model.batches}); "
            "refit the model including this batch"
        )
    k = np.array([index[b] for b in labels], dtype=np.int64)
    stand_mean = model.grand_mean + cov @ model.beta_covariates
    varying = model.var_pooled > CONSTANT_VARIANCE
    sd = np.sqrt(np.where(varying, model.var_pooled, 1.0))
    adjusted = (x - stand_mean) / sd
    adjusted = (adjusted - model.gamma_star[k]) / np.sqrt(model.delta_star[k])
    return np.where(varying, adjusted * sd + stand_mean, x)


# ------------------------------------------------------------------------------------ intensity (MR) scales


def _mask_values(image: np.ndarray, mask: np.ndarray | None, what: str) -> np.ndarray:
    img = np.asarray(image, dtype=np.float64)
    if mask is None:
        return img.ravel()
    m = np.asarray(mask, dtype=bool)
    if m.shape != img.shape:
        raise MetatrackError(f"{what}: mask shape {m.shape} differs from image shape {img.shape}")
    if not m.any():
        raise MetatrackError(f"{what}: mask is empty")
    return img[m]


def zscore_stats(values: np.ndarray, what: str) -> tuple[float, float]:
    """Mean and SD (population, in float64) of ``values`` for a z-score ``(x - mean) / sd``.

    The one rule for an SD of 0, used by this module's ``zscore_in_mask`` and by radiomics' z-score
    normalisation: constant values (SD 0 up to rounding, ``ZSCORE_MIN_RELATIVE_SD``) or non-finite ones raise
    MetatrackError naming ``what``. A z-score is undefined there; dividing by 1 instead would give values still
    in the image's own units (outside the reference region, where they are not constant), passing silently
    for z-scores.
    """
    arr = np.asarray(values)
    if arr.size == 0:
        raise MetatrackError(f"{what}: no values to take the z-score mean and SD from")
    mean = float(arr.mean(dtype=np.float64))
    sd = float(arr.std(dtype=np.float64))
    if not (np.isfinite(sd) and sd > ZSCORE_MIN_RELATIVE_SD * abs(mean)):
        raise MetatrackError(f"{what} are constant (SD 0) or not finite; their z-score is undefined")
    return mean, sd


def zscore_in_mask(image: np.ndarray, body_mask: np.ndarray) -> np.ndarray:
    """Return ``(image - mean) / sd`` with mean and SD taken inside ``body_mask`` (whole image rescaled)."""
    values = _mask_values(image, body_mask, "z-score")
    mean, sd = zscore_stats(values, "z-score: intensities inside the body mask")
    return (np.asarray(image, dtype=np.float64) - mean) / sd


#: the foreground may cover at most this fraction of the image's outer faces (else there is no background)
BACKGROUND_BORDER_FRACTION = 0.5
#: the darker Otsu class must sit below this fraction of the brighter one's level (above 0, or above the image
#: minimum where it is negative): air on MR is a few percent of tissue; two tissues are not body and air
BACKGROUND_LEVEL = 0.25


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Body (foreground) mask of an MR image: above the Otsu threshold, largest 26-connected component, holes
    filled slice by slice (axial) and in 3D.

    For z-scoring MR intensities in the body instead of over air. Raises where the image has no dark background:
    when most voxels of its outer faces lie above the threshold (a field of view inside the body), Otsu would
    split tissues instead.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 3 or img.size == 0 or not np.isfinite(img).all():
        raise MetatrackError(f"foreground mask: expected a finite 3D image, got shape {img.shape}")
    if img.min() == img.max():
        raise MetatrackError("foreground mask: the image is constant")
    fg = img > threshold_otsu(img)
    faces = [fg[0], fg[-1], fg[:, 0], fg[:, -1], fg[:, :, 0], fg[:, :, -1]]
    low = min(float(img.min()), 0.0)  # MR magnitudes start at 0; a shifted scale is measured from its minimum
    dark_level = (float(img[~fg].mean()) - low) / max(float(img[fg].mean()) - low, 1e-12)
    if (
        sum(int(f.sum()) for f in faces) > BACKGROUND_BORDER_FRACTION * sum(f.size for f in faces)
        or dark_level > BACKGROUND_LEVEL
    ):
        raise MetatrackError(
            "foreground mask: the image has no dark background around the body (bright edges, or a darker "
            f"class at {dark_level:.0%} of the brighter one's level)"
        )
    labels, n = ndimage.label(fg, structure=np.ones((3, 3, 3), dtype=bool))
    if n > 1:
        fg = labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    fg = np.stack([ndimage.binary_fill_holes(sl) for sl in fg])
    return ndimage.binary_fill_holes(fg)


@dataclass
class NyulModel:
    """Nyúl-Udupa standard histogram: image percentiles mapped onto standard landmarks.

    Attributes
    ----------
    percentiles : increasing percentiles (0-100) used as landmarks; the first and last bound the mapping.
    standard_landmarks : standard-scale value of each percentile (averaged over the training images).
    """

    percentiles: np.ndarray
    standard_landmarks: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable representation."""
        return {
            "kind": "nyul",
            "format": NYUL_FORMAT,
            "percentiles": self.percentiles.tolist(),
            "standard_landmarks": self.standard_landmarks.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NyulModel:
        """Rebuild a model written by ``to_dict``."""
        if data.get("kind") != "nyul" or data.get("format") != NYUL_FORMAT:
            raise MetatrackError(
                f"Nyúl model dict has kind={data.get('kind')!r} format={data.get('format')!r}; "
                f"expected kind='nyul' format={NYUL_FORMAT}"
            )
        return cls(
            percentiles=np.asarray(data["percentiles"], dtype=np.float64),
            standard_landmarks=np.asarray(data["standard_landmarks"], dtype=np.float64),
        )


def _landmarks(image: np.ndarray, mask: np.ndarray | None, percentiles: np.ndarray, what: str) -> np.ndarray:
    marks = np.percentile(_mask_values(image, mask, what), percentiles)
    if np.any(np.diff(marks) <= 0):
        raise MetatrackError(
            f"{what}: intensity landmarks at percentiles {percentiles.tolist()} are not strictly increasing "
            f"({np.round(marks, 4).tolist()}); use a tighter mask or fewer landmarks"
        )
    return marks


def fit_nyul(
    images_and_masks: Iterable[tuple[np.ndarray, np.ndarray | None]],
    percentiles: Sequence[float] = NYUL_PERCENTILES,
    standard_range: tuple[float, float] = NYUL_STANDARD_RANGE,
) -> NyulModel:
    """Learn the standard histogram landmarks from training images.

    Each image's landmarks are mapped linearly so that its first/last percentile land on ``standard_range``;
    the standard landmarks are the mean of those mapped landmarks.
    """
    pct = np.asarray(percentiles, dtype=np.float64)
    if pct.ndim != 1 or pct.size < 2 or np.any(np.diff(pct) <= 0) or pct[0] < 0 or pct[-1] > 100:
        raise MetatrackError(f"Nyúl percentiles {list(percentiles)} must be >= 2 increasing values in 0..100")
    s_min, s_max = standard_range
    if not s_max > s_min:
        raise MetatrackError(f"Nyúl standard_range {standard_range} must be increasing")
    mapped = []
    for n, (image, mask) in enumerate(images_and_masks):
        marks = _landmarks(image, mask, pct, f"Nyúl training image {n}")
        mapped.append(s_min + (marks - marks[0]) / (marks[-1] - marks[0]) * (s_max - s_min))
    if not mapped:
        raise MetatrackError("Nyúl training set is empty; pass at least one (image, mask) pair")
    return NyulModel(percentiles=pct, standard_landmarks=np.mean(mapped, axis=0))


def apply_nyul(model: NyulModel, image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Map an image onto the standard scale: piecewise linear between its landmarks (taken inside ``mask``)
    and the model's standard landmarks, extended linearly beyond the first and last landmark."""
    img = np.asarray(image, dtype=np.float64)
    src = _landmarks(img, mask, model.percentiles, "Nyúl image")
    dst = model.standard_landmarks
    out = np.interp(img, src, dst)
    low_slope = (dst[1] - dst[0]) / (src[1] - src[0])
    high_slope = (dst[-1] - dst[-2]) / (src[-1] - src[-2])
    out = np.where(img < src[0], dst[0] + (img - src[0]) * low_slope, out)
    return np.where(img > src[-1], dst[-1] + (img - src[-1]) * high_slope, out)
