"""A user's own choice of RECIST target lesions: re-assess every processed follow-up with it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from db.results import recist_history, recist_row, write_recist
from db.session import session_scope
from tracker.recist import (
    Measurement,
    NonTargetRule,
    RecistLesion,
    TargetSelection,
    VisitMeasurements,
    assess,
    inherited_role,
    lineage_labels,
    next_nadirs,
    select_targets,
)
from tracker.records import Settings

if TYPE_CHECKING:
    from db.models import Lesion, Scan


def _rule(scan: Scan) -> NonTargetRule:
    """The non-target progression rule the scan was processed with (the defaults for scans processed before)."""
    stored = (scan.processing or {}).get("settings") or {}
    defaults = Settings()
    return NonTargetRule(
        float(stored.get("recist_non_target_volume_ratio", defaults.recist_non_target_volume_ratio)),
        float(stored.get("recist_non_target_min_increase_mm3", defaults.recist_non_target_min_increase_mm3)),
    )


def _roles(selection: TargetSelection, numbers: list[int], parents: dict[int, int]) -> dict[int, str]:
    """Baseline tracks' roles from the selection; a fragment split from a track takes its role, others are new."""
    roles = {n: str(role) for n, role in selection.roles().items()}
    for n in sorted(numbers):  # a parent's number is smaller than its fragments'
        if n not in roles:
            roles[n] = inherited_role(roles, parents.get(n))
    return roles


def _visit(
    selection: TargetSelection, links: list[tuple], parents: dict[int, int], merged: dict[int, list[int]], masked: bool
) -> VisitMeasurements:
    """One follow-up from its (track number, lesion, change, lesion's track number) links; `merged` collects
    which track each one merged into, scan after scan. Without a lesion mask nothing was measured (NE)."""
    lesions: dict[int, Measurement] = {}
    labels: dict[int, list[int]] = {}
    for number, les, change, owner in links:
        if les is None:
            continue
        lesions[les.id] = Measurement(les.long_axis_mm or 0.0, les.short_axis_mm or 0.0, les.volume_mm3)
        labels.setdefault(number, []).append(les.id)
        if change == "merged" and owner is not None:
            merged.setdefault(number, []).append(owner)
    successors = {number: list(after) for number, after in merged.items()}
    for child, parent in parents.items():
        successors.setdefault(parent, []).append(child)
    followed = [*selection.target_ids, *(les.track_id for les in selection.non_targets)]
    new = any(change == "new" for _, _, change, _ in links)
    tracks = lineage_labels(followed, labels, successors) if masked else {}
    return VisitMeasurements(lesions, tracks, new)


def set_targets(engine: Engine, external_id: str, track_numbers: list[int]) -> list[dict[str, Any]]:
    """Make these tracks the patient's targets (RECIST limits checked) and re-assess; one transaction."""
    with session_scope(engine) as s:
        history = recist_history(s, external_id)
        scans, links, parents = history.scans, history.links, history.parents
        by_lesion = {les.id: n for n, les, _, _ in links[scans[0].id] if les is not None}
        lesions = [_recist_lesion(by_lesion[les.id], les) for les in history.baseline if les.id in by_lesion]
        selection = select_targets(lesions, override=track_numbers)
        rule = _rule(scans[-1])
        base = selection.baseline_sum_mm
        sums = [recist_row(None, selection, base)]
        nadir, nt_nadir = base, None
        merged: dict[int, list[int]] = {}
        for scan in scans[1:]:
            visit = _visit(selection, links[scan.id], parents, merged, scan.id not in history.unmasked)
            a = assess(selection, visit, nadir, nt_nadir, rule)
            nadir, nt_nadir = next_nadirs(a, nadir, nt_nadir)
            sums.append(recist_row(a, None, base))
        numbers = sorted({n for scan_links in links.values() for n, *_ in scan_links})
        write_recist(s, history.patient, scans, _roles(selection, numbers, parents), sums)
    return [{"date": sc.scan_date.isoformat(), **v} for sc, v in zip(scans, sums, strict=True)]


def _recist_lesion(track_number: int, les: Lesion) -> RecistLesion:
    return RecistLesion(track_number, les.organ, les.long_axis_mm or 0.0, les.short_axis_mm or 0.0, les.volume_mm3)
