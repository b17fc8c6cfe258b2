"""ComBat through the database: fitted once on stored lesion features, applied to new scans, never refitted."""

from __future__ import annotations

import hashlib
from datetime import date, timedelta

import numpy as np
import pytest
from sqlalchemy import Engine, func, select

from db.models import Blob, FeatureConfig, FeatureValue, HarmonisationModel, Lesion, Mask, Patient, Scan, ScanRole
from db.session import session_scope
from tracker.errors import MetatrackError
from tracker.workflows.harmonisation import apply_pending, fit

SITE_OFFSET = {"A": 0.0, "B": 40.0, "C": -20.0}  # a scanner offset in HU-like units
SITE_SCALE = {"A": 1.0, "B": 1.6, "C": 0.8}
BIO_EFFECT = 25.0  # what harmonisation must keep: liver lesions vs lung lesions


def site_effect(values: np.ndarray, batch: np.ndarray) -> float:
    """Spread of per-site means relative to the pooled SD (0 when sites agree)."""
    means = [values[batch == b].mean() for b in np.unique(batch)]
    return float(np.std(means) / (values.std() + 1e-12))


def _add_lesions(engine: Engine, rng: np.random.Generator, scanner: str, n: int, tag: str = "P") -> None:
    with session_scope(engine) as s:
        cfg = s.scalar(select(FeatureConfig))
        if cfg is None:
            cfg = FeatureConfig(name="ct_default", config_sha256="0" * 64, config={}, engine="t", engine_version="0")
            s.add(cfg)
            s.flush()
        for i in range(n):
            p = Patient(external_id=f"{tag}{scanner}{i}")
            s.add(p)
            s.flush()
            scan = Scan(
                patient_id=p.id, scan_date=date(2024, 1, 1) + timedelta(days=i), role=ScanRole.BASELINE,
                modality="CT", scanner=scanner, image_sha256=hashlib.sha256(f"{tag}{scanner}{i}".encode()).hexdigest(),
                source_format="nifti", source_name="x", size_xyz=[1, 1, 1], spacing_xyz=[1, 1, 1],
                origin_xyz=[0, 0, 0], direction=[1, 0, 0, 0, 1, 0, 0, 0, 1],
            )  # fmt: skip
            s.add(Blob(sha256=scan.image_sha256, kind="image", suffix=".nii.gz", size_bytes=1))
            s.flush()
            s.add(scan)
            s.flush()
            m = Mask(scan_id=scan.id, mask_sha256=scan.image_sha256, source_format="nifti", labels=[1],
                     voxel_count=1, is_empty=False)  # fmt: skip
            s.add(m)
            s.flush()
            organ = i % 2  # 0 lung, 1 liver
            les = Lesion(scan_id=scan.id, mask_id=m.id, label=1, voxels=1, volume_mm3=1.0, centroid_x=0,
                         centroid_y=0, centroid_z=0)  # fmt: skip
            s.add(les)
            s.flush()
            for j, name in enumerate(("stat_mean", "stat_var", "ih_entropy")):
                true = 50.0 + j * 10 + BIO_EFFECT * organ + rng.normal(0, 5)
                value = true * SITE_SCALE[scanner] + SITE_OFFSET[scanner]
                s.add(FeatureValue(lesion_id=les.id, scan_id=scan.id, config_id=cfg.id, region="lesion",
                                   tag=name, value=value))  # fmt: skip


def _values(engine: Engine, tag: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    with session_scope(engine) as s:
        rows = s.execute(
            select(FeatureValue.value, FeatureValue.harmonised, Scan.scanner, Patient.external_id)
            .join(Scan, Scan.id == FeatureValue.scan_id)
            .join(Patient, Patient.id == Scan.patient_id)
            .where(FeatureValue.tag == tag)
        ).all()
    raw, harm, batch, pid = (np.array(c) for c in zip(*rows, strict=True))
    return raw, harm, batch, pid


def test_combat_fit_apply_never_refits(engine: Engine) -> None:
    rng = np.random.default_rng(0)
    _add_lesions(engine, rng, "A", 30)
    _add_lesions(engine, rng, "B", 30)
    res = fit(engine, "combat-v1")
    assert res["lesions"] == 60 and res["tags"] == 3
    raw, harm, batch, pid = _values(engine, "stat_mean")
    before, after = site_effect(raw.astype(float), batch), site_effect(harm.astype(float), batch)
    assert before > 0.5 and after < 0.1 and before / after > 5
    organ = np.array([int(p[2:]) % 2 for p in pid])
    bio = harm[organ == 1].mean() - harm[organ == 0].mean()
    assert bio == pytest.approx(BIO_EFFECT * (SITE_SCALE["A"] + SITE_SCALE["B"]) / 2, rel=0.35)
    with session_scope(engine) as s:
        params = s.scalar(select(HarmonisationModel.params))
    # a new follow-up from a known scanner is harmonised with the stored model, which stays as it was
    _add_lesions(engine, np.random.default_rng(1), "B", 2, tag="N")
    _add_lesions(engine, np.random.default_rng(2), "C", 1, tag="N")
    out = apply_pending(engine)
    assert out["values_written"] == 2 * 3 and out["skipped_scanners"] == ["C"]
    with session_scope(engine) as s:
        assert s.scalar(select(func.count(HarmonisationModel.id))) == 1
        assert s.scalar(select(HarmonisationModel.params)) == params
    raw, harm, batch, pid = _values(engine, "stat_mean")
    new_b = np.array([p.startswith("NB") for p in pid])
    old_a = np.array([p.startswith("PA") for p in pid])
    assert abs(harm[new_b].astype(float).mean() - harm[old_a].astype(float).mean()) < 30
    with pytest.raises(MetatrackError, match="never refitted"):
        fit(engine, "combat-v1")
