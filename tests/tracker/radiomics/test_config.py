"""Radiomics configuration (schema, presets) and the extract() contract: fixed columns, NaN where undefined."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from tracker.errors import MetatrackError
from tracker.radiomics import ENGINE_VERSION, extract, feature_columns, load_config, preset_names


def test_presets_load_and_validate() -> None:
    names = preset_names()
    for name in ("ibsi_dp", "ibsi_A", "ibsi_B", "ibsi_C", "ibsi_D", "ibsi_E", "ct_default", "mr_default"):
        assert name in names
        assert load_config(name)["name"] == name
    c = load_config("ibsi_C")
    assert c["resampling"]["spacing"] == [2.0, 2.0, 2.0]
    assert c["resegmentation"] == {"range": [-1000, 400], "outlier_sd": None}
    assert load_config("ibsi_B")["resampling"]["spacing"] == [None, 2.0, 2.0]


def test_schema_error_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\nresampling: null\ndiscretisation: {method: fixed_bin_size}\nivh: {method: none}\n"
        "texture: {modes: ['3D']}\n"
    )
    with pytest.raises(MetatrackError, match=r"bad\.yaml.*discretisation.*bin_width"):
        load_config(path)
    path.write_text(
        "name: x\nresampling: {spacing: [1, 1, -1]}\ndiscretisation: {method: none}\n"
        "ivh: {method: none}\ntexture: {modes: ['3D']}\n"
    )
    with pytest.raises(MetatrackError, match=r"resampling"):
        load_config(path)
    with pytest.raises(MetatrackError, match="no such radiomics config"):
        load_config(tmp_path / "missing.yaml")


def test_feature_columns_counts() -> None:
    # IBSI tables: 487 feature rows for the digital phantom (all variants), 346 for 2D configs, 210 for 3D
    assert len(feature_columns("ibsi_dp")) == 487
    assert len(feature_columns("ibsi_A")) == 346 + 5
    assert len(feature_columns("ibsi_C")) == 210 + 5
    cols = feature_columns("ibsi_C")
    assert cols[0] == "morph_volume" and "cm_joint_max_3D_avg" in cols and "szm_sze_2D" not in cols


def test_extract_fixed_columns_and_nan_for_one_voxel_lesion() -> None:
    cfg = load_config("ct_default")
    image = np.full((20, 20, 20), 50.0)
    mask = np.zeros(image.shape, bool)
    mask[10, 10, 10] = True
    fs = extract(image, mask, (1.0, 1.0, 1.0), cfg)
    assert list(fs.values) == feature_columns(cfg)
    assert fs.engine_version == ENGINE_VERSION and fs.config["name"] == "ct_default"
    assert fs.values["stat_mean"] == 50.0
    assert fs.values["morph_vol_approx"] == pytest.approx(1.0)
    assert math.isnan(fs.values["morph_pca_elongation"])
    assert math.isnan(fs.values["stat_skew"])  # zero variance
    recs = fs.records()
    assert len(recs) == len(fs.values)
    assert recs[0] == {
        "tag": "morph_volume",
        "family": "Morphology",
        "feature": "Volume (mesh)",
        "value": fs.values["morph_volume"],
    }
    empty = extract(image, np.zeros(image.shape, bool), (1.0, 1.0, 1.0), cfg)
    assert list(empty.values) == feature_columns(cfg)
    assert all(math.isnan(v) for v in empty.values.values())


@pytest.mark.parametrize("config", ["ct_default", "ibsi_B"])
def test_threads_leave_every_value_unchanged(config: str) -> None:
    # the families run side by side on threads for large ROIs; the values must be the single-thread ones,
    # bit for bit (ibsi_B: the 2D/2.5D texture variants too)
    rng = np.random.default_rng(7)
    zz, yy, xx = np.indices((28, 30, 32))
    mask = (zz - 14) ** 2 / 100 + (yy - 15) ** 2 / 121 + (xx - 16) ** 2 / 144 <= 1.0
    image = np.round(np.where(mask, 40.0, -800.0) + 60.0 * rng.normal(size=mask.shape))
    spacing = (2.0, 0.8, 0.8)
    one = extract(image, mask, spacing, config, threads=1).values
    two = extract(image, mask, spacing, config, threads=2).values
    assert list(one) == list(two) == feature_columns(config)
    assert np.array_equal(np.array(list(one.values())), np.array(list(two.values())), equal_nan=True)
    assert sum(np.isfinite(v) for v in one.values()) > 0.9 * len(one)


def test_thread_pool_calls_ignore_numpy_division_warnings() -> None:
    # the families divide by zero on purpose under np.errstate; pool threads must see the same state
    from tracker.radiomics.extractor import _executor, _submit

    with _executor(2) as pool:
        assert _submit(pool, np.geterr).result()["divide"] == "ignore"


def test_a_failing_family_raises_and_cancels_the_queued_ones() -> None:
    from tracker.radiomics.extractor import _executor, _submit

    ran = []

    def fail() -> None:
        raise ValueError("broken family")

    def slow(i: int) -> None:
        time.sleep(0.01)
        ran.append(i)

    with pytest.raises(ValueError, match="broken family"), _executor(2) as pool:
        futures = [_submit(pool, fail), *(_submit(pool, slow, i) for i in range(100))]
        for future in futures:
            future.result()
    assert len(ran) < 10  # 100 x 10 ms on two threads would take 0.5 s


def test_extract_rejects_bad_inputs() -> None:
    with pytest.raises(MetatrackError, match="mask"):
        extract(np.zeros((4, 4, 4)), np.zeros((4, 4, 5), bool), (1.0, 1.0, 1.0), "ct_default")
    with pytest.raises(MetatrackError, match="spacing"):
        extract(np.zeros((4, 4, 4)), np.ones((4, 4, 4), bool), (1.0, 0.0, 1.0), "ct_default")


def test_mr_default_zscore_makes_features_scale_invariant() -> None:
    rng = np.random.default_rng(3)
    image = rng.normal(100.0, 20.0, size=(24, 24, 24))
    mask = np.zeros(image.shape, bool)
    mask[6:18, 6:18, 6:18] = True
    a = extract(image, mask, (1.0, 1.0, 1.0), "mr_default").values
    b = extract(3.0 * image + 500.0, mask, (1.0, 1.0, 1.0), "mr_default").values
    for tag in ("stat_mean", "stat_var", "ih_entropy", "cm_joint_entr_3D_avg", "loc_peak_glob"):
        assert b[tag] == pytest.approx(a[tag], rel=1e-6, abs=1e-9), tag


def test_zscore_of_a_constant_reference_is_refused() -> None:
    """SD 0 where the z-score takes its statistics: an error (recorded per lesion by the pipeline), not features
    in the image's own units."""
    image = np.full((16, 16, 16), 40.0)
    mask = np.zeros(image.shape, bool)
    mask[4:12, 4:12, 4:12] = True
    with pytest.raises(MetatrackError, match="whole image are constant"):
        extract(image, mask, (1.0, 1.0, 1.0), "mr_default")
    image[mask] = 90.0  # the lesion differs, the body around it is flat
    with pytest.raises(MetatrackError, match="body mask are constant"):
        extract(image, mask, (1.0, 1.0, 1.0), "mr_default", body_mask=~mask)


def _mr_like(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An MR-like volume: an ellipsoidal body (~N(300, 40)) with a dark cavity, in noisy air (~N(5, 3)); a cubic
    lesion of constant intensity 500 inside. Returns image, lesion mask, true body mask (cavity filled)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices((40, 48, 48)) - np.array([19.5, 23.5, 23.5])[:, None, None, None]
    body = (zz / 17) ** 2 + (yy / 21) ** 2 + (xx / 19) ** 2 <= 1.0
    cavity = (zz / 5) ** 2 + ((yy + 8) / 5) ** 2 + ((xx - 6) / 5) ** 2 <= 1.0
    image = np.where(body, rng.normal(300.0, 40.0, body.shape), rng.normal(5.0, 3.0, body.shape))
    image[cavity] = rng.normal(15.0, 3.0, int(cavity.sum()))
    lesion = np.zeros(body.shape, bool)
    lesion[16:24, 26:34, 20:28] = True
    image[lesion] = 500.0
    return image, lesion, body


def test_foreground_mask_recovers_the_body_with_its_cavity() -> None:
    from tracker.harmonisation import foreground_mask

    image, _, body = _mr_like(0)
    fg = foreground_mask(image)
    dice = 2 * (fg & body).sum() / (fg.sum() + body.sum())
    assert dice > 0.995 and not (fg & ~body).sum() > 0.005 * body.sum()


def test_mr_zscore_takes_its_statistics_in_the_body_mask() -> None:
    from tracker.harmonisation import foreground_mask

    image, lesion, body = _mr_like(1)
    fs = extract(image, lesion, (1.0, 1.0, 1.0), "mr_default", body_mask=body)
    ref = image[body]
    # a constant lesion: its z-scored mean is known exactly, whatever the rest of the pipeline does
    assert fs.values["stat_mean"] == pytest.approx((500.0 - ref.mean()) / ref.std(), rel=1e-12)
    assert "z-score in the body mask" in fs.notes
    whole = extract(image, lesion, (1.0, 1.0, 1.0), "mr_default").values["stat_mean"]
    assert whole == pytest.approx((500.0 - image.mean()) / image.std(), rel=1e-12)
    assert abs(whole - fs.values["stat_mean"]) > 0.25  # air in the statistics shifts the scale
    # the Otsu foreground is invariant to a linear rescaling of the scanner's intensities, so are the features
    a = extract(image, lesion, (1.0, 1.0, 1.0), "mr_default", body_mask=foreground_mask(image)).values
    scaled = 2.5 * image + 80.0
    b = extract(scaled, lesion, (1.0, 1.0, 1.0), "mr_default", body_mask=foreground_mask(scaled)).values
    for tag in ("stat_mean", "stat_var", "loc_peak_glob", "cm_joint_entr_3D_avg"):
        assert b[tag] == pytest.approx(a[tag], rel=1e-9, abs=1e-12), tag
    with pytest.raises(MetatrackError, match="body mask"):
        extract(image, lesion, (1.0, 1.0, 1.0), "mr_default", body_mask=np.zeros_like(body))


def test_foreground_mask_refuses_an_image_without_background_and_pipeline_falls_back() -> None:
    from tracker.harmonisation import foreground_mask
    from tracker.pipeline import _body_mask

    rng = np.random.default_rng(2)
    # two tissues filling the field of view: no air to separate the body from
    tissue = np.where(np.indices((20, 24, 24))[2] < 12, 200.0, 400.0) + rng.normal(0.0, 10.0, (20, 24, 24))
    with pytest.raises(MetatrackError, match="no dark background"):
        foreground_mask(tissue)
    assert _body_mask(tissue, None, "MR") is None
    image, _, body = _mr_like(3)
    # an empty organ map does not mean an empty body
    fallback = _body_mask(image, np.zeros(image.shape, np.uint8), "MR")
    assert fallback is not None and 2 * (fallback & body).sum() / (fallback.sum() + body.sum()) > 0.99
