"""Report figures and pages from hand-made data: the numbers drawn are the numbers given, the HTML stands alone."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import browser_check
from tracker.reports import figures, pages
from tracker.reports.data import (
    CohortPatient,
    CohortReportData,
    PatientReportData,
    SnapshotPanel,
    SurvivalCurve,
    TrackSnapshots,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ODD_ID = '<b>P&1"</b>'  # markup in a pseudonym must print as text


def _scan(day: int, response: str, pct: float | None, risk12: float, lesions: list[dict]) -> dict:
    return {
        "id": day + 1,
        "date": f"2024-01-{1 + day // 30:02d}",
        "days_from_baseline": day,
        "role": "baseline" if day == 0 else "follow-up",
        "state": "processed",
        "lesions": lesions,
        "vanished_tracks": [],
        "registration": None
        if day == 0
        else {
            "preset": "fast",
            "similarity_before": 0.7,
            "similarity_after": 0.9,
            "folding_fraction": 0.0,
            "needs_review": day == 60,
            "review_reasons": ["similarity decreased <x>"] if day == 60 else [],
        },
        "recist": {
            "sum_mm": 50.0,
            "change_from_baseline_pct": pct,
            "response": response,
            "target_response": response,
            "non_target_response": "Non-CR/Non-PD" if day else None,
            "target_diameters_mm": {"1": 20.0 * (1 + (pct or 0.0) / 100.0)},
            "reasons": ["sum +10 % from nadir <&>"] if response == "PD" else [],
        },
        "risk": [
            {"horizon_months": 6, "risk": risk12 / 2, "model": "m:1"},
            {"horizon_months": 12, "risk": risk12, "model": "m:1"},
            {"horizon_months": 24, "risk": min(1.0, risk12 * 1.5), "model": "m:1"},
        ],
    }


def _lesion(track: int, volume: float, change: str) -> dict:
    return {"track_id": track, "volume_mm3": volume, "change": change}


def _disk_panel(date: str, change: str | None) -> SnapshotPanel:
    yy, xx = np.mgrid[:48, :48]
    disk = (yy - 24) ** 2 + (xx - 24) ** 2 < 36
    return SnapshotPanel(date, np.where(disk, 60.0, 0.0), disk, (-30.0, 30.0, 30.0, -30.0), change)


@pytest.fixture(scope="module")
def patient() -> PatientReportData:
    scans = [
        _scan(0, "BL", None, 0.2, [_lesion(1, 900.0, "new")]),
        _scan(60, "PR", -35.0, 0.3, [_lesion(1, 400.0, "persistent")]),
        _scan(120, "PD", 10.0, 0.5, [_lesion(1, 800.0, "persistent"), _lesion(2, 50.0, "new")]),
    ]
    timeline = {"patient_id": ODD_ID, "scans": scans, "events": [{"kind": "metastasis", "date": "2024-09-01"}]}
    return PatientReportData(
        timeline=timeline,
        endpoint="metastasis",
        model={"name": "m", "version": 1, "kind": "rnn", "created_at": "2024-01-01", "versions": "torch 2"},
        curve=SurvivalCurve("2024-05-01", [1.0, 2.0, 3.0], [0.9, 0.8, 0.7], [0.85, 0.7, 0.6], [0.95, 0.9, 0.8]),
        provenance=[
            {"date": s["date"], "settings": "preset=fast", "metrics": {"body_dice": 0.987, "jacobian_min": 0.61}}
            for s in scans
        ],
        snapshots=[TrackSnapshots(1, [_disk_panel(s["date"], "persistent") for s in scans])],
        generated_by="metatrack test",
    )


@pytest.fixture(scope="module")
def cohort() -> CohortReportData:
    rng = np.random.default_rng(0)
    best = ["CR", "PR", "SD", "PD", "Non-CR/Non-PD", "NE"]
    patients = []
    for k in range(30):
        resp = best[k % len(best)]
        pct = {"CR": -100.0, "PR": -40.0, "SD": 5.0, "PD": 30.0}.get(resp)
        patients.append(
            CohortPatient(
                patient_id=f"P{k:03d}",
                scan_days=[0, 60, 120],
                responses=["BL", resp, resp],
                change_pct=[None, pct, None if pct is None else pct / 2],
                new_lesion_days=[120] if resp == "PD" else [],
                followup_days=float(rng.integers(150, 900)),
                event=bool(k % 3),
                risk=float(k) / 30,
            )
        )
    return CohortReportData("metastasis", "m:1", 12, patients, "metatrack test")


def test_spider_draws_the_target_changes(patient: PatientReportData) -> None:
    fig = pages.patient_figures(patient)["spider"]()
    line = fig.axes[0].lines[0]
    assert line.get_xdata().tolist() == [0, 60, 120]
    assert line.get_ydata().tolist() == [0.0, -35.0, 10.0]
    assert {ln.get_ydata()[0] for ln in fig.axes[0].lines[1:3]} == {20.0, -30.0}  # the RECIST bands


def test_waterfall_bars_are_best_changes_largest_first(cohort: CohortReportData) -> None:
    fig = figures.waterfall(cohort.patients)
    heights = [bar.get_height() for bar in fig.axes[0].containers[0]]
    best = [min(c for c in p.change_pct if c is not None) for p in cohort.patients if any(p.change_pct)]
    assert len(best) == 20  # NE and Non-CR/Non-PD patients have no target sum here
    expected = sorted(best, reverse=True)
    assert heights == expected


def test_swimmer_has_one_lane_per_patient(cohort: CohortReportData) -> None:
    ax = figures.swimmer(cohort.patients).axes[0]
    assert len(ax.get_yticklabels()) == len(cohort.patients)
    assert sorted(t.get_text() for t in ax.get_yticklabels()) == [p.patient_id for p in cohort.patients]


def test_km_groups_by_best_response_and_risk_tertile(cohort: CohortReportData) -> None:
    by_response, by_risk = pages.cohort_groups(cohort)
    assert list(by_response) == ["CR", "PR", "Non-CR/Non-PD", "SD", "PD", "NE"]  # report order
    assert all(len(t) == 5 for t, _ in by_response.values())
    assert [len(t) for t, _ in by_risk.values()] == [10, 10, 10]
    high = [p for p in cohort.patients if p.risk is not None and p.risk >= 20 / 30]
    assert sorted(by_risk["high risk"][0]) == sorted(p.followup_days for p in high)


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_patient_page_stands_alone(patient: PatientReportData) -> None:
    page = pages.patient_html(patient)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"(src|href)=\"(?!data:)", page)  # nothing loaded from anywhere but the page itself
    images = _images(page)
    assert len(images) == len(pages.patient_figures(patient)) == 5  # spider, volumes, risk, survival, T1
    assert all(img.startswith(PNG_MAGIC) for img in images)
    assert ODD_ID not in page and "&lt;b&gt;P&amp;1&quot;&lt;/b&gt;" in page
    assert "similarity decreased &lt;x&gt;" in page and "needs review" in page
    assert page.count("<td>0.987</td><td>0.61</td>") == 2  # each follow-up's registration metrics


def test_cohort_page_stands_alone(cohort: CohortReportData) -> None:
    page = pages.cohort_html(cohort)
    assert len(_images(page)) == 4
    assert ">patients</td><td>30<" in page


@pytest.mark.slow
def test_reports_open_in_chromium(patient: PatientReportData, cohort: CohortReportData, tmp_path: Path) -> None:
    for name, page in (("patient", pages.patient_html(patient)), ("cohort", pages.cohort_html(cohort))):
        path = tmp_path / f"{name}.html"
        path.write_text(page, encoding="utf-8")
        seen = browser_check(path, tmp_path)
        assert seen["console"] == [], seen["console"]
        assert seen["images"] is not None and len(seen["images"]) == len(_images(page))
        assert all(min(sizes[1:]) > 0 for sizes in seen["images"]), seen["images"]
        assert seen["screenshot"].stat().st_size > 10_000


@pytest.mark.slow
def test_browser_check_sees_broken_pages(tmp_path: Path) -> None:
    """The check itself: a console message and an image that does not decode are both reported."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><img id="x" src="data:image/png;base64,AAAA"><script>console.error("boom")</script>')
    seen = browser_check(bad, tmp_path, height=400)
    assert len(seen["console"]) == 1 and "boom" in seen["console"][0]
    assert seen["images"] is not None and seen["images"][0][:2] == ["x", 0]


def test_stored_intervals_are_drawn_as_bands(patient: PatientReportData) -> None:
    from matplotlib.collections import PolyCollection

    survival = pages.patient_figures(patient)["survival"]()
    assert any(isinstance(c, PolyCollection) for c in survival.axes[0].collections)  # the 90 % band
    scans = [
        dict(s, risk=[dict(r, risk_lower=r["risk"] - 0.1, risk_upper=r["risk"] + 0.1) for r in s["risk"]])
        for s in patient.timeline["scans"]
    ]
    risks, bands = pages.risk_series(scans)
    assert risks[12] == [0.2, 0.3, 0.5]
    assert bands[12] == [pytest.approx((0.1, 0.3)), pytest.approx((0.2, 0.4)), pytest.approx((0.4, 0.6))]
    risk = figures.risk_trajectory([0, 60, 120], risks, bands)
    assert sum(isinstance(c, PolyCollection) for c in risk.axes[0].collections) == 3
    _, no_bands = pages.risk_series(patient.timeline["scans"])
    assert all(b is None for b in no_bands[12])


def test_km_without_groups_says_so() -> None:
    fig = figures.km_groups({}, "nothing", None)
    assert [t.get_text() for t in fig.axes[0].texts] == ["no patients in these groups"]


def test_target_changes_per_target() -> None:
    diameters = [{"1": 20.0, "2": 10.0, "3": 0.0}, {"1": 10.0, "2": 12.0}, None, {"1": 30.0, "2": 5.0}]
    out = pages.target_changes([0, 50, 90, 120], diameters)
    assert out == {"T1": [(0, 0.0), (50, -50.0), (120, 50.0)], "T2": [(0, 0.0), (50, 20.0), (120, -50.0)]}
    assert pages.target_changes([], []) == {}


def test_spider_draws_each_target_and_the_recist_table(patient: PatientReportData) -> None:
    fig = pages.patient_figures(patient)["spider"]()
    target = [ln for ln in fig.axes[0].lines if ln.get_color() == "#999999"]
    assert len(target) == 1 and target[0].get_ydata() == pytest.approx([0.0, -35.0, 10.0])
    page = pages.patient_html(patient)
    assert "sum +10 % from nadir &lt;&amp;&gt;" in page and '<td class="text">Non-CR/Non-PD</td>' in page
