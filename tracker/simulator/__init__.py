"""Synthetic longitudinal oncology CT cohorts with full ground truth.

Each patient has a CT-like body (air, fat, soft tissue, liver, lungs with vessels, vertebrae), liver/lung
metastases whose sizes follow per-lesion trajectories (grow, shrink, stable, vanish, new, merge, split, return),
a baseline scan and 2-6 follow-ups 6-16 weeks apart, each taken on one of the patient's 1-3 scanners (noise sd,
HU offset, slice spacing) after rigid repositioning and a smooth non-rigid deformation, and a time to metastatic
progression drawn from a hazard driven by the lesions' dynamics (see ``outcome``).

Transform convention: scan k's physical point q (LPS mm, x,y,z) shows the anatomy at the baseline physical point
p = psi_k(q) (``motion``); psi_0 is the identity. ``true_map_to_baseline`` applies psi_k, ``true_map_to_scan``
its inverse.

Files written by ``simulate_cohort(cfg, OUT)``::

    OUT/manifest.csv   patient_id,date,image,mask,organs,modality,scanner,role (paths relative to OUT)
    OUT/<pid>/<date>/image.nii.gz   int16 HU;  mask.nii.gz  uint8/uint16 lesion labels 1..k (random order);
                     organs.nii.gz  uint8 (0 air, 1 body/soft tissue, 2 liver, 3 lung, 4 bone, 5 fat)
    OUT/events.csv     patient_id,time_days,event,event_date (event 1 = progression, 0 = censored)
    OUT/truth.json

truth.json schema (version 1)::

    {"schema_version": 1, "connectivity": 26, "config": {SimulationConfig fields},
     "patients": {pid: {
        "patient_id", "baseline_date", "time_days", "event", "event_date", "resistance" (latent driver),
        "large_motion", "hazard_start_day", "admin_end_day", "planned_days", "anatomy", "scanners",
        "scans": [{
            "index", "date", "day", "role", "scanner", "image", "mask", "organs",
            "grid": {"shape" [x,y,z], "spacing" [x,y,z], "origin" [x,y,z]},
            "transform": {"centre", "angles_deg", "translation", "rbf_centres", "rbf_sigmas", "rbf_vectors"},
            "labels": {"<mask label>": [true lesion ids]},       # 2+ ids: merged; an id under 2 labels: split
            "lesions": {lesion id: {"centroid" (scan LPS mm), "centroid_baseline", "volume_mm3", "organ",
                                    "n_voxels"}},              # lesions with voxels in this scan
            "absent": [ids of lesions that exist by this day but are invisible (too small / vanished)],
            # follow-ups only:
            "landmarks": [{"baseline": [x,y,z], "scan": [x,y,z]}],   # psi_k(scan) == baseline exactly
            "rigid": {"centre", "angles_deg", "translation"}, "nonrigid_max_mm", "nonrigid_mean_mm"}],
        "lesions": {lesion id: {"organ", "fate", "onset_day", "onset_scan_index", "d0_mm", "decay", "growth",
                                "lag_days", "het0", "het_rate", "nec0", "nec_rate", "base_hu", "split_day",
                                "anchor", "anchor_offset", "center_mm", "blobs", ...}},
        "future_lesions": {same, for new lesions whose onset is after the last scan (hazard only)}}}}

Lesion volumes/centroids are of the analytic shape in the baseline frame (volume) and mapped to the scan
(centroid); the mask holds every voxel whose centre maps inside a lesion.
"""

from tracker.simulator.cohort import simulate_cohort, simulate_patient
from tracker.simulator.config import DEFAULT_SCANNERS, ScannerSpec, SimulationConfig
from tracker.simulator.features import latent_tables, latent_visit_table
from tracker.simulator.latent import simulate_latent_cohort
from tracker.simulator.truth import (
    label_to_lesions,
    true_lesion_membership,
    true_map_to_baseline,
    true_map_to_scan,
    true_warp_labels,
)
from tracker.simulator.writer import load_truth

__all__ = [
    "DEFAULT_SCANNERS",
    "ScannerSpec",
    "SimulationConfig",
    "label_to_lesions",
    "latent_tables",
    "latent_visit_table",
    "load_truth",
    "simulate_cohort",
    "simulate_latent_cohort",
    "simulate_patient",
    "true_lesion_membership",
    "true_map_to_baseline",
    "true_map_to_scan",
    "true_warp_labels",
]
