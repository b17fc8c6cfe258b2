"""Registration benchmark: TRE, folding, time and memory of our presets against ANTs SyN, per image size.

Cases come from the cohort simulator (``tracker.simulator``: baseline + one follow-up per patient, scanner
differences in noise, HU offset and slice spacing, known landmark pairs); ``--source phantom`` uses the small
built-in phantom instead. Every method runs on the same cases with the same thread count, in this process
(but for the ANTs stage of our ``syn`` preset, in a child process; its CPU time and memory are counted).
TRE is |map(p_baseline, forward) - q_followup| over the simulator's landmarks (baseline -> follow-up frame),
i.e. against the simulator's true deformation. Sizes (``SIZES``): small 112x128x64 at 3 mm (0.9 M voxels),
medium 192x192x128 at 1.5 mm (4.7 M), full 512x512x200 at 0.8x0.8x1.5 mm (52 M). Wall and CPU time are of the
call alone (torch and antspyx are imported before any clock starts); memory is the peak resident memory of the
process and its children above what it held when the call started (sampled every 50 ms).

Usage::

    python benchmarks/registration.py --sizes small,medium --cases 2 --presets accurate --peers syn
    nice -n 5 python benchmarks/registration.py --sizes full --cases 1

Any preset of ``registration.engine.PRESETS`` may be named; ``syn`` is ours (MI affine, then ANTs SyN through
antspyx), ``ants:SyN`` the plain antspyx peer (``ants.registration(type_of_transform="SyN")``).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

FOLDING_EPS = 0.0
PEER_DEMONS_SHRINK = (4, 2)
PEER_DEMONS_SMOOTHING_MM = (8.0, 4.0)
PEER_DEMONS_ITERATIONS = 20
PEER_DEMONS_SIGMA = 2.0
MEMORY_SAMPLE_S = 0.05
# The image sizes: x,y,z voxels and mm.
SIZES: dict[str, tuple[tuple[int, int, int], tuple[float, float, float]]] = {
    "small": ((112, 128, 64), (3.0, 3.0, 3.0)),  # 0.92 M voxels
    "medium": ((192, 192, 128), (1.5, 1.5, 1.5)),  # 4.72 M voxels
    "full": ((512, 512, 200), (0.8, 0.8, 1.5)),  # 52.4 M voxels
}


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (our ``syn`` preset runs ANTs in a child)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def simulator_cases(
    n: int, shape: tuple[int, int, int], spacing: tuple[float, float, float], seed: int, cache: Path
) -> list[dict]:
    """Baseline/follow-up pairs with landmarks from the cohort simulator (cached under ``cache``)."""
    from tracker.simulator import SimulationConfig, load_truth, simulate_cohort

    cfg = SimulationConfig(
        n_patients=n,
        seed=seed,
        shape=shape,
        spacing=spacing,
        min_followups=1,
        max_followups=1,
        workers=1,
    )
    tag = cache / f"sim_n{n}_s{seed}_{'x'.join(map(str, shape))}_{'x'.join(map(str, spacing))}"
    if not (tag / "truth.json").exists():
        simulate_cohort(cfg, tag)
    truth = load_truth(tag / "truth.json")
    cases = []
    for pid, patient in sorted(truth["patients"].items()):
        scans = patient["scans"]
        follow = scans[1]
        marks = np.asarray([[m["baseline"], m["scan"]] for m in follow["landmarks"]], dtype=np.float64)
        cases.append(
            {
                "name": f"{pid}/{follow['scanner']}",
                "fixed": sitk.ReadImage(str(tag / scans[0]["image"]), sitk.sitkFloat32),
                "moving": sitk.ReadImage(str(tag / follow["image"]), sitk.sitkFloat32),
                "p": marks[:, 0],
                "q": marks[:, 1],
            }
        )
    return cases


def phantom_cases(n: int, shape: tuple[int, int, int], spacing: float, seed: int) -> list[dict]:
    from registration.phantom import make_pair

    cases = []
    for k in range(n):
        pair = make_pair(
            shape[::-1],
            (spacing,) * 3,
            seed=seed + k,
            rotation_deg=6.0,
            translation_mm=8.0,
            followup_spacing=(spacing * 1.25, spacing, spacing),
        )
        cases.append(
            {
                "name": f"phantom{seed + k}",
                "fixed": pair.baseline,
                "moving": pair.followup,
                "p": pair.landmarks_baseline,
                "q": pair.landmarks_scan,
            }
        )
    return cases


def field_folding(field_path: Path | None, affine_det: float) -> float:
    if field_path is None:
        return 0.0 if affine_det > 0 else 1.0
    field = sitk.Cast(sitk.ReadImage(str(field_path)), sitk.sitkVectorFloat64)
    det = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field)) * affine_det
    return float(np.mean(det <= FOLDING_EPS))


def run_ours(case: dict, preset: str, threads: int, workdir: Path) -> dict:
    from registration import map_points, register

    t0, c0 = time.perf_counter(), cpu_seconds()
    res = register(case["fixed"], case["moving"], preset=preset, threads=threads, seed=0, workdir=workdir)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    tre = np.linalg.norm(map_points(case["p"], res.forward) - case["q"], axis=1)
    return {
        "tre": tre,
        "fold": float(res.metrics["folding_share"]),
        "wall": wall,
        "cpu": cpu,
        "review": res.needs_review,
    }


def run_ants_syn(case: dict, threads: int, workdir: Path) -> dict:
    """Plain ``ants.registration(type_of_transform="SyN")``; its files are read back with our loader."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    os.environ["ANTS_RANDOM_SEED"] = "1"
    import ants

    from registration import map_points

    fixed = ants.from_numpy(
        sitk.GetArrayFromImage(case["fixed"]).transpose(2, 1, 0).copy(),
        origin=case["fixed"].GetOrigin(),
        spacing=case["fixed"].GetSpacing(),
        direction=np.asarray(case["fixed"].GetDirection()).reshape(3, 3),
    )
    moving = ants.from_numpy(
        sitk.GetArrayFromImage(case["moving"]).transpose(2, 1, 0).copy(),
        origin=case["moving"].GetOrigin(),
        spacing=case["moving"].GetSpacing(),
        direction=np.asarray(case["moving"].GetDirection()).reshape(3, 3),
    )
    t0, c0 = time.perf_counter(), cpu_seconds()
    reg = ants.registration(fixed, moving, type_of_transform="SyN", outprefix=str(workdir / "syn_"))
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    forward = [Path(p) for p in reg["fwdtransforms"]]  # [warp.nii.gz, affine.mat]: warp first, then affine
    tre = np.linalg.norm(map_points(case["p"], forward) - case["q"], axis=1)
    affine = sitk.ReadTransform(str(forward[-1]))
    det = float(np.linalg.det(np.asarray(affine.GetParameters()[:9]).reshape(3, 3)))
    return {"tre": tre, "fold": field_folding(forward[0], det), "wall": wall, "cpu": cpu, "review": False}


def run_sitk_demons(case: dict, threads: int, workdir: Path) -> dict:
    """SimpleITK affine (our MI linear stage) + multi-scale diffeomorphic demons on raw intensities,
    as in the SimpleITK registration notebooks (levels 4, 2 and full resolution)."""
    from registration import map_points, register
    from registration.transforms import write_field

    t0, c0 = time.perf_counter(), cpu_seconds()
    lin = register(case["fixed"], case["moving"], preset="affine", threads=threads, workdir=workdir)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    fixed = case["fixed"]
    moved = sitk.Resample(case["moving"], fixed, sitk.ReadTransform(str(lin.forward[0])), sitk.sitkLinear, -1000.0)
    disp = None
    for shrink, smooth in [*zip(PEER_DEMONS_SHRINK, PEER_DEMONS_SMOOTHING_MM, strict=True), (1, 0.0)]:
        f_l, m_l = fixed, moved
        if smooth > 0:
            f_l = sitk.Shrink(sitk.SmoothingRecursiveGaussian(fixed, smooth), [shrink] * 3)
            m_l = sitk.Shrink(sitk.SmoothingRecursiveGaussian(moved, smooth), [shrink] * 3)
        demons = sitk.DiffeomorphicDemonsRegistrationFilter()
        demons.SetNumberOfIterations(PEER_DEMONS_ITERATIONS)
        demons.SetStandardDeviations(PEER_DEMONS_SIGMA)
        if disp is None:
            disp = demons.Execute(f_l, m_l)
        else:
            disp = demons.Execute(f_l, m_l, sitk.Resample(disp, f_l, sitk.Transform(), sitk.sitkLinear, 0.0))
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    field_path = write_field(disp, workdir / "demons.nii.gz")
    forward = [field_path, lin.forward[0]]
    tre = np.linalg.norm(map_points(case["p"], forward) - case["q"], axis=1)
    return {
        "tre": tre,
        "fold": field_folding(field_path, float(lin.metrics["affine_det"])),
        "wall": wall,
        "cpu": cpu,
        "review": False,
    }


def _size(text: str) -> tuple[str, tuple[int, int, int], tuple[float, float, float]]:
    """A named size of ``SIZES`` or ``X,Y,Z@S`` / ``X,Y,Z@SX,SY,SZ`` (voxels @ mm)."""
    if text in SIZES:
        return (text, *SIZES[text])
    if "@" not in text:
        raise SystemExit(f"--sizes: {text!r} is neither one of {', '.join(SIZES)} nor X,Y,Z@SPACING")
    shape_text, spacing_text = text.split("@")
    shape = tuple(int(v) for v in shape_text.split(","))
    spacing = tuple(float(v) for v in spacing_text.split(","))
    spacing = spacing * 3 if len(spacing) == 1 else spacing
    if len(shape) != 3 or len(spacing) != 3:
        raise SystemExit(f"--sizes: {text!r} needs three sizes and one or three spacings")
    return text, shape, spacing  # type: ignore[return-value]


class PeakMemory:
    """Highest resident memory of this process and its child processes while the block runs, sampled."""

    def __init__(self, interval_s: float = MEMORY_SAMPLE_S) -> None:
        self.interval_s = interval_s
        self.start = self.peak = 0

    @staticmethod
    def resident() -> int:
        pids = [os.getpid()]
        for task in Path("/proc/self/task").iterdir():
            try:
                pids += [int(p) for p in (task / "children").read_text().split()]
            except OSError:  # the thread ended meanwhile
                continue
        total = 0
        for pid in pids:
            try:
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            except OSError:  # the child ended meanwhile
                continue
            total += next((int(line.split()[1]) * 1024 for line in lines if line.startswith("VmRSS:")), 0)
        return total

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.resident())

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = self.resident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.resident())


def run_size(args: argparse.Namespace, size: str, shape: tuple[int, int, int], spacing: tuple[float, float, float]):
    """All methods on the cases of one image size; rows per method."""
    if args.source == "simulator":
        cases = simulator_cases(args.cases, shape, spacing, args.seed, args.cache)
    else:
        cases = phantom_cases(args.cases, shape, spacing[0], args.seed)
    methods: list[tuple[str, object]] = [(f"ours:{p}", p) for p in args.presets.split(",") if p]
    peers = [p for p in args.peers.split(",") if p and p != "none"]
    methods += [("ants:SyN", "syn")] * ("syn" in peers) + [("sitk:affine+demons", "demons")] * ("demons" in peers)
    rows: dict[str, list[dict]] = {name: [] for name, _ in methods}
    workroot = Path(tempfile.mkdtemp(prefix="run_", dir=args.cache))
    old_tmp = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(workroot)  # antspyx temp files stay in here and go with it
    tempfile.tempdir = None
    voxels = int(np.prod(shape))
    print(f"== {size}: {'x'.join(map(str, shape))} at {'x'.join(map(str, spacing))} mm, {voxels / 1e6:.2f} M voxels")
    try:
        for ci, case in enumerate(cases):
            init = np.linalg.norm(case["p"] - case["q"], axis=1)
            print(f"case {case['name']}: initial mean displacement {init.mean():.2f} mm", flush=True)
            for name, what in methods:
                wd = workroot / f"c{ci}_{name.replace(':', '_')}"
                wd.mkdir()
                with PeakMemory() as memory:
                    if name.startswith("ours:"):
                        out = run_ours(case, str(what), args.threads, wd)
                    elif what == "syn":
                        out = run_ants_syn(case, args.threads, wd)
                    else:
                        out = run_sitk_demons(case, args.threads, wd)
                out["memory"] = (memory.peak - memory.start) / 2**30
                rows[name].append(out)
                print(
                    f"  {name:20s} TRE {out['tre'].mean():.3f} mm (p95 {np.percentile(out['tre'], 95):.3f})"
                    f"  fold {100 * out['fold']:.4f}%  {out['wall']:.1f} s  cpu {out['cpu']:.1f} s"
                    f"  mem +{out['memory']:.2f} GB",
                    flush=True,
                )
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
        if old_tmp is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_tmp
    return len(cases), rows


def main() -> None:
    # This script is called registration.py: keep its folder off the path so `import registration` finds the package.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument(
        "--sizes",
        default="small,medium",
        help=f"comma list of {', '.join(SIZES)}; or a ;-list that may hold X,Y,Z@SPACING (mm, 1 or 3 values)",
    )
    parser.add_argument("--presets", default="accurate")
    parser.add_argument("--peers", default="syn", help="comma list of syn, demons, or none")
    parser.add_argument("--source", choices=("simulator", "phantom"), default="simulator")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "metatrack-bench-registration")
    args = parser.parse_args()
    sizes = [_size(s) for s in args.sizes.split(";" if "@" in args.sizes else ",") if s]
    args.cache.mkdir(parents=True, exist_ok=True)
    _warm_up(args.threads)

    table = []
    for size, shape, spacing in sizes:
        n_cases, rows = run_size(args, size, shape, spacing)
        table.append((size, shape, spacing, n_cases, rows))

    print(f"\n{args.source}, {args.threads} threads; mem = peak resident memory above the start of the call")
    header = f"{'size':8s} {'Mvox':>6s} {'method':20s} {'TRE mean':>9s} {'TRE p95':>8s} {'fold %':>8s}"
    header += f" {'wall s':>7s} {'cpu s':>7s} {'mem GB':>7s} {'TRE/SyN':>8s} {'wall/SyN':>9s} {'cpu/SyN':>8s}"
    print(header)
    for size, shape, _, _, rows in table:
        ref = rows.get("ants:SyN")
        for name, outs in rows.items():
            tre = np.concatenate([o["tre"] for o in outs])
            wall = np.mean([o["wall"] for o in outs])
            cpu = np.mean([o["cpu"] for o in outs])
            fold = np.max([o["fold"] for o in outs])
            memory = np.max([o["memory"] for o in outs])
            line = f"{size:8s} {np.prod(shape) / 1e6:6.2f} {name:20s} {tre.mean():9.3f} {np.percentile(tre, 95):8.3f}"
            line += f" {100 * fold:8.4f} {wall:7.1f} {cpu:7.1f} {memory:7.2f}"
            if ref:
                rt = np.concatenate([o["tre"] for o in ref])
                rw, rc = np.mean([o["wall"] for o in ref]), np.mean([o["cpu"] for o in ref])
                line += f" {tre.mean() / rt.mean():8.2f} {wall / rw:9.2f} {cpu / rc:8.2f}"
            print(line)


def _warm_up(threads: int) -> None:
    """Import torch and antspyx before any timing: each method's clock then holds its own work only."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    import ants  # noqa: F401
    import torch

    torch.use_deterministic_algorithms(torch.are_deterministic_algorithms_enabled())  # imports torch._inductor


if __name__ == "__main__":
    main()
