"""Follow-ups without masks: lesions found by propagation and by the segmentation model, scored against the
simulator's truth (issue 14's targets).

    .venv/bin/python benchmarks/segmentation.py [--patients-train 8] [--patients-test 10] [--seed 0]
        [--followups 2 3] [--epochs E] [--workers N] [--keep DIR [--reuse-model] [--modes M ...]] [--quick] [--json]

One cohort is simulated at the demo's scale (`cli.demo.DEMO_SHAPE`/`DEMO_SPACING`). The first patients' scans are
ingested with their masks into a training data home and a segmentation model is trained there through the
workflow `metatrack segment train --promote` runs (`tracker.workflows.segmentation.train`; its wall time and peak
memory measured in a process of its own). The other patients are ingested with the baseline mask only and the
model registered and promoted beside them; that data home is copied once per mode and processed
(`tracker.workflows.process.process_scans`, `Settings(preset="fast", features=False)`), each mode in a process of
its own: propagation alone, the model alone, both (the default), and the reference, every mask given (the true
ones). With ``--keep DIR --reuse-model`` a later run skips the training (the model of the kept run, its figures from
``DIR/training.json``) and re-processes only ``--modes`` (the other modes' homes and figures are the kept run's):
detection settings can be compared on one model.

Scored on every follow-up, on its own grid, against the simulator's true mask: a found lesion (a label of the
mask its lesions were measured on) belongs to the true lesion it overlaps most. Lesions of at least 10 mm
(equivalent-sphere diameter of the true label) seen at the previous scan: detection recall and median Dice; new
lesions (none of their true ids seen before) of at least 10 mm: recall; found lesions overlapping no true lesion:
false positives per follow-up; links (consecutive sightings of a track, `tests.helpers.predicted_edges`, with found
labels mapped to true ones) against the simulator's identities; RECIST response equal to the reference's; the
scan's lesion-finding time (`processing.timings.lesions_s`: model inference, propagation and measuring).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

# Run as a script, this folder is on sys.path and benchmarks/registration.py would shadow the registration package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.helpers

MODES: dict[str, dict[str, Any]] = {  # name -> Settings switches; "reference" is processed with every mask given
    "propagation": {"segmentation_model": False},
    "model": {"propagation": False},
    "both": {},
    "reference": {},
}
MIN_DIAMETER_MM = 10.0
TARGETS: dict[str, tuple[str, float]] = {  # metric -> (">=" or "<=", bar)
    "prev_recall": (">=", 0.95),
    "prev_dice_median": (">=", 0.80),
    "new_recall": (">=", 0.85),
    "fp_per_scan": ("<=", 0.5),
    "link_precision": (">=", 0.95),
    "link_recall": (">=", 0.95),
    "recist_agreement": (">=", 0.90),
    "inference_s_max": ("<=", 20.0),
    "peak_memory_gb": ("<=", 4.0),
}
TRAINING_TARGET_S = 15 * 60.0
LABELS = {
    "prev_recall": "lesions >= 10 mm seen before: recall",
    "prev_dice_median": "  their Dice, median",
    "new_recall": "new lesions >= 10 mm: recall",
    "fp_per_scan": "false positives per follow-up",
    "link_precision": "link precision",
    "link_recall": "link recall",
    "recist_agreement": "RECIST response = reference",
    "inference_s_median": "lesion finding s/scan, median",
    "inference_s_max": "lesion finding s/scan, max",
    "peak_memory_gb": "peak memory, GB",
    "failed_scans": "failed scans",
}


# ------------------------------------------------------------------------------------------- data homes
def _home(path: Path) -> tuple[Any, Any]:
    """(engine, store) of a SQLite data home at ``path`` (migrated)."""
    from db.migrate import upgrade
    from db.session import make_engine
    from tracker.store import FileStore

    path.mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{path / 'metatrack.db'}")
    upgrade(engine)
    return engine, FileStore(path / "store")


def _ingest(path: Path, requests: list[Any]) -> None:
    from tracker.workflows.ingest import ingest_many

    engine, store = _home(path)
    _, failed = ingest_many(engine, store, requests)
    engine.dispose()
    if failed:
        raise SystemExit(f"ingest into {path} failed: {failed[0][1]}")


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def train_model(home: Path, cfg: Any) -> dict[str, Any]:
    """Train, register and promote a segmentation model on a data home's labelled scans (run in a process of its
    own: its peak memory is the training's)."""
    from tracker.workflows import segmentation

    engine, store = _home(home)
    start, cpu = time.perf_counter(), time.process_time()
    info = segmentation.train(engine, store, cfg, promote=True)
    info["train_s"], info["train_cpu_s"] = time.perf_counter() - start, time.process_time() - cpu
    info["peak_memory_gb"] = _peak_gb()
    engine.dispose()
    return info


def add_model(train_home: Path, home: Path) -> str:
    """Register the training home's promoted segmentation model in another data home and promote it there."""
    from tracker.segmentation import SEGMENTATION_ENDPOINT
    from tracker.segmentation.model import read_segmentation_model
    from tracker.workflows import models, segmentation

    engine, store = _home(train_home)
    _, path = segmentation.segmentation_file(engine, store, None)
    engine.dispose()
    model = read_segmentation_model(path)
    engine, store = _home(home)
    spec = models.register(engine, store, cast(Any, model), segmentation.DEFAULT_NAME, SEGMENTATION_ENDPOINT)["model"]
    models.promote(engine, spec)
    engine.dispose()
    return str(spec)


def process_mode(home: Path, switches: dict[str, Any], threads: int) -> dict[str, Any]:
    """Process every scan of a data home (run in a process of its own); wall time and peak memory."""
    from tracker.records import Settings
    from tracker.workflows.process import process_scans

    engine, store = _home(home)
    settings = dataclasses.replace(Settings(preset="fast", features=False, threads=threads), **switches)
    start, cpu = time.perf_counter(), time.process_time()
    report = process_scans(engine, store, settings, home / "tmp")
    out = {
        "wall_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu,
        "processed": len(report.processed),
        "failed": dict(report.failed),
        "peak_memory_gb": _peak_gb(),
    }
    engine.dispose()
    return out


# ------------------------------------------------------------------------------------------------ scoring
@dataclasses.dataclass
class Tally:
    """Counts pooled over the follow-ups of one mode."""

    prev: int = 0
    prev_found: int = 0
    dice: list[float] = dataclasses.field(default_factory=list)
    new: int = 0
    new_found: int = 0
    new_any_size: int = 0
    false_positives: int = 0
    false_by_source: dict[str, int] = dataclasses.field(default_factory=dict)
    follow_ups: int = 0
    links_true: int = 0
    links_found: int = 0
    links_right: int = 0
    recist_compared: int = 0
    recist_equal: int = 0
    lesions_s: list[float] = dataclasses.field(default_factory=list)
    failed_scans: int = 0


def overlap_map(true: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(voxel counts[true label, found label], the true label each found label overlaps most, 0 for none)."""
    t, f = true.astype(np.int64).ravel(), found.astype(np.int64).ravel()
    nf = int(f.max(initial=0)) + 1
    counts = np.bincount(t * nf + f, minlength=(int(t.max(initial=0)) + 1) * nf).reshape(-1, nf)
    best = np.zeros(nf, np.int64)
    touching = counts[1:, :].sum(axis=0) > 0
    if touching.any():  # a scan without true lesions: nothing touches one
        best[touching] = counts[1:, touching].argmax(axis=0) + 1
    best[0] = 0
    return counts, best


def score_patient(
    tally: Tally,
    timeline: dict[str, Any],
    masks: list[np.ndarray | None],
    lesions_s: list[float | None],
    truth: dict[str, Any],
    true_masks: list[np.ndarray],
    reference: dict[str, Any] | None,
) -> None:
    """Add one patient's follow-ups to ``tally``. ``masks[k]``: the mask scan k's lesions were measured on (None
    when it failed); ``reference``: the reference mode's timeline (RECIST compared with it)."""
    from tests.helpers import predicted_edges, truth_edges

    maps: list[np.ndarray] = []
    seen: set[str] = set()
    for k, scan in enumerate(truth["scans"]):
        true = true_masks[k]
        measured = masks[k]
        found = measured if measured is not None else np.zeros_like(true)
        counts, best = overlap_map(true, found)
        maps.append(best)
        ids = {int(label): set(v) for label, v in scan["labels"].items()}
        if k > 0:
            tally.follow_ups += 1
            if measured is None:
                tally.failed_scans += 1
            voxel_mm3 = float(np.prod(scan["grid"]["spacing"]))
            previous = {i for v in truth["scans"][k - 1]["labels"].values() for i in v}
            for label, true_ids in ids.items():
                tally.new_any_size += not true_ids & seen
                size = counts[label].sum() if label < len(counts) else 0
                if (6.0 * size * voxel_mm3 / np.pi) ** (1 / 3) < MIN_DIAMETER_MM:
                    continue
                mine = np.flatnonzero(best == label)
                hit = bool(len(mine))
                if true_ids & previous:
                    tally.prev += 1
                    tally.prev_found += hit
                    inter = counts[label, mine].sum()
                    tally.dice.append(2.0 * inter / (size + counts[:, mine].sum()))
                elif not true_ids & seen:
                    tally.new += 1
                    tally.new_found += hit
            sources = {les["label"]: les.get("source") or "given" for les in timeline["scans"][k]["lesions"]}
            for f in np.flatnonzero(best[1:] == 0) + 1:
                if counts[:, f].sum() == 0:
                    continue  # a label the measured mask does not hold
                tally.false_positives += 1
                src = sources.get(int(f), "?")
                tally.false_by_source[src] = tally.false_by_source.get(src, 0) + 1
            if lesions_s[k] is not None:
                tally.lesions_s.append(float(cast(float, lesions_s[k])))
            if reference is not None:
                ref = reference["scans"][k]["recist"]
                mine_recist = timeline["scans"][k]["recist"]
                if ref is not None and ref.get("response") is not None:
                    tally.recist_compared += 1
                    tally.recist_equal += mine_recist is not None and mine_recist.get("response") == ref["response"]
        seen |= {i for v in ids.values() for i in v}
    expected = truth_edges(truth)
    got = set()
    for j, a, k, b in predicted_edges(timeline):
        ta = int(maps[j][a]) if a < len(maps[j]) else 0
        tb = int(maps[k][b]) if b < len(maps[k]) else 0
        got.add((j, ta if ta else -a, k, tb if tb else -b))  # a found lesion matching none: a wrong link
    tally.links_true += len(expected)
    tally.links_found += len(got)
    tally.links_right += len(got & expected)


def score_mode(
    home: Path,
    truth: dict[str, Any],
    cohort: Path,
    patients: list[str],
    reference: dict[str, dict[str, Any]] | None,
) -> tuple[Tally, dict[str, dict[str, Any]]]:
    """Score one processed data home against the truth; also returns its timelines by patient."""
    import SimpleITK as sitk

    from db import repo
    from db.results import scan_frame
    from db.session import session_scope
    from tracker.workflows import views

    engine, store = _home(home)
    tally, timelines = Tally(), {}
    for pid in patients:
        tl = views.timeline(engine, pid)
        timelines[pid] = tl
        t = truth["patients"][pid]
        masks: list[np.ndarray | None] = []
        seconds: list[float | None] = []
        with session_scope(engine) as s:
            rows = repo.patient_scans(s, cast(Any, repo.get_patient(s, pid)))
            for scan, row in zip(tl["scans"], rows, strict=True):
                if scan["state"] != "processed":
                    masks.append(None)
                    seconds.append(None)
                    continue
                files = scan_frame(s, store, pid, row.scan_date)
                masks.append(sitk.GetArrayFromImage(sitk.ReadImage(str(files.mask))) if files.mask else None)
                seconds.append(((row.processing or {}).get("timings") or {}).get("lesions_s"))
        true_masks = [sitk.GetArrayFromImage(sitk.ReadImage(str(cohort / sc["mask"]))) for sc in t["scans"]]
        score_patient(tally, tl, masks, seconds, t, true_masks, None if reference is None else reference[pid])
    engine.dispose()
    return tally, timelines


def summary(tally: Tally, run: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {
        "prev_recall": ratio(tally.prev_found, tally.prev),
        "prev_dice_median": statistics.median(tally.dice) if tally.dice else float("nan"),
        "new_recall": ratio(tally.new_found, tally.new),
        "fp_per_scan": ratio(tally.false_positives, tally.follow_ups),
        "link_precision": ratio(tally.links_right, tally.links_found),
        "link_recall": ratio(tally.links_right, tally.links_true),
        "recist_agreement": ratio(tally.recist_equal, tally.recist_compared),
        "inference_s_median": statistics.median(tally.lesions_s) if tally.lesions_s else float("nan"),
        "inference_s_max": max(tally.lesions_s, default=float("nan")),
        "peak_memory_gb": run["peak_memory_gb"],
        "failed_scans": tally.failed_scans,
        "counts": {
            "follow_ups": tally.follow_ups,
            "lesions_seen_before": tally.prev,
            "new_lesions": tally.new,
            "new_lesions_any_size": tally.new_any_size,
            "false_positives": tally.false_positives,
            "false_positives_by_source": tally.false_by_source,
            "links_true": tally.links_true,
            "links_found": tally.links_found,
            "recist_compared": tally.recist_compared,
        },
        "process_wall_s": run["wall_s"],
        "process_cpu_s": run["cpu_s"],
        "errors": sorted(set(run["failed"].values()))[:3],
    }


def met(metric: str, value: float) -> bool:
    op, bar = TARGETS[metric]
    return bool(value >= bar if op == ">=" else value <= bar)


# --------------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients-train", type=int, default=8)
    ap.add_argument("--patients-test", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--followups", type=int, nargs=2, default=(2, 3), metavar=("MIN", "MAX"))
    ap.add_argument("--epochs", type=int, help="maximum training epochs (default: `segment train`'s)")
    ap.add_argument("--workers", type=int, default=1, help="modes processed at once")
    ap.add_argument("--threads", type=int, default=2, help="registration threads per mode")
    ap.add_argument("--keep", type=Path, help="work here and keep the data homes (a cohort there is reused)")
    ap.add_argument("--reuse-model", action="store_true", help="with --keep: the kept run's trained model, no training")
    ap.add_argument(
        "--modes", nargs="+", choices=list(MODES), help="with --reuse-model: re-process only these (default: all)"
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 + 2 patients, one follow-up, 2 epochs")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    args = ap.parse_args()
    if (args.reuse_model or args.modes) and not args.keep:
        ap.error("--reuse-model and --modes need --keep DIR")
    if args.modes and not args.reuse_model:
        ap.error("--modes needs --reuse-model")
    if args.quick:
        args.patients_train, args.patients_test, args.followups, args.epochs = 3, 2, (1, 1), args.epochs or 2
    with tempfile.TemporaryDirectory(prefix="segbench_") as scratch:
        results = run_benchmark(args, args.keep or Path(scratch))
    if args.json:
        print(json.dumps(results, indent=2, default=float))
    else:
        print_table(results)


def run_benchmark(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from cli.demo import DEMO_SHAPE, DEMO_SPACING
    from tracker.segmentation.config import SegmentationConfig
    from tracker.simulator import SimulationConfig, load_truth, simulate_cohort
    from tracker.workflows.ingest import read_manifest

    started, load_start = time.perf_counter(), os.getloadavg()[0]
    n = args.patients_train + args.patients_test
    cohort = root / "cohort"
    sim = SimulationConfig(
        n_patients=n,
        seed=args.seed,
        shape=DEMO_SHAPE,
        spacing=DEMO_SPACING,
        min_followups=args.followups[0],
        max_followups=args.followups[1],
    )
    if not (cohort / "truth.json").exists():
        _log(f"simulating {n} patients at {DEMO_SPACING[0]:g} mm {DEMO_SHAPE}")
        simulate_cohort(sim, cohort)
    truth = load_truth(cohort / "truth.json")
    requests = read_manifest(cohort / "manifest.csv")
    patients = sorted({r.external_id for r in requests})
    train, test = patients[: args.patients_train], patients[args.patients_train :]
    defaults = SegmentationConfig()
    epochs = args.epochs or defaults.max_epochs
    reuse = bool(args.reuse_model)
    redo = set(args.modes or MODES) if reuse else set(MODES)
    if reuse and not (root / "training.json").exists():
        raise SystemExit(f"--reuse-model: no {root / 'training.json'} (run once with --keep {root} first)")
    for name in ([] if reuse else ["train", "test"]) + [m for m in MODES if m in redo]:
        shutil.rmtree(root / name, ignore_errors=True)
    test_requests = [r for r in requests if r.external_id in test]
    if "reference" in redo:
        _ingest(root / "reference", test_requests)
    if reuse:
        trained = json.loads((root / "training.json").read_text())
        spec = trained["spec"]
        _log(f"reusing {spec} (trained in {trained['train_s']:.0f} s)")
    else:
        _ingest(root / "train", [r for r in requests if r.external_id in train])
        first = {pid: min(r.scan_date for r in requests if r.external_id == pid and r.scan_date) for pid in test}
        _ingest(
            root / "test",
            [r if r.scan_date == first[r.external_id] else dataclasses.replace(r, mask=None) for r in test_requests],
        )
        cfg = SegmentationConfig(seed=args.seed, max_epochs=epochs, min_epochs=min(epochs, defaults.min_epochs))
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn, max_tasks_per_child=1) as pool:
            _log(f"training on {len(train)} patients' {sum(r.external_id in train for r in requests)} scans")
            trained = pool.submit(train_model, root / "train", cfg).result()
        _log(f"trained {trained['model']} in {trained['train_s']:.0f} s")
        spec = add_model(root / "train", root / "test")
        trained["spec"] = spec
        (root / "training.json").write_text(json.dumps(trained, indent=2, default=float))
    for mode in MODES:
        if mode != "reference" and mode in redo:
            shutil.copytree(root / "test", root / mode)
    runs: dict[str, Any] = {}
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=spawn, max_tasks_per_child=1) as pool:
        futures = {
            mode: pool.submit(process_mode, root / mode, switches, args.threads)
            for mode, switches in MODES.items()
            if mode in redo
        }
        for mode, fut in futures.items():
            runs[mode] = fut.result()
            (root / f"{mode}.run.json").write_text(json.dumps(runs[mode], default=float))
            _log(f"{mode}: {runs[mode]['processed']} scans processed in {runs[mode]['wall_s']:.0f} s")
    for mode in MODES:
        if mode not in runs:
            runs[mode] = json.loads((root / f"{mode}.run.json").read_text())
    reference_tally, reference_tl = score_mode(root / "reference", truth, cohort, test, None)
    modes = {}
    for mode in MODES:
        tally = (
            reference_tally if mode == "reference" else score_mode(root / mode, truth, cohort, test, reference_tl)[0]
        )
        if mode == "reference":
            tally.recist_compared = tally.recist_equal = tally.follow_ups
        modes[mode] = summary(tally, runs[mode])
    return {
        "command": " ".join(sys.argv),
        "cohort": {
            "seed": args.seed,
            "shape": list(DEMO_SHAPE),
            "spacing_mm": list(DEMO_SPACING),
            "followups": list(args.followups),
            "train_patients": len(train),
            "test_patients": len(test),
            "test_follow_ups": modes["both"]["counts"]["follow_ups"],
        },
        "training": {
            "model": spec,
            "epochs_max": epochs,
            "train_s": trained["train_s"],
            "train_cpu_s": trained["train_cpu_s"],
            "peak_memory_gb": trained["peak_memory_gb"],
            "metrics": {
                k: v
                for k, v in trained.items()
                if k not in ("model", "spec", "state", "train_s", "train_cpu_s", "peak_memory_gb")
            },
        },
        "modes": modes,
        "wall_s": time.perf_counter() - started,
        "load_average": {"start": load_start, "end": os.getloadavg()[0], "cpus": os.cpu_count()},
    }


def print_table(results: dict[str, Any]) -> None:
    c, tr, modes = results["cohort"], results["training"], results["modes"]
    print(
        f"cohort: seed {c['seed']}, {c['train_patients']} training + {c['test_patients']} test patients, "
        f"{c['test_follow_ups']} test follow-ups without masks ({c['followups'][0]}-{c['followups'][1]} per patient), "
        f"{c['shape'][0]}x{c['shape'][1]}x{c['shape'][2]} at {c['spacing_mm'][0]:g} mm"
    )
    # on a loaded machine wall time overstates it; on 2 free cores it takes at most its CPU time
    train_ok = "met" if min(tr["train_s"], tr["train_cpu_s"]) <= TRAINING_TARGET_S else "NOT MET"
    mem_ok = "met" if tr["peak_memory_gb"] <= TARGETS["peak_memory_gb"][1] else "NOT MET"
    print(
        f"training {tr['model']} (<= {tr['epochs_max']} epochs): {tr['train_s']:.0f} s wall, "
        f"{tr['train_cpu_s']:.0f} s CPU (target <= 900 s on 2 cores: {train_ok}), "
        f"peak memory {tr['peak_memory_gb']:.2f} GB ({mem_ok})"
    )
    names = list(MODES)
    print(f"{'':38}{'target':>9}" + "".join(f"{m:>13}" for m in names) + "   both")
    for metric, label in LABELS.items():
        target = TARGETS.get(metric)
        cells = []
        for m in names:
            v = modes[m][metric]
            cells.append(f"{v:13d}" if isinstance(v, int) else f"{v:13.3f}")
        value = modes["both"][metric]
        verdict = "" if not target else "no cases" if value != value else "met" if met(metric, value) else "NOT MET"
        bar = f"{target[0]} {target[1]:g}" if target else ""
        print(f"{label:38}{bar:>9}{''.join(cells)}   {verdict}")
    for m in names:
        counts = modes[m]["counts"]
        errors = f"; errors: {modes[m]['errors']}" if modes[m]["errors"] else ""
        print(
            f"{m}: {counts['lesions_seen_before']} lesions seen before, {counts['new_lesions']} new "
            f"({counts['new_lesions_any_size']} of any size), "
            f"{counts['false_positives']} false positives {counts['false_positives_by_source']}, "
            f"{counts['links_found']}/{counts['links_true']} links found/true, processed in "
            f"{modes[m]['process_wall_s']:.0f} s ({modes[m]['process_cpu_s']:.0f} s CPU){errors}"
        )
    load = results["load_average"]
    print(
        f"wall time {results['wall_s']:.0f} s; load average (1 min) {load['start']:.1f} at the start, "
        f"{load['end']:.1f} at the end, {load['cpus']} CPUs"
    )


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
