"""Reading the ground truth back: exact point mapping and lesion membership from a truth.json patient entry."""

from __future__ import annotations

from typing import Any

import numpy as np

from tracker.errors import MetatrackError
from tracker.simulator.lesions import lesion_rho
from tracker.simulator.motion import to_anatomy, to_scan


def _scan(truth_patient: dict[str, Any], scan_index: int) -> dict[str, Any]:
    scans = truth_patient["scans"]
    if not 0 <= scan_index < len(scans):
        raise MetatrackError(
            f"truth {truth_patient.get('patient_id')}: scan_index {scan_index} out of range (0..{len(scans) - 1})"
        )
    return scans[scan_index]


def true_map_to_baseline(truth_patient: dict[str, Any], scan_index: int, pts_scan: np.ndarray) -> np.ndarray:
    """psi_k: physical points of scan ``scan_index`` (N, 3, LPS mm x,y,z) -> baseline physical points."""
    return to_anatomy(_scan(truth_patient, scan_index)["transform"], np.atleast_2d(pts_scan))


def true_map_to_scan(truth_patient: dict[str, Any], scan_index: int, pts_baseline: np.ndarray) -> np.ndarray:
    """psi_k^{-1}: baseline physical points (N, 3) -> physical points of scan ``scan_index`` (< 1e-5 mm error)."""
    return to_scan(_scan(truth_patient, scan_index)["transform"], np.atleast_2d(pts_baseline))


def true_warp_labels(
    truth_patient: dict[str, Any], scan_index: int, labels: np.ndarray, labels_grid: Any, grid: Any
) -> np.ndarray:
    """Scan ``scan_index - 1``'s label array (on ``labels_grid``) pulled onto scan ``scan_index``'s ``grid`` through
    the true maps, nearest neighbour (0 where the earlier scan does not reach)."""
    zz, yy, xx = np.indices(grid.array_shape)
    q = grid.index_to_physical(np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1))
    p = true_map_to_baseline(truth_patient, scan_index, q)
    r = true_map_to_scan(truth_patient, scan_index - 1, p) if scan_index > 1 else p
    j = np.rint(labels_grid.physical_to_index(r)).astype(int)
    inside = np.all((j >= 0) & (j < np.asarray(labels_grid.shape)), axis=1)
    out = np.zeros(len(j), dtype=labels.dtype)
    out[inside] = labels[j[inside, 2], j[inside, 1], j[inside, 0]]
    return out.reshape(grid.array_shape)


def true_lesion_membership(truth_patient: dict[str, Any], scan_index: int, pts_scan: np.ndarray) -> np.ndarray:
    """Boolean (n_lesions, N): whether each scan point lies inside each true lesion at that scan's day.

    Rows follow ``sorted(truth_patient["lesions"])``.
    """
    scan = _scan(truth_patient, scan_index)
    p = to_anatomy(scan["transform"], np.atleast_2d(pts_scan))
    rows = []
    for lid in sorted(truth_patient["lesions"]):
        les = truth_patient["lesions"][lid]
        rows.append(lesion_rho(les, np.asarray(les["center_mm"]), p, float(scan["day"])) < 1.0)
    return np.array(rows).reshape(len(rows), len(p))


def label_to_lesions(truth_patient: dict[str, Any], scan_index: int) -> dict[int, list[str]]:
    """{mask label: [true lesion ids]} of a scan."""
    return {int(k): v for k, v in _scan(truth_patient, scan_index)["labels"].items()}
