"""Simulator: files, determinism and self-consistency of the ground truth (small 64x64x48 @ 4 mm cohorts)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from tracker.simulator import (
    ScannerSpec,
    SimulationConfig,
    load_truth,
    simulate_cohort,
    simulate_latent_cohort,
    simulate_patient,
    true_lesion_membership,
    true_map_to_baseline,
    true_map_to_scan,
)
from tracker.simulator.latent import sample_patient

SMALL = {"shape": (64, 64, 48), "spacing": (4.0, 4.0, 4.0)}
SCANNERS = (
    ScannerSpec("S-LOW", noise_sd=6.0, hu_offset=0.0, slice_factor=1.0),
    ScannerSpec("S-HIGH", noise_sd=25.0, hu_offset=15.0, slice_factor=1.25),
    ScannerSpec("S-MID", noise_sd=12.0, hu_offset=-10.0, slice_factor=0.8),
)
COHORT_CFG = SimulationConfig(n_patients=3, seed=7, hard_case_prob=1.0, scanners=SCANNERS, workers=1, **SMALL)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("sim")
    calls: list[tuple[int, int]] = []
    manifest = simulate_cohort(COHORT_CFG, out, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (3, 3)
    return manifest, load_truth(out / "truth.json")


def _read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img


def _voxel_points(img: sitk.Image) -> np.ndarray:
    """Physical (x, y, z) points of every voxel, in numpy (z, y, x) C order."""
    nx, ny, nz = img.GetSize()
    zz, yy, xx = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    idx = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1).astype(float)
    return idx * np.asarray(img.GetSpacing()) + np.asarray(img.GetOrigin())


def test_files_and_manifest_layout(cohort: tuple[Path, dict[str, Any]]) -> None:
    manifest, truth = cohort
    out = manifest.parent
    with manifest.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["patient_id", "date", "image", "mask", "organs", "modality", "scanner", "role"]
    assert [(r["patient_id"], r["date"]) for r in rows] == sorted((r["patient_id"], r["date"]) for r in rows)
    assert {r["patient_id"] for r in rows} == {"SIM001", "SIM002", "SIM003"}
    n_scans = sum(len(p["scans"]) for p in truth["patients"].values())
    assert len(rows) == n_scans
    for pid in truth["patients"]:
        roles = [r["role"] for r in rows if r["patient_id"] == pid]
        assert roles[0] == "baseline" and set(roles[1:]) == {"follow-up"}
        assert 3 <= len(roles) <= 7
    for r in rows:
        image, img = _read(out / r["image"])
        mask, msk = _read(out / r["mask"])
        organs, _ = _read(out / Path(r["image"]).parent / "organs.nii.gz")
        assert image.dtype == np.int16 and mask.dtype in (np.uint8, np.uint16) and organs.dtype == np.uint8
        assert img.GetSize() == msk.GetSize() and img.GetSpacing() == msk.GetSpacing()
        assert img.GetOrigin() == msk.GetOrigin()
        scan = next(s for s in truth["patients"][r["patient_id"]]["scans"] if s["date"] == r["date"])
        assert sorted(int(k) for k in scan["labels"]) == list(range(1, int(mask.max()) + 1))
        assert set(np.unique(organs)) <= {0, 1, 2, 3, 4, 5}
    with (out / "events.csv").open() as fh:
        events = list(csv.DictReader(fh))
    assert [e["patient_id"] for e in events] == ["SIM001", "SIM002", "SIM003"]
    for e in events:
        pat = truth["patients"][e["patient_id"]]
        assert int(e["event"]) == pat["event"] and int(e["time_days"]) == int(pat["time_days"])
        # imaging stops at the event / censoring
        assert pat["scans"][-1]["day"] <= pat["time_days"]
    # the latent cohort (no images) holds the same patients
    for latent in simulate_latent_cohort(COHORT_CFG):
        pat = truth["patients"][latent["patient_id"]]
        assert latent["time_days"] == pat["time_days"] and latent["days"] == [s["day"] for s in pat["scans"]]
        assert sorted(les["id"] for les in latent["lesions"]) == sorted([*pat["lesions"], *pat["future_lesions"]])
        assert all(les["onset_day"] > pat["scans"][-1]["day"] for les in pat["future_lesions"].values())


def test_same_seed_same_patient_other_seed_differs() -> None:
    cfg = SimulationConfig(n_patients=1, seed=3, **SMALL)
    a, b = simulate_patient(cfg, 0), simulate_patient(cfg, 0)
    for sa, sb in zip(a["scans"], b["scans"], strict=True):
        assert np.array_equal(sa["image"], sb["image"]) and np.array_equal(sa["mask"], sb["mask"])
    assert json.dumps(a["truth"], default=str) == json.dumps(b["truth"], default=str)
    c = simulate_patient(SimulationConfig(n_patients=1, seed=4, **SMALL), 0)
    assert not np.array_equal(a["scans"][0]["image"], c["scans"][0]["image"])
    assert a["truth"]["lesions"] != c["truth"]["lesions"]
    # the latent patient does not depend on the grid
    big = SimulationConfig(n_patients=1, seed=3, shape=(96, 96, 64), spacing=(3.0, 3.0, 3.0))
    la, lb = sample_patient(cfg, 0), sample_patient(big, 0)
    assert la["lesions"] == lb["lesions"] and la["time_days"] == lb["time_days"]


def test_landmarks_related_by_true_transform(cohort: tuple[Path, dict[str, Any]]) -> None:
    manifest, truth = cohort
    for pat in truth["patients"].values():
        for k, scan in enumerate(pat["scans"][1:], start=1):
            lm = scan["landmarks"]
            assert len(lm) >= 200
            q = np.array([p["scan"] for p in lm])
            p = np.array([p["baseline"] for p in lm])
            assert np.abs(true_map_to_baseline(pat, k, q) - p).max() < 1e-6
            assert np.abs(true_map_to_scan(pat, k, p) - q).max() < 0.01
            # the motion is what the config asks: a few mm of rigid shift plus up to 10 mm non-rigid
            assert 0.0 < scan["nonrigid_max_mm"] <= COHORT_CFG.nonrigid_max_mm * 1.05
            assert np.max(np.abs(q - p)) > 2.0
            # landmarks lie inside the body of the scan
            organs, img = _read(manifest.parent / scan["organs"])
            idx = np.rint((q - np.asarray(img.GetOrigin())) / np.asarray(img.GetSpacing())).astype(int)
            idx = np.clip(idx, 0, np.asarray(img.GetSize()) - 1)
            assert np.mean(organs[idx[:, 2], idx[:, 1], idx[:, 0]] > 0) > 0.97


def test_baseline_centroid_maps_into_same_lesion(cohort: tuple[Path, dict[str, Any]]) -> None:
    manifest, truth = cohort
    checked = 0
    for pat in truth["patients"].values():
        base = pat["scans"][0]["lesions"]
        for k, scan in enumerate(pat["scans"][1:], start=1):
            mask, img = _read(manifest.parent / scan["mask"])
            near = ndimage.grey_dilation(mask, size=(3, 3, 3))  # tolerance: one voxel
            for lid, info in scan["lesions"].items():
                if lid not in base or pat["lesions"][lid]["fate"] == "split" or info["n_voxels"] < 8:
                    continue
                q = true_map_to_scan(pat, k, np.array(base[lid]["centroid_baseline"]))[0]
                i = np.rint((q - np.asarray(img.GetOrigin())) / np.asarray(img.GetSpacing())).astype(int)
                lab = int(mask[i[2], i[1], i[0]]) or int(near[i[2], i[1], i[0]])
                assert lab > 0, (pat["patient_id"], k, lid)
                assert lid in scan["labels"][str(lab)], (pat["patient_id"], k, lid, scan["labels"])
                checked += 1
    assert checked >= 10


def test_mask_matches_lesion_membership_at_psi(cohort: tuple[Path, dict[str, Any]]) -> None:
    manifest, truth = cohort
    pat = truth["patients"]["SIM001"]
    ids = sorted(pat["lesions"])
    for k in (0, len(pat["scans"]) - 1):
        scan = pat["scans"][k]
        mask, img = _read(manifest.parent / scan["mask"])
        member = true_lesion_membership(pat, k, _voxel_points(img)).reshape(len(ids), *mask.shape)
        inside = member.any(axis=0)
        assert inside.sum() > 50
        # float32 resampling coordinates may flip a voxel exactly on a boundary
        assert np.sum(inside != (mask > 0)) <= max(2, 0.002 * inside.sum())
        for lab, lids in scan["labels"].items():
            voxels = mask == int(lab)
            held = {ids[j] for j in range(len(ids)) if np.any(member[j] & voxels)}
            assert held == set(lids)
        for lid, info in scan["lesions"].items():
            assert info["n_voxels"] == int(member[ids.index(lid)].sum())
            # volume (analytic, baseline frame) vs voxel count: agree within partial-voxel error
            if info["n_voxels"] > 40:
                vox_vol = info["n_voxels"] * np.prod(img.GetSpacing())
                assert abs(vox_vol / info["volume_mm3"] - 1) < 0.35


def test_hard_cases_present(cohort: tuple[Path, dict[str, Any]]) -> None:
    _, truth = cohort
    merged = vanished_then_back = split = 0
    for pat in truth["patients"].values():
        fates = {lid: les["fate"] for lid, les in pat["lesions"].items()}
        for scan in pat["scans"]:
            merged += any(len(v) >= 2 and all(fates[i] == "merge" for i in v) for v in scan["labels"].values())
        for scan in pat["scans"]:
            held = [lid for ids in scan["labels"].values() for lid in ids]
            split += any(fates[lid] == "split" and held.count(lid) == 2 for lid in held)
        for lid, fate in fates.items():
            present = [lid in s["lesions"] for s in pat["scans"]]
            if fate == "return" and present[0] and not all(present) and present[-1]:
                vanished_then_back += 1
        # the merging pair starts as two separate components
        pair = [lid for lid, f in fates.items() if f == "merge"]
        base_labels = pat["scans"][0]["labels"].values()
        assert all(sum(lid in v for v in base_labels) == 1 for lid in pair)
        assert not any(set(pair) <= set(v) for v in base_labels)
    assert merged >= 1
    assert vanished_then_back >= 1
    assert split >= 1


def test_intensities_and_scanner_noise(cohort: tuple[Path, dict[str, Any]]) -> None:
    manifest, truth = cohort
    spec = {s.name: s for s in SCANNERS}
    expected = {1: (20, 60), 2: (45, 75), 3: (-900, -740), 4: (250, 1000), 5: (-130, -70)}
    seen_scanners = set()
    for pat in truth["patients"].values():
        for scan in pat["scans"]:
            image, _ = _read(manifest.parent / scan["image"])
            organs, _ = _read(manifest.parent / scan["organs"])
            mask, _ = _read(manifest.parent / scan["mask"])
            sc = spec[scan["scanner"]]
            seen_scanners.add(sc.name)
            hu = image.astype(float) - sc.hu_offset
            for organ, (lo, hi) in expected.items():
                sel = (organs == organ) & (mask == 0)
                assert lo <= np.median(hu[sel]) <= hi, (organ, np.median(hu[sel]))
            # air far from the body: -1000 + offset, noise sd as configured
            air = ndimage.binary_erosion(organs == 0, iterations=2)
            assert abs(np.mean(hu[air]) + 1000.0) < 1.0
            assert abs(np.std(hu[air]) / sc.noise_sd - 1.0) < 0.05
            # lesions are brighter than lung and darker than bone
            if (mask > 0).sum() > 30:
                assert -60 < np.median(hu[mask > 0]) < 90
    assert len(seen_scanners) >= 2


def test_worker_processes_give_the_same_cohort(tmp_path: Path) -> None:
    cfg = SimulationConfig(n_patients=2, seed=5, shape=(48, 48, 32), spacing=(5.0, 5.0, 5.0), workers=2)
    simulate_cohort(cfg, tmp_path)
    truth = load_truth(tmp_path / "truth.json")["patients"]["SIM002"]
    direct = simulate_patient(cfg, 1)
    assert truth["time_days"] == direct["truth"]["time_days"]
    for scan, arrays in zip(truth["scans"], direct["scans"], strict=True):
        image, _ = _read(tmp_path / scan["image"])
        mask, _ = _read(tmp_path / scan["mask"])
        assert np.array_equal(image, arrays["image"]) and np.array_equal(mask, arrays["mask"])
