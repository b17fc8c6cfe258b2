"""Lesion-tracking benchmark: match lesions across a simulated cohort and score against the simulator's truth.

Simulates a cohort (``tracker.simulator.simulate_cohort``), then for every patient processes the scans in date
order as the pipeline does: each open track's last lesion mask is warped into the new scan's grid and its
centroid mapped there, and ``tracker.matching.match_lesions`` links the new scan's lesions. Frames are related
by a point mapper (``--transforms truth``: the simulator's true transforms; ``--transforms registration``: the
registration engine, wired through :func:`registration_mapper`).

Scores (patient-level bootstrap 95 % intervals):

- pair links: a link joins a lesion (visit k, mask label b) to the lesion it continues (its track's last
  appearance (j, a), or the parent of a split, or the lesion a merged track ran into); true links join mask
  labels sharing a true lesion id at consecutive appearances of that id.
- new lesions (labels at follow-ups whose true ids were never seen before), per change class, and the merge and
  split events recognised (the exact set of links into a merged lesion / out of a split lesion, and the event
  reported).

Usage::

    python benchmarks/tracking.py --patients 30 --seed 0 [--transforms truth|registration] [--error-mm 3]
        [--cohort DIR] [--jobs N] [--json]

``--error-mm`` shifts every follow-up frame of the true mapping by a random vector of that length, a stand-in
for registration error until the registration run is affordable.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from tracker.lesions import Geometry, MeasuredLesion, label_lesions, measure_lesions
from tracker.matching import MatchConfig, MatchResult, TrackState, match_lesions
from tracker.records import ChangeClass

# Run as a script, this folder is on sys.path and benchmarks/registration.py would shadow the registration package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

#: (points (n, 3) LPS mm in the frame of scan ``src``, src, dst) -> the same anatomical points in scan ``dst``.
PointMapper = Callable[[np.ndarray, int, int], np.ndarray]
Node = tuple[int, int]  # (visit index, mask label)
WARP_MARGIN_MM = 6.0
BOOTSTRAP_SAMPLES = 2000
BARS = {"link_precision": 0.97, "link_recall": 0.97, "new_recall": 0.95, "new_precision": 0.95}
BAR_EVENTS = 0.9


@dataclass
class Scan:
    """One scan of a patient as the tracker sees it, plus its truth (mask label -> true lesion ids)."""

    index: int
    geometry: Geometry
    labels: np.ndarray
    lesions: list[MeasuredLesion]
    true_ids: dict[int, set[str]]


@dataclass
class Tracking:
    """What the tracker decided for one patient."""

    edges: set[tuple[Node, Node]] = field(default_factory=set)
    new: set[Node] = field(default_factory=set)
    vanished: set[tuple[int, Node]] = field(default_factory=set)  # (visit, last node of the vanished track)
    merges: set[Node] = field(default_factory=set)  # merged lesion nodes
    splits: set[tuple[int, Node]] = field(default_factory=set)  # (visit, parent node)
    classes: dict[Node, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- frame mapping
def truth_mapper(truth_patient: dict[str, Any]) -> PointMapper:
    """Map points between a patient's scans with the simulator's true transforms (through the baseline)."""
    try:
        from tracker.simulator import true_map_to_baseline, true_map_to_scan
    except ImportError:  # older simulator: apply the stored motion parameters directly
        from tracker.simulator.motion import to_anatomy, to_scan

        def true_map_to_baseline(patient: dict[str, Any], k: int, pts: np.ndarray) -> np.ndarray:
            return to_anatomy(patient["scans"][k]["transform"], pts)

        def true_map_to_scan(patient: dict[str, Any], k: int, pts: np.ndarray) -> np.ndarray:
            return to_scan(patient["scans"][k]["transform"], pts)

    def mapper(points: np.ndarray, src: int, dst: int) -> np.ndarray:
        pts = np.asarray(points, dtype=float).reshape(-1, 3)
        if src == dst:
            return pts
        baseline = pts if src == 0 else true_map_to_baseline(truth_patient, src, pts)
        return baseline if dst == 0 else true_map_to_scan(truth_patient, dst, baseline)

    return mapper


def with_error(mapper: PointMapper, n_scans: int, error_mm: float, seed: int) -> PointMapper:
    """A mapper with a registration-like error: each follow-up's frame is off by a random shift of ``error_mm``.

    Scan k's points reach the baseline displaced by e_k (|e_k| = error_mm, e_0 = 0), so mapping scan j to scan
    k is off by e_j - e_k, as when both follow-ups are registered to the baseline independently.
    """
    rng = np.random.default_rng(seed)
    shifts = rng.normal(size=(n_scans, 3))
    shifts *= error_mm / np.linalg.norm(shifts, axis=1, keepdims=True)
    shifts[0] = 0.0

    def noisy(points: np.ndarray, src: int, dst: int) -> np.ndarray:
        if src == dst:
            return np.asarray(points, dtype=float).reshape(-1, 3)
        return mapper(points, src, dst) + shifts[src] - shifts[dst]

    return noisy


def registration_mapper(
    images: list[Path], workdir: Path, *, preset: str = "fast", threads: int = 2, seed: int = 0
) -> PointMapper:
    """Map points between a patient's scans with the registration engine (every follow-up to the baseline).

    ``images[k]`` is scan k's image; scan k's points go to the baseline through ``result.inverse`` and baseline
    points to scan k through ``result.forward`` (see ``registration.register``).
    """
    import SimpleITK as sitk

    from registration import map_points, register

    fixed = sitk.ReadImage(str(images[0]), sitk.sitkFloat32)
    results = [None]
    for k, path in enumerate(images[1:], start=1):
        moving = sitk.ReadImage(str(path), sitk.sitkFloat32)
        results.append(register(fixed, moving, preset=preset, seed=seed, threads=threads, workdir=workdir / str(k)))

    def mapper(points: np.ndarray, src: int, dst: int) -> np.ndarray:
        pts = np.asarray(points, dtype=float).reshape(-1, 3)
        if src == dst:
            return pts
        baseline = pts if src == 0 else map_points(pts, results[src].inverse)  # type: ignore[union-attr]
        return baseline if dst == 0 else map_points(baseline, results[dst].forward)  # type: ignore[union-attr]

    return mapper


def warp_mask(
    mask: np.ndarray, src: Geometry, dst: Geometry, dst_shape: tuple[int, ...], to_src: Callable, to_dst: Callable
) -> np.ndarray:
    """Nearest-neighbour resampling of a boolean mask from grid ``src`` onto grid ``dst``.

    ``to_dst``/``to_src`` map LPS points between the two frames; only a box around the forward-mapped mask
    (plus a margin) is sampled.
    """
    out = np.zeros(dst_shape, dtype=bool)
    idx = np.argwhere(mask)
    if idx.size == 0:
        return out
    fwd = dst.physical_to_index(to_dst(src.index_to_physical(idx)))
    margin = WARP_MARGIN_MM / np.asarray(dst.spacing_zyx)
    lo = np.maximum(np.floor(fwd.min(axis=0) - margin), 0).astype(int)
    hi = np.minimum(np.ceil(fwd.max(axis=0) + margin) + 1, dst_shape).astype(int)
    if np.any(hi <= lo):
        return out
    grid = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi, strict=True)), indexing="ij"), axis=-1)
    back = np.rint(src.physical_to_index(to_src(dst.index_to_physical(grid.reshape(-1, 3))))).astype(int)
    inside = np.all((back >= 0) & (back < np.asarray(mask.shape)), axis=1)
    values = np.zeros(len(back), dtype=bool)
    values[inside] = mask[tuple(back[inside].T)]
    out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = values.reshape(grid.shape[:3])
    return out


# ------------------------------------------------------------------------------------------------- tracking
def track_patient(scans: list[Scan], mapper: PointMapper, cfg: MatchConfig) -> Tracking:
    """Run matching over one patient's scans in date order, as the pipeline does."""
    out = Tracking()
    # track id -> (last node, mask on that scan's grid, centroid in that scan's frame, volume)
    open_tracks: dict[int, tuple[Node, np.ndarray, np.ndarray, float]] = {}
    next_id = 1
    for scan in scans:
        k = scan.index
        states = []
        for tid, ((j, _a), mask, centroid, volume) in sorted(open_tracks.items()):
            src = scans[j]

            def to_src(p: np.ndarray, j: int = j, k: int = k) -> np.ndarray:
                return mapper(p, k, j)

            def to_dst(p: np.ndarray, j: int = j, k: int = k) -> np.ndarray:
                return mapper(p, j, k)

            warped = warp_mask(mask, src.geometry, scan.geometry, scan.labels.shape, to_src, to_dst)
            states.append(TrackState(tid, warped, to_dst(centroid[None])[0], volume, j))
        result = match_lesions(
            states,
            scan.labels,
            scan.lesions,
            scan.geometry.spacing_zyx,
            cfg,
            visit_index=k,
            next_track_id=next_id,
            geometry=scan.geometry,
        )
        next_id = max([next_id, *(t + 1 for t in result.label_to_track.values() if t is not None)])
        _record(out, k, result, open_tracks)
        by_label = {les.label: les for les in scan.lesions}
        for link in result.links:
            if link.change == ChangeClass.MERGED:
                open_tracks.pop(link.track_id, None)  # type: ignore[arg-type]
            elif link.change != ChangeClass.VANISHED and link.lesion_label is not None and link.track_id is not None:
                les = by_label[link.lesion_label]
                open_tracks[link.track_id] = (
                    (k, link.lesion_label),
                    scan.labels == link.lesion_label,
                    np.asarray(les.centroid_lps),
                    les.volume_mm3,
                )
    return out


def _record(out: Tracking, k: int, result: MatchResult, open_tracks: dict[int, Any]) -> None:
    if k == 0:
        return
    merged_labels = {label for _, label in result.merges}
    split_labels = {label for _, labels in result.splits for label in labels}
    for tid, _labels in result.splits:
        out.splits.add((k, open_tracks[tid][0]))
    for label in merged_labels:
        out.merges.add((k, label))
    for link in result.links:
        node = (k, link.lesion_label) if link.lesion_label is not None else None
        if link.change == ChangeClass.VANISHED:
            out.vanished.add((k, open_tracks[link.track_id][0]))
            continue
        assert node is not None
        if link.change == ChangeClass.NEW:
            out.new.add(node)
        elif link.change == ChangeClass.SPLIT:
            out.edges.add((open_tracks[link.related_track_id][0], node))
        else:  # persistent or merged: the track's own last lesion continues into this one
            out.edges.add((open_tracks[link.track_id][0], node))
        if link.change != ChangeClass.MERGED:
            label = link.lesion_label
            cls = "new" if link.change == ChangeClass.NEW else "persistent"
            cls = "merged" if label in merged_labels else "split" if label in split_labels else cls
            out.classes[node] = cls


# ---------------------------------------------------------------------------------------------------- truth
def truth_tracking(scans: list[Scan], mapper: PointMapper) -> Tracking:
    """The true links, new lesions, vanishings, merges and splits of one patient, from label -> id truth."""
    out = Tracking()
    last_nodes: dict[str, list[Node]] = {}  # true id -> nodes of its latest appearance
    centroids = {(s.index, les.label): np.asarray(les.centroid_lps) for s in scans for les in s.lesions}
    for scan in scans:
        k = scan.index
        here: dict[str, list[int]] = {}
        for label, ids in sorted(scan.true_ids.items()):
            for tid in ids:
                here.setdefault(tid, []).append(label)
        if k > 0:
            for tid, labels in sorted(here.items()):
                prev = last_nodes.get(tid, [])
                for a, b in _pair_nodes(prev, [(k, b) for b in labels], centroids, mapper):
                    out.edges.add((a, b))
            ended = {n for tid, nodes in last_nodes.items() if tid not in here for n in nodes}
            has_successor = {a for a, b in out.edges if b[0] == k}
            out.vanished |= {(k, n) for n in ended - has_successor}
            incoming: dict[Node, set[Node]] = {}
            outgoing: dict[Node, set[Node]] = {}
            for a, b in out.edges:
                if b[0] == k:
                    incoming.setdefault(b, set()).add(a)
                    outgoing.setdefault(a, set()).add(b)
            split_children = {b for a, bs in outgoing.items() if len(bs) > 1 for b in bs}
            out.splits |= {(k, a) for a, bs in outgoing.items() if len(bs) > 1}
            for label in scan.true_ids:
                node = (k, label)
                if node not in incoming:
                    out.new.add(node)
                    out.classes[node] = "new"
                elif len(incoming[node]) > 1:
                    out.merges.add(node)
                    out.classes[node] = "merged"
                else:
                    out.classes[node] = "split" if node in split_children else "persistent"
        for tid, labels in here.items():
            last_nodes[tid] = [(k, b) for b in labels]
    return out


def _pair_nodes(
    prev: list[Node], cur: list[Node], centroids: dict[Node, np.ndarray], mapper: PointMapper
) -> list[tuple[Node, Node]]:
    """Links of one true id between its previous and current appearances.

    When the id is under several labels at both times (a split lesion seen split twice), labels are paired
    one-to-one by the distance of their centroids mapped into the current frame.
    """
    if not prev:
        return []
    if len(prev) == 1 or len(cur) == 1:
        return [(a, b) for a in prev for b in cur]
    k = cur[0][0]
    mapped = np.array([mapper(centroids[a][None], a[0], k)[0] for a in prev])
    dist = np.linalg.norm(mapped[:, None, :] - np.array([centroids[b] for b in cur])[None], axis=-1)
    rows, cols = linear_sum_assignment(dist)
    pairs = [(prev[r], cur[c]) for r, c in zip(rows, cols, strict=True)]
    for c in sorted(set(range(len(cur))) - set(cols.tolist())):
        pairs.append((prev[int(np.argmin(dist[:, c]))], cur[c]))
    return pairs


# -------------------------------------------------------------------------------------------------- scoring
def patient_counts(pred: Tracking, truth: Tracking) -> dict[str, float]:
    """Per-patient counts from which every score is a ratio of sums."""
    counts: dict[str, float] = {
        "link_tp": len(pred.edges & truth.edges),
        "link_pred": len(pred.edges),
        "link_true": len(truth.edges),
        "new_tp": len(pred.new & truth.new),
        "new_pred": len(pred.new),
        "new_true": len(truth.new),
        "vanished_tp": len(pred.vanished & truth.vanished),
        "vanished_pred": len(pred.vanished),
        "vanished_true": len(truth.vanished),
    }
    into = _group(pred.edges, by_target=True)
    out_of = _group(pred.edges, by_target=False)
    t_into = _group(truth.edges, by_target=True)
    t_out_of = _group(truth.edges, by_target=False)
    counts["merge_true"] = len(truth.merges)
    counts["merge_found"] = sum(1 for n in truth.merges if n in pred.merges and into.get(n) == t_into[n])
    counts["split_true"] = len(truth.splits)
    counts["split_found"] = sum(
        1 for k, a in truth.splits if (k, a) in pred.splits and out_of.get((k, a)) == t_out_of[(k, a)]
    )
    for cls in ("persistent", "new", "merged", "split"):
        t_nodes = {n for n, c in truth.classes.items() if c == cls}
        p_nodes = {n for n, c in pred.classes.items() if c == cls}
        counts[f"class_{cls}_tp"] = len(t_nodes & p_nodes)
        counts[f"class_{cls}_pred"] = len(p_nodes)
        counts[f"class_{cls}_true"] = len(t_nodes)
    return counts


def _group(edges: set[tuple[Node, Node]], *, by_target: bool) -> dict[Any, set[Node]]:
    groups: dict[Any, set[Node]] = {}
    for a, b in edges:
        if by_target:
            groups.setdefault(b, set()).add(a)
        else:
            groups.setdefault((b[0], a), set()).add(b)
    return groups


RATIOS = {
    "link_precision": ("link_tp", "link_pred"),
    "link_recall": ("link_tp", "link_true"),
    "new_precision": ("new_tp", "new_pred"),
    "new_recall": ("new_tp", "new_true"),
    "vanished_precision": ("vanished_tp", "vanished_pred"),
    "vanished_recall": ("vanished_tp", "vanished_true"),
    "merges_recognised": ("merge_found", "merge_true"),
    "splits_recognised": ("split_found", "split_true"),
    **{
        f"{cls}_{kind}": (f"class_{cls}_tp", f"class_{cls}_{den}")
        for cls in ("persistent", "new", "merged", "split")
        for kind, den in (("precision", "pred"), ("recall", "true"))
    },
}


def summarise(per_patient: list[dict[str, float]], seed: int = 0) -> dict[str, dict[str, float]]:
    """Each score as a ratio of summed counts, with a patient-level bootstrap 95 % percentile interval."""
    keys = sorted({k for c in per_patient for k in c})
    table = np.array([[c.get(k, 0.0) for k in keys] for c in per_patient])
    col = {k: i for i, k in enumerate(keys)}
    rng = np.random.default_rng(seed)
    boot = table[rng.integers(0, len(table), size=(BOOTSTRAP_SAMPLES, len(table)))].sum(axis=1)
    total = table.sum(axis=0)
    out: dict[str, dict[str, float]] = {}
    for name, (num, den) in RATIOS.items():
        if total[col[den]] == 0:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            samples = boot[:, col[num]] / boot[:, col[den]]
        lo, hi = np.nanpercentile(samples, [2.5, 97.5])
        out[name] = {
            "value": float(total[col[num]] / total[col[den]]),
            "lo": float(lo),
            "hi": float(hi),
            "n": float(total[col[den]]),
        }
    return out


# --------------------------------------------------------------------------------------------- cohort input
def load_patient(cohort: Path, masks: list[str], truth_patient: dict[str, Any]) -> list[Scan]:
    """One patient's scans (date order) from a simulated cohort folder, with their label -> true id truth."""
    import SimpleITK as sitk

    scans = []
    for index, (mask_path, t_scan) in enumerate(zip(masks, truth_patient["scans"], strict=True)):
        image = sitk.ReadImage(str(cohort / mask_path))
        geometry = Geometry.from_image(image)
        labels = label_lesions(sitk.GetArrayFromImage(image), geometry, min_volume_mm3=0.0, split_components=False)
        true_ids = {int(k): {str(v) for v in vs} for k, vs in t_scan["labels"].items()}
        scans.append(Scan(index, geometry, labels, measure_lesions(labels, geometry), true_ids))
    return scans


def evaluate_patient(
    job: tuple[Path, str, list[str], list[str], dict[str, Any], str, int, float, int],
) -> dict[str, float]:
    """Track one patient and count its agreements with the truth (a process-pool job)."""
    cohort, pid, masks, images, truth_patient, transforms, threads, error_mm, seed = job
    scans = load_patient(cohort, masks, truth_patient)
    true_mapper = truth_mapper(truth_patient)
    if transforms == "truth":
        mapper = true_mapper if error_mm <= 0 else with_error(true_mapper, len(scans), error_mm, seed)
        pred = track_patient(scans, mapper, MatchConfig())
    else:
        with tempfile.TemporaryDirectory(prefix=f"metatrack-reg-{pid}-") as work:
            mapper = registration_mapper([cohort / p for p in images], Path(work), threads=threads)
            pred = track_patient(scans, mapper, MatchConfig())
    return patient_counts(pred, truth_tracking(scans, true_mapper))


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=30, help="patients to simulate (or to use, with --cohort)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transforms", choices=("truth", "registration"), default="truth")
    parser.add_argument("--cohort", type=Path, help="an already simulated cohort folder (skips simulation)")
    parser.add_argument("--jobs", type=int, default=1, help="patients processed in parallel")
    parser.add_argument("--threads", type=int, default=2, help="threads per registration")
    parser.add_argument(
        "--error-mm", type=float, default=0.0, help="with --transforms truth: shift each follow-up frame by this"
    )
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="metatrack-tracking-") as tmp:
        cohort = args.cohort
        if cohort is None:
            from tracker.simulator import SimulationConfig, simulate_cohort

            cohort = Path(tmp)
            start = time.perf_counter()
            simulate_cohort(SimulationConfig(n_patients=args.patients, seed=args.seed), cohort)
            print(f"simulated {args.patients} patients in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        manifest = pd.read_csv(cohort / "manifest.csv").sort_values(["patient_id", "date"])
        truth = json.loads((cohort / "truth.json").read_text())
        jobs = []
        for pid, rows in list(manifest.groupby("patient_id", sort=True))[: args.patients]:
            t_patient = _truth_patient(truth, str(pid))
            jobs.append(
                (
                    cohort,
                    str(pid),
                    list(rows["mask"]),
                    list(rows["image"]),
                    t_patient,
                    args.transforms,
                    args.threads,
                    args.error_mm,
                    args.seed + len(jobs),
                )
            )
        start = time.perf_counter()
        if args.jobs > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=args.jobs) as pool:
                per_patient = list(pool.map(evaluate_patient, jobs))
        else:
            per_patient = [evaluate_patient(job) for job in jobs]
        elapsed = time.perf_counter() - start

    scores = summarise(per_patient, seed=args.seed)
    if args.json:
        report = {"patients": len(jobs), "transforms": args.transforms, "error_mm": args.error_mm, "scores": scores}
        print(json.dumps(report, indent=2))
    else:
        error = f", error {args.error_mm} mm" if args.error_mm > 0 else ""
        print(f"{len(jobs)} patients, transforms={args.transforms}{error}, tracking {elapsed:.1f} s")
        print(f"{'score':<24}{'value':>8}{'95% CI':>18}{'n':>7}  bar")
        for name, s in scores.items():
            bar = BARS.get(name, BAR_EVENTS if name in ("merges_recognised", "splits_recognised") else None)
            verdict = "" if bar is None else ("ok" if s["value"] >= bar else f"BELOW {bar}")
            ci = f"[{s['lo']:.3f}, {s['hi']:.3f}]"
            print(f"{name:<24}{s['value']:>8.3f}{ci:>18}{int(s['n']):>7}  {verdict}")
    return 0


def _truth_patient(truth: dict[str, Any], pid: str) -> dict[str, Any]:
    patients = truth["patients"]
    if isinstance(patients, dict):
        return patients[pid]
    return next(p for p in patients if p["patient_id"] == pid)


if __name__ == "__main__":
    raise SystemExit(main())
