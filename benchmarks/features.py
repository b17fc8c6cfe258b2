"""Seconds per lesion: metatrack's radiomics engine vs pyradiomics and MIRP on the same lesions.

Run:  .venv/bin/python benchmarks/features.py [--repeats 5] [--batch 100] [--skip-mirp] [--mirp-repeats 3] [--jobs 2]
      .venv/bin/python benchmarks/features.py --filters [--repeats 3] [--mirp-python PATH]   (the IBSI 2 filter table)

The peers live in their own virtual environments (never in the project venv) and run in subprocesses:
  /work/bench-envs/pyradiomics  (pip install pyradiomics-bhklab SimpleITK)
  /work/bench-envs/mirp         (pip install mirp)
Override with --pyradiomics-python / --mirp-python. A peer that is missing is reported and skipped.

Lesions are synthetic CT blobs (seeded) at 1 mm isotropic spacing: small (~500 voxels), medium (~15,000) and
large (~150,000), each in a crop of the lesion's bounding box plus 20 mm. Every engine uses the same settings:
resampling to 1 mm (trilinear), re-segmentation [-1000, 400] HU, fixed bin size 25 HU, all IBSI families
(pyradiomics: all its default classes). The time per lesion excludes imports and start-up (one warm-up lesion
first) and includes reading the NIfTI files for the peers; every timed run follows an untimed run of the same
engine on the same lesion (warm CPU caches, whichever engine ran before; our per-size kernel caches are cleared).
Ratios are peer time / our time; runs are interleaved lesion by lesion (ours, then each peer) so that a busy
machine slows all engines alike. Ours is timed twice per lesion: with its default threads (the feature families
side by side on two threads for ROIs of >= 20,000 voxels) and on one thread, the peers' resources; a third table
gives the CPU seconds of the extracting process (user + system), which other load disturbs less.
The batch of 100 lesions runs interleaved with pyradiomics from arrays (ours, default threads); then, after the
peers have stopped, from the NIfTI files in one process and in --jobs processes (`features --batch --jobs N`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

SEED = 20260501
SPACING = (1.0, 1.0, 1.0)
MARGIN_MM = 20
LESION_VOXELS = {"small": 500, "medium": 15_000, "large": 150_000}
TUMOUR_HU, TUMOUR_SD_HU = 40.0, 60.0
LUNG_HU, LUNG_SD_HU = -820.0, 60.0
DEFAULT_ENVS = Path("/work/bench-envs")
# our engine limits BLAS to one thread per extraction; the peers get the same setting, to compare like with like
# (ITK's own thread pool included: SimpleITK reads and resamples for pyradiomics)
SINGLE_THREAD_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1",
}

# Peer workers: import once, then time one extraction per request line ("image mask" paths as JSON) and answer
# with a JSON line, so that our runs and the peers' runs can be interleaved under the same machine load.
PYRADIOMICS_WORKER = r"""
import json, sys, time, logging
import SimpleITK as sitk
import radiomics
from radiomics import featureextractor
logging.getLogger("radiomics").setLevel(logging.ERROR)
params = {"setting": {"binWidth": 25, "resampledPixelSpacing": [1, 1, 1], "interpolator": "sitkLinear",
                      "resegmentRange": [-1000, 400], "label": 1},
          "imageType": {"Original": {}}}
ext = featureextractor.RadiomicsFeatureExtractor(params)
ext.enableAllFeatures()
print(json.dumps({"ready": True, "version": radiomics.__version__}), flush=True)
for line in sys.stdin:
    img, msk = json.loads(line)
    t0, c0 = time.perf_counter(), time.process_time()
    res = ext.execute(sitk.ReadImage(img), sitk.ReadImage(msk))
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    n = sum(1 for k in res if not k.startswith("diagnostics"))
    print(json.dumps({"seconds": dt, "cpu_seconds": dc, "n_features": n}), flush=True)
"""

MIRP_WORKER = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
from importlib.metadata import version
from mirp import extract_features
print(json.dumps({"ready": True, "version": version("mirp")}), flush=True)
for line in sys.stdin:
    img, msk = json.loads(line)
    t0, c0 = time.perf_counter(), time.process_time()
    res = extract_features(image=img, mask=msk, image_modality="CT", base_feature_families="all",
                           base_discretisation_method="fixed_bin_size", base_discretisation_bin_width=25.0,
                           ivh_discretisation_method="fixed_bin_size", ivh_discretisation_bin_width=2.5,
                           new_spacing=1.0, resegmentation_intensity_range=[-1000.0, 400.0],
                           export_features=True, write_features=False, num_cpus=None)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"seconds": dt, "cpu_seconds": dc, "n_features": int(res[0].shape[1])}), flush=True)
"""

# --filters: one filtered feature set (IBSI 2 phase-2 settings, 3D: cubic resampling to 1 mm, rounding,
# re-segmentation [-1000, 400] HU, mirror boundary, the 18 intensity statistics of the response map) per request
MIRP_FILTER_WORKER = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
from importlib.metadata import version
from mirp import extract_features
print(json.dumps({"ready": True, "version": version("mirp")}), flush=True)
for line in sys.stdin:
    img, msk, kernel = json.loads(line)
    t0, c0 = time.perf_counter(), time.process_time()
    res = extract_features(image=img, mask=msk, image_modality="CT", base_feature_families="none",
                           response_map_feature_families="statistics", new_spacing=1.0, spline_order=3,
                           resegmentation_intensity_range=[-1000.0, 400.0], export_features=True,
                           write_features=False, num_cpus=None, **kernel)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    n = sum(1 for c in res[0].columns if "_stat_" in c)
    print(json.dumps({"seconds": dt, "cpu_seconds": dc, "n_features": n}), flush=True)
"""
#: phase-2 filter id (our preset ibsi2_p2_<id>B) -> the same filter in MIRP's settings
MIRP_FILTERS: dict[str, tuple[str, dict]] = {
    "2": ("mean 5", {"filter_kernels": "mean", "mean_filter_kernel_size": 5,
                     "mean_filter_boundary_condition": "reflect"}),
    "3": ("LoG 1.5 mm", {"filter_kernels": "laplacian_of_gaussian", "laplacian_of_gaussian_sigma": 1.5,
                         "laplacian_of_gaussian_kernel_truncate": 4.0,
                         "laplacian_of_gaussian_boundary_condition": "reflect"}),
    "4": ("Laws L5E5E5 energy", {"filter_kernels": "laws", "laws_kernel": "L5E5E5", "laws_rotation_invariance": True,
                                 "laws_pooling_method": "max", "laws_compute_energy": True, "laws_delta": 7,
                                 "laws_boundary_condition": "reflect"}),
    "5": ("Gabor 5 mm", {"filter_kernels": "gabor", "gabor_sigma": 5.0, "gabor_gamma": 1.5, "gabor_lambda": 2.0,
                         "gabor_theta": 0.0, "gabor_theta_step": 22.5, "gabor_response": "modulus",
                         "gabor_rotation_invariance": True, "gabor_pooling_method": "mean",
                         "gabor_boundary_condition": "reflect"}),
    "6": ("db3 LLH level 1", {"filter_kernels": "separable_wavelet", "separable_wavelet_families": "db3",
                              "separable_wavelet_set": "LLH", "separable_wavelet_rotation_invariance": True,
                              "separable_wavelet_pooling_method": "mean",
                              "separable_wavelet_decomposition_level": 1,
                              "separable_wavelet_boundary_condition": "reflect"}),
    "7": ("db3 HHH level 2", {"filter_kernels": "separable_wavelet", "separable_wavelet_families": "db3",
                              "separable_wavelet_set": "HHH", "separable_wavelet_rotation_invariance": True,
                              "separable_wavelet_pooling_method": "mean",
                              "separable_wavelet_decomposition_level": 2,
                              "separable_wavelet_boundary_condition": "reflect"}),
    "8": ("Simoncelli level 1", {"filter_kernels": "nonseparable_wavelet",
                                 "nonseparable_wavelet_families": "simoncelli",
                                 "nonseparable_wavelet_decomposition_level": 1,
                                 "nonseparable_wavelet_boundary_condition": "reflect"}),
    "9": ("Simoncelli level 2", {"filter_kernels": "nonseparable_wavelet",
                                 "nonseparable_wavelet_families": "simoncelli",
                                 "nonseparable_wavelet_decomposition_level": 2,
                                 "nonseparable_wavelet_boundary_condition": "reflect"}),
}  # fmt: skip


class Peer:
    """A peer engine running in its own venv's python, timing one lesion per request."""

    def __init__(self, name: str, python: Path, worker: str) -> None:
        self.name, self.proc, self.reason, self.version = name, None, "", "?"
        if not python.is_file():
            self.reason = f"not installed ({python} missing)"
            return
        self.proc = subprocess.Popen(
            [str(python), "-c", worker],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **SINGLE_THREAD_ENV},
        )
        ready = self._read()
        if not ready:
            self.reason = "failed to start"
        self.version = ready.get("version", "?") if ready else "?"

    def _read(self) -> dict | None:
        while self.proc is not None:
            line = self.proc.stdout.readline()
            if not line:
                self.close()
                return None
            if line.startswith("{"):
                return json.loads(line)
        return None

    def time(self, image: str, mask: str, *extra: object) -> dict | None:
        if self.proc is None:
            return None
        self.proc.stdin.write(json.dumps([image, mask, *extra]) + "\n")
        self.proc.stdin.flush()
        out = self._read()
        if out is None:
            self.reason = self.reason or "crashed during a run"
        return out

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
            self.proc = None


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


def clear_kernel_caches() -> None:
    """Forget the kernel spectra our engine caches per transform size, so that a timed run pays for them."""
    from tracker.radiomics.filters.wavelets import riesz_half, simoncelli_half
    from tracker.radiomics.local_intensity import _kernel_spectrum
    from tracker.radiomics.morphology import _inverse_distance_spectrum

    _kernel_spectrum.cache_clear()
    _inverse_distance_spectrum.cache_clear()
    simoncelli_half.cache_clear()
    riesz_half.cache_clear()


def print_ratios(header: str, lesions: dict, peers: list[Peer], ours: dict, theirs: dict) -> None:
    """One row per lesion: our median seconds, then each peer's median and its ratio to ours."""
    print(header)
    for name in lesions:
        t_ours = float(np.median(ours[name]))
        line = f"{name:8s} {t_ours:9.3f}"
        for peer in peers:
            if theirs[peer.name][name]:
                t = float(np.median(theirs[peer.name][name]))
                line += f" {t:15.3f} {t / t_ours:16.1f}x"
            else:
                line += f" {'-':>15s} {'-':>17s}"
        print(line)


def filter_table(args: argparse.Namespace) -> None:
    """Seconds per filtered feature set, ours (one thread) and MIRP's, per filter: on the 15,000-voxel synthetic
    lesion and, where the IBSI data are present, on the CT phantom's GTV; runs interleaved filter by filter, the
    minimum over the repeats (wall and CPU seconds each)."""
    from tracker.radiomics import ENGINE_VERSION, extract, load_config

    rng = np.random.default_rng(SEED)
    make_lesion(LESION_VOXELS["small"], rng)  # the same medium lesion as the main table
    cases = {"lesion": (*make_lesion(LESION_VOXELS["medium"], rng), SPACING)}
    data = os.environ.get("METATRACK_IBSI_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ibsi"))
    ct = Path(data) / "ibsi_1" / "ct_phantom" / "nifti"
    tmp = Path(tempfile.mkdtemp(prefix="mt_bench_filters_"))
    files = {"lesion": write_nifti(tmp, "lesion", *cases["lesion"][:2])}
    if (ct / "image" / "phantom.nii.gz").is_file():
        import SimpleITK as sitk

        img = sitk.ReadImage(str(ct / "image" / "phantom.nii.gz"))
        msk = sitk.GetArrayFromImage(sitk.ReadImage(str(ct / "mask" / "mask.nii.gz"))) > 0
        spacing = tuple(float(v) for v in reversed(img.GetSpacing()))
        cases["CT GTV"] = (np.round(sitk.GetArrayFromImage(img).astype(np.float64)), msk, spacing)
        files["CT GTV"] = (str(ct / "image" / "phantom.nii.gz"), str(ct / "mask" / "mask.nii.gz"))
    mirp = None if args.skip_mirp else Peer("MIRP", args.mirp_python, MIRP_FILTER_WORKER)
    if mirp is not None:
        mirp.time(*files["lesion"], MIRP_FILTERS["2"][1])  # warm-up: MIRP's first run pays for its imports
    print(f"engines: metatrack {ENGINE_VERSION}" + (f", MIRP {mirp.version}" if mirp else ", MIRP skipped"))
    print("ROI voxels (native grid): " + ", ".join(f"{k} {int(m.sum())}" for k, (_, m, _) in cases.items()))
    print(
        f"{'case':7s} {'filter':20s} {'ours s':>8s} {'ours cpu':>9s} {'MIRP s':>8s} {'MIRP cpu':>9s} {'MIRP/ours':>10s}"
    )
    for name, (image, mask, spacing) in cases.items():
        for fid, (label, kernel) in MIRP_FILTERS.items():
            cfg = load_config(f"ibsi2_p2_{fid}B")
            extract(image, mask, spacing, cfg, threads=1)  # untimed run first, as in the main table
            walls, cpus, theirs, theirs_cpu = [], [], [], []
            for rep in range(args.repeats):
                clear_kernel_caches()
                t0, c0 = time.perf_counter(), time.process_time()
                extract(image, mask, spacing, cfg, threads=1)
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
                if mirp is not None and rep < args.mirp_repeats:
                    out = mirp.time(*files[name], kernel)
                    if out:
                        theirs.append(out["seconds"])
                        theirs_cpu.append(out["cpu_seconds"])
            # the fastest of the repeats: other jobs on a shared machine only ever slow a run down
            ours, ours_cpu = min(walls), min(cpus)
            line = f"{name:7s} {label:20s} {ours:8.3f} {ours_cpu:9.3f}"
            if theirs:
                t, c = min(theirs), min(theirs_cpu)
                line += f" {t:8.3f} {c:9.3f} {t / ours:9.1f}x (cpu {c / ours_cpu:.1f}x)"
            print(line, flush=True)
    if mirp is not None:
        if mirp.reason:
            print(f"MIRP: {mirp.reason}")
        mirp.close()
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    from tracker.radiomics import ENGINE_VERSION, extract, load_config
    from tracker.radiomics.extractor import default_threads

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--skip-mirp", action="store_true")
    ap.add_argument("--jobs", type=int, default=2, help="processes for the second batch run (1: skip it)")
    ap.add_argument(
        "--mirp-repeats", type=int, default=3, help="MIRP runs per lesion (at most --repeats; its time varies ~20%%)"
    )
    ap.add_argument("--pyradiomics-python", type=Path, default=DEFAULT_ENVS / "pyradiomics" / "bin" / "python")
    ap.add_argument("--mirp-python", type=Path, default=DEFAULT_ENVS / "mirp" / "bin" / "python")
    ap.add_argument("--filters", action="store_true", help="only the IBSI 2 filter table (ours vs MIRP)")
    args = ap.parse_args()
    if args.filters:
        filter_table(args)
        return

    rng = np.random.default_rng(SEED)
    lesions = {name: make_lesion(n, rng) for name, n in LESION_VOXELS.items()}
    cfg = load_config("ct_default")
    tmp = Path(tempfile.mkdtemp(prefix="mt_bench_features_"))
    files = {name: write_nifti(tmp, name, image, mask) for name, (image, mask) in lesions.items()}
    peers = [Peer("pyradiomics", args.pyradiomics_python, PYRADIOMICS_WORKER)]
    if not args.skip_mirp:
        peers.append(Peer("MIRP", args.mirp_python, MIRP_WORKER))
    extract(*lesions["small"], SPACING, cfg)  # warm-up: imports, caches
    for peer in peers:
        peer.time(*files["small"])

    # interleave: ours, then each peer, lesion by lesion, so that all see the same machine load
    # ours twice: with the engine's default threads (two for ROIs of >= 20,000 voxels on this machine) and on
    # one thread, the peers' resources
    ours: dict[str, list[float]] = {name: [] for name in lesions}
    ours_1t: dict[str, list[float]] = {name: [] for name in lesions}
    ours_1t_cpu: dict[str, list[float]] = {name: [] for name in lesions}
    theirs: dict[str, dict[str, list[float]]] = {p.name: {name: [] for name in lesions} for p in peers}
    theirs_cpu: dict[str, dict[str, list[float]]] = {p.name: {name: [] for name in lesions} for p in peers}
    n_features = {}
    for rep in range(args.repeats):
        for name, (image, mask) in lesions.items():
            # every timed run follows an untimed run of the same engine on the same lesion: warm CPU caches and
            # memory, whichever engine ran before it; our kernel spectra (cached per transform size) are not reused
            extract(image, mask, SPACING, cfg)
            clear_kernel_caches()
            t0 = time.perf_counter()
            fs = extract(image, mask, SPACING, cfg)
            ours[name].append(time.perf_counter() - t0)
            extract(image, mask, SPACING, cfg, threads=1)
            clear_kernel_caches()
            t0, c0 = time.perf_counter(), time.process_time()
            extract(image, mask, SPACING, cfg, threads=1)
            ours_1t[name].append(time.perf_counter() - t0)
            ours_1t_cpu[name].append(time.process_time() - c0)
            n_features["metatrack"] = sum(bool(np.isfinite(v)) for v in fs.values.values())
            for peer in peers:
                if peer.name == "MIRP" and rep >= args.mirp_repeats:
                    continue  # MIRP is slow: fewer runs per lesion if asked
                peer.time(*files[name])
                out = peer.time(*files[name])
                if out:
                    theirs[peer.name][name].append(out["seconds"])
                    theirs_cpu[peer.name][name].append(out.get("cpu_seconds", float("nan")))
                    n_features[peer.name] = out["n_features"]

    print("engines: metatrack " + ENGINE_VERSION + "".join(f", {p.name} {p.version}" for p in peers))
    print("lesions (voxels): " + ", ".join(f"{k} {int(m.sum())}" for k, (_, m) in lesions.items()))
    print("features per lesion: " + ", ".join(f"{k} {v}" for k, v in n_features.items()))
    header = f"{'lesion':8s} {'ours s':>9s}"
    for peer in peers:
        header += f" {peer.name + ' s':>15s} {peer.name + '/ours':>17s}"
    threads = ", ".join(f"{k} {default_threads(int(m.sum()))}" for k, (_, m) in lesions.items())
    print(f"ours: default threads per lesion ({threads}); the peers run on one thread")
    print_ratios(header, lesions, peers, ours, theirs)
    print("ours on one thread, as the peers:")
    print_ratios(header, lesions, peers, ours_1t, theirs)
    # the same in CPU seconds of the extracting process: robust to other load on a shared machine
    print("CPU seconds (process time), ours on one thread:")
    print_ratios(header.replace(" s ", " cpu ").replace("ours s", "ours cpu"), lesions, peers, ours_1t_cpu, theirs_cpu)
    for peer in peers:
        if peer.reason:
            print(f"{peer.name}: {peer.reason}")
    if args.skip_mirp:
        print("MIRP: skipped (--skip-mirp)")

    # throughput on a batch of lesions of mixed size (small to medium, as metastases are); pyradiomics runs
    # on the same lesions, interleaved
    batch_rng = np.random.default_rng(SEED + 1)
    sizes = batch_rng.integers(200, 20_000, size=args.batch)
    t_ours = t_pyrad = c_ours = c_pyrad = 0.0
    pyrad = peers[0]
    files_batch = []
    for i, n in enumerate(sizes):
        image, mask = make_lesion(int(n), batch_rng)
        t0, c0 = time.perf_counter(), time.process_time()
        extract(image, mask, SPACING, cfg)
        t_ours += time.perf_counter() - t0
        c_ours += time.process_time() - c0
        files_batch.append(write_nifti(tmp, f"batch{i}", image, mask))
        out = pyrad.time(*files_batch[-1])
        t_pyrad += out["seconds"] if out else float("nan")
        c_pyrad += out.get("cpu_seconds", float("nan")) if out else float("nan")
    print(
        f"batch: {args.batch} lesions ({int(sizes.min())}-{int(sizes.max())} voxels, median {int(np.median(sizes))})"
        f": ours {t_ours:.1f} s = {args.batch / t_ours:.1f} lesions/s ({t_ours / args.batch:.3f} s/lesion);"
        f" pyradiomics {t_pyrad:.1f} s ({t_pyrad / args.batch:.3f} s/lesion); ratio {t_pyrad / t_ours:.2f}x"
        f" (CPU: ours {c_ours:.1f} s, pyradiomics {c_pyrad:.1f} s, ratio {c_pyrad / c_ours:.2f}x)"
    )
    for peer in peers:
        peer.close()
    if args.jobs > 1:
        # the same files through `metatrack features --batch --jobs N`'s code path: N processes, one thread each;
        # the processes are started and warmed up before the clock starts
        from tracker.featurefiles import FeatureJob, batch_row

        jobs = [FeatureJob(Path(img), Path(msk)) for img, msk in files_batch]
        warm = FeatureJob(Path(files["small"][0]), Path(files["small"][1]))
        t0 = time.perf_counter()
        rows = [batch_row(job, "ct_default") for job in jobs]
        t_files = time.perf_counter() - t0
        spawn = multiprocessing.get_context("spawn")
        warm_args = (warm, "ct_default")
        with ProcessPoolExecutor(args.jobs, mp_context=spawn, initializer=batch_row, initargs=warm_args) as pool:
            list(pool.map(batch_row, [warm] * args.jobs, ["ct_default"] * args.jobs))  # every worker started
            t0 = time.perf_counter()
            rows += list(pool.map(batch_row, jobs, ["ct_default"] * len(jobs), [1] * len(jobs)))
            t_jobs = time.perf_counter() - t0
        assert all(r["error"] is None for r in rows)
        print(
            f"batch from the NIfTI files (read and validated, as pyradiomics reads them; features --batch; after the"
            f" peers): 1 process {t_files:.1f} s = {args.batch / t_files:.1f} lesions/s (pyradiomics, 1 process,"
            f" /ours {t_pyrad / t_files:.2f}x); --jobs {args.jobs}: {t_jobs:.1f} s = {args.batch / t_jobs:.1f}"
            f" lesions/s ({t_files / t_jobs:.2f}x our 1 process)"
        )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
