"""Seconds per lesion: metatrack's radiomics engine vs pyradiomics and MIRP on the same lesions.

Run:  .venv/bin/python benchmarks/features.py [--repeats 3] [--batch 100] [--skip-mirp]

The peers live in their own virtual environments (never in the project venv) and run in subprocesses:
  /work/bench-envs/pyradiomics  (pip install pyradiomics-bhklab SimpleITK)
  /work/bench-envs/mirp         (pip install mirp)
Override with --pyradiomics-python / --mirp-python. A peer that is missing is reported and skipped.

Lesions are synthetic CT blobs (seeded) at 1 mm isotropic spacing: small (~500 voxels), medium (~15,000) and
large (~150,000), each in a crop of the lesion's bounding box plus 20 mm. Every engine uses the same settings:
resampling to 1 mm (trilinear), re-segmentation [-1000, 400] HU, fixed bin size 25 HU, all IBSI families
(pyradiomics: all its default classes). The time per lesion excludes imports and start-up (one warm-up lesion
first) and includes reading the NIfTI files for the peers. Ratios are peer time / our time, measured in one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEED = 20260501
SPACING = (1.0, 1.0, 1.0)
MARGIN_MM = 20
LESION_VOXELS = {"small": 500, "medium": 15_000, "large": 150_000}
TUMOUR_HU, TUMOUR_SD_HU = 40.0, 60.0
LUNG_HU, LUNG_SD_HU = -820.0, 60.0
DEFAULT_ENVS = Path("/work/bench-envs")

PYRADIOMICS_WORKER = r"""
import json, sys, time, logging
import SimpleITK as sitk
from radiomics import featureextractor
logging.getLogger("radiomics").setLevel(logging.ERROR)
params = {"setting": {"binWidth": 25, "resampledPixelSpacing": [1, 1, 1], "interpolator": "sitkLinear",
                      "resegmentRange": [-1000, 400], "label": 1},
          "imageType": {"Original": {}}}
ext = featureextractor.RadiomicsFeatureExtractor(params)
ext.enableAllFeatures()
jobs = json.loads(sys.argv[1])
out = {}
for name, img, msk, reps in jobs:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        res = ext.execute(sitk.ReadImage(img), sitk.ReadImage(msk))
        times.append(time.perf_counter() - t0)
    out[name] = {"seconds": times, "n_features": sum(1 for k in res if not k.startswith("diagnostics"))}
print("RESULT" + json.dumps(out))
"""

MIRP_WORKER = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
from mirp import extract_features
jobs = json.loads(sys.argv[1])
out = {}
for name, img, msk, reps in jobs:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        res = extract_features(image=img, mask=msk, image_modality="CT", base_feature_families="all",
                               base_discretisation_method="fixed_bin_size", base_discretisation_bin_width=25.0,
                               ivh_discretisation_method="fixed_bin_size", ivh_discretisation_bin_width=2.5,
                               new_spacing=1.0, resegmentation_intensity_range=[-1000.0, 400.0],
                               export_features=True, write_features=False, num_cpus=None)
        times.append(time.perf_counter() - t0)
    out[name] = {"seconds": times, "n_features": int(res[0].shape[1])}
print("RESULT" + json.dumps(out))
"""


def make_lesion(n_voxels: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A lobulated tumour blob of about ``n_voxels`` voxels in lung, cropped with a 20 mm margin."""
    from scipy import ndimage

    radius = (3 * n_voxels / (4 * np.pi)) ** (1 / 3)
    half = int(np.ceil(radius * 1.3)) + MARGIN_MM
    shape = (2 * half + 1,) * 3
    zz, yy, xx = np.indices(shape) - half
    bumps = ndimage.gaussian_filter(rng.normal(size=shape), sigma=max(1.0, radius / 3))
    bumps /= bumps.std()
    r = np.sqrt(zz**2 + yy**2 + xx**2) * (1 + 0.12 * bumps)
    # scale the radius so that the blob holds the requested voxel count
    cut = np.sort(r.ravel())[n_voxels - 1]
    mask = r <= cut
    texture = ndimage.gaussian_filter(rng.normal(size=shape), sigma=1.5)
    texture /= texture.std()
    image = np.where(mask, TUMOUR_HU + TUMOUR_SD_HU * texture, LUNG_HU + LUNG_SD_HU * texture)
    image[rng.random(shape) < 0.001] = 900.0  # a few calcification-like voxels, removed by re-segmentation
    return np.round(image).astype(np.int16), mask


def write_nifti(folder: Path, name: str, image: np.ndarray, mask: np.ndarray) -> tuple[str, str]:
    import SimpleITK as sitk

    paths = []
    for kind, arr in (("image", image), ("mask", mask.astype(np.uint8))):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(tuple(reversed(SPACING)))
        path = folder / f"{name}_{kind}.nii.gz"
        sitk.WriteImage(img, str(path))
        paths.append(str(path))
    return paths[0], paths[1]


def run_peer(python: Path, worker: str, jobs: list, timeout: int) -> dict | str:
    """Run a worker script in a peer's venv; its per-lesion times, or the reason it failed."""
    if not python.is_file():
        return f"not installed ({python} missing)"
    try:
        proc = subprocess.run(
            [str(python), "-c", worker, json.dumps(jobs)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s"
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT") :])
    return f"failed (rc {proc.returncode}): {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"


def main() -> None:
    from tracker.radiomics import extract, load_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--skip-mirp", action="store_true")
    ap.add_argument("--pyradiomics-python", type=Path, default=DEFAULT_ENVS / "pyradiomics" / "bin" / "python")
    ap.add_argument("--mirp-python", type=Path, default=DEFAULT_ENVS / "mirp" / "bin" / "python")
    args = ap.parse_args()

    rng = np.random.default_rng(SEED)
    lesions = {name: make_lesion(n, rng) for name, n in LESION_VOXELS.items()}
    cfg = load_config("ct_default")
    tmp = Path(tempfile.mkdtemp(prefix="mt_bench_features_"))
    jobs_full = [["warmup", *write_nifti(tmp, "warmup", *lesions["small"]), 1]]
    for name, (image, mask) in lesions.items():
        jobs_full.append([name, *write_nifti(tmp, name, image, mask), args.repeats])

    extract(*lesions["small"], SPACING, cfg)  # warm-up: imports, caches
    ours: dict[str, float] = {}
    n_ours = 0
    for name, (image, mask) in lesions.items():
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fs = extract(image, mask, SPACING, cfg)
            times.append(time.perf_counter() - t0)
        ours[name] = float(np.median(times))
        n_ours = sum(np.isfinite(v) for v in fs.values.values())

    peers: dict[str, dict | str] = {
        "pyradiomics": run_peer(args.pyradiomics_python, PYRADIOMICS_WORKER, jobs_full, 1800)
    }
    if args.skip_mirp:
        peers["MIRP"] = "skipped (--skip-mirp)"
    else:
        mirp_jobs = [[*j[:3], 1] for j in jobs_full]  # MIRP is slow: one run per lesion
        peers["MIRP"] = run_peer(args.mirp_python, MIRP_WORKER, mirp_jobs, 3600)

    print("lesions (voxels): " + ", ".join(f"{k} {int(m.sum())}" for k, (_, m) in lesions.items()))
    print(f"metatrack: {n_ours} finite features per lesion (config ct_default)")
    header = f"{'lesion':8s} {'ours s':>9s}"
    for peer in peers:
        header += f" {peer + ' s':>15s} {peer + '/ours':>17s}"
    print(header)
    for name in lesions:
        line = f"{name:8s} {ours[name]:9.3f}"
        for result in peers.values():
            if isinstance(result, dict) and name in result:
                t = float(np.median(result[name]["seconds"]))
                line += f" {t:15.3f} {t / ours[name]:16.1f}x"
            else:
                line += f" {'-':>15s} {'-':>17s}"
        print(line)
    for peer, result in peers.items():
        if isinstance(result, str):
            print(f"{peer}: {result}")
        else:
            print(f"{peer}: {result['small']['n_features']} features per lesion")

    # throughput on a batch of lesions of mixed size (small to medium, as metastases are)
    batch_rng = np.random.default_rng(SEED + 1)
    sizes = batch_rng.integers(200, 20_000, size=args.batch)
    batch = [make_lesion(int(n), batch_rng) for n in sizes]
    t0 = time.perf_counter()
    for image, mask in batch:
        extract(image, mask, SPACING, cfg)
    elapsed = time.perf_counter() - t0
    print(
        f"batch: {args.batch} lesions ({int(sizes.min())}-{int(sizes.max())} voxels, median {int(np.median(sizes))})"
        f" in {elapsed:.1f} s = {args.batch / elapsed:.1f} lesions/s ({elapsed / args.batch:.3f} s/lesion)"
    )


if __name__ == "__main__":
    sys.exit(main())
