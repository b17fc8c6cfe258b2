"""The report pages: figures of a patient or the cohort, and one self-contained HTML file holding them.

The HTML embeds every figure as a PNG data URI and its Content-Security-Policy forbids every network request, so
the file opens offline (from a USB stick) and shows the same thing everywhere. Text from the database (pseudonyms,
review reasons) is escaped.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tracker.reports import figures, response
from tracker.reports.km import tertiles

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tracker.reports.data import CohortReportData, PatientReportData

RISK_HORIZONS = (6, 12, 24)
TERTILE_NAMES = ("low risk", "middle risk", "high risk")
TERTILE_COLOURS = {"low risk": "#009E73", "middle risk": "#E69F00", "high risk": "#D55E00"}
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 1.8em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f2f2f2; } td.text { text-align: left; }
img.figure { display: block; max-width: 100%; margin: 0.5em 0; }
.review { color: #b00; font-weight: bold; } .meta { color: #555; font-size: 0.9em; }
"""

FigureMaker = Callable[[], "Figure"]


def _esc(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], text_cols: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="text">{_esc(v)}</td>' if i in text_cols else f"<td>{_esc(v)}</td>" for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(fig: Figure, name: str) -> str:
    data = base64.b64encode(figures.to_bytes(fig, "png")).decode("ascii")
    name = html.escape(name)
    return f'<img class="figure" id="fig-{name}" alt="{name}" src="data:image/png;base64,{data}">'


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


# --- patient -------------------------------------------------------------------------------------------------------


def risk_series(scans: Sequence[dict[str, Any]]) -> tuple[dict[int, list[float | None]], dict[int, list[Any]]]:
    """Risk per horizon per scan and its 90 % band (``risk_lower``, ``risk_upper`` of a timeline risk entry) where
    one is stored, else None."""
    risks: dict[int, list[float | None]] = {h: [] for h in RISK_HORIZONS}
    bands: dict[int, list[Any]] = {h: [] for h in RISK_HORIZONS}
    for s in scans:
        by_h = {r["horizon_months"]: r for r in s["risk"]}
        for h in RISK_HORIZONS:
            row = by_h.get(h)
            risks[h].append(row["risk"] if row else None)
            lo, hi = (row or {}).get("risk_lower"), (row or {}).get("risk_upper")
            bands[h].append((lo, hi) if lo is not None and hi is not None else None)
    return risks, bands


def _track_points(scans: Sequence[dict[str, Any]]) -> dict[int, list[tuple[int, float, str | None]]]:
    tracks: dict[int, list[tuple[int, float, str | None]]] = {}
    for s in scans:
        day = s["days_from_baseline"]
        for les in s["lesions"]:
            if les["track_id"] is not None:
                tracks.setdefault(les["track_id"], []).append((day, les["volume_mm3"], les["change"]))
        for number in s["vanished_tracks"]:
            tracks.setdefault(number, []).append((day, 0.0, "vanished"))
    return tracks


def target_changes(
    days: Sequence[int], diameters: Sequence[dict[str, float] | None]
) -> dict[str, list[tuple[int, float]]]:
    """Each baseline target's % change of its diameter from baseline per scan (``T<number>``), from the RECIST
    rows' ``target_diameters_mm`` (track number -> mm); targets without a positive baseline diameter are left out."""
    base = (diameters[0] or {}) if diameters else {}
    out: dict[str, list[tuple[int, float]]] = {}
    for track, d0 in base.items():
        if d0 is None or d0 <= 0:
            continue
        out[f"T{track}"] = [
            (day, 100.0 * (float(d[track]) - d0) / d0)
            for day, d in zip(days, diameters, strict=True)
            if d and d.get(track) is not None
        ]
    return out


def patient_figures(data: PatientReportData) -> dict[str, FigureMaker]:
    """The patient's figures by file name, each made on demand."""
    scans = [s for s in data.timeline["scans"] if s["state"] == "processed"]
    days = [s["days_from_baseline"] for s in scans]
    rec = [s["recist"] or {} for s in scans]
    change = [0.0 if r.get("response") == response.BASELINE else r.get("change_from_baseline_pct") for r in rec]
    targets = target_changes(days, [r.get("target_diameters_mm") for r in rec])
    out: dict[str, FigureMaker] = {
        "spider": lambda: figures.spider(days, change, [r.get("response") for r in rec], targets),
        "volumes": lambda: figures.volume_trajectories(_track_points(scans)),
    }
    risks, bands = risk_series(scans)
    out["risk"] = lambda: figures.risk_trajectory(days, risks, bands)
    if data.curve is not None:
        curve = data.curve
        out["survival"] = lambda: figures.survival_curve(curve)
    for track in data.snapshots:
        out[f"snapshots-T{track.number}"] = lambda t=track: figures.track_snapshots(t)  # type: ignore[misc]
    return out


def _timeline_rows(scans: Sequence[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for s in scans:
        rec = s["recist"] or {}
        by_h = {r["horizon_months"]: r["risk"] for r in s["risk"]}
        reg = s["registration"] or {}
        rows.append(
            [
                s["date"],
                s["days_from_baseline"],
                s["role"],
                s["state"],
                len(s["lesions"]),
                sum(les["change"] == "new" for les in s["lesions"]),
                ", ".join(f"T{n}" for n in s["vanished_tracks"]) or None,
                rec.get("sum_mm"),
                rec.get("change_from_baseline_pct"),
                rec.get("response"),
                *[by_h.get(h) for h in RISK_HORIZONS],
                "review" if reg.get("needs_review") else None,
            ]
        )
    return rows


def patient_html(data: PatientReportData) -> str:
    """The patient report as one HTML document."""
    tl = data.timeline
    scans = tl["scans"]
    figs = patient_figures(data)
    model = data.model or {}
    model_name = f"{model['name']}:{model['version']}" if model else None
    parts = [
        f"<h1>Follow-up report: {html.escape(tl['patient_id'])}</h1>",
        _table(
            ["patient", "scans", "first scan", "last scan", "endpoint", "risk model", "model kind"],
            [
                [
                    tl["patient_id"],
                    len(scans),
                    scans[0]["date"] if scans else None,
                    scans[-1]["date"] if scans else None,
                    data.endpoint,
                    model_name,
                    model.get("kind"),
                ]
            ],
            text_cols=(0, 4, 5, 6),
        ),
        "<h2>Timeline</h2>",
        _table(
            [
                "date",
                "day",
                "role",
                "state",
                "lesions",
                "new",
                "vanished",
                "target sum (mm)",
                "change (%)",
                "RECIST",
                *[f"risk {h} m" for h in RISK_HORIZONS],
                "registration",
            ],
            _timeline_rows(scans),
            text_cols=(0, 2, 3, 6, 9, 14),
        ),
    ]
    if tl["events"]:
        parts.append(_table(["event", "date"], [[e["kind"], e["date"]] for e in tl["events"]], text_cols=(0, 1)))
    parts += [
        "<h2>Target lesions: spider plot</h2>",
        '<p class="meta">Sum of target diameters, % change from baseline; dashed: +20 % (progression, against the '
        "nadir) and −30 % (partial response).</p>",
        _img(figs["spider"](), "spider"),
        _recist_table(scans),
        "<h2>Lesion volumes by track</h2>",
        _img(figs["volumes"](), "volumes"),
        "<h2>Lesion snapshots</h2>",
        '<p class="meta">Axial slice through each track\'s centroid at every scan, resampled into the baseline frame '
        "through the stored registration (same anatomy across scans); contour: the track's lesion.</p>",
    ]
    parts += [_img(make(), name) for name, make in figs.items() if name.startswith("snapshots-")] or [
        "<p>No lesion snapshots (no tracked lesions or image files).</p>"
    ]
    parts += [
        "<h2>Risk</h2>",
        f'<p class="meta">Model {_esc(model_name)} ({_esc(model.get("kind"))}), endpoint {_esc(data.endpoint)}: '
        "risk within 6, 12 and 24 months after each scan; shaded: the stored 90 % interval where there is one.</p>",
        _img(figs["risk"](), "risk"),
    ]
    if "survival" in figs:
        parts.append(_img(figs["survival"](), "survival"))
    parts += ["<h2>Registration quality</h2>", _registration_table(scans, data.provenance), "<h2>Provenance</h2>"]
    parts.append(_provenance(data))
    return _page(f"metatrack report {tl['patient_id']}", "\n".join(parts))


def _recist_table(scans: Sequence[dict[str, Any]]) -> str:
    """Each assessment: sums, target and non-target responses, new lesions, the overall response and its reasons."""
    rows = []
    for s in scans:
        rec = s["recist"]
        if rec is None:
            continue
        rows.append(
            [
                s["date"],
                rec.get("sum_mm"),
                rec.get("change_from_baseline_pct"),
                rec.get("change_from_nadir_pct"),
                rec.get("target_response"),
                rec.get("non_target_response"),
                "yes" if rec.get("new_lesions") else "no",
                rec.get("response"),
                "; ".join(str(r) for r in rec.get("reasons") or []) or None,
            ]
        )
    if not rows:
        return "<p>No RECIST assessments.</p>"
    return _table(
        ["scan", "sum (mm)", "from baseline (%)", "from nadir (%)", "targets", "non-targets", "new", "overall", "why"],
        rows,
        text_cols=(0, 4, 5, 6, 7, 8),
    )


def _registration_table(scans: Sequence[dict[str, Any]], provenance: Sequence[dict[str, Any]]) -> str:
    """The timeline's quality keys, the body Dice and smallest Jacobian from the stored metrics, review reasons."""
    metrics = {p.get("date"): p.get("metrics") or {} for p in provenance}
    rows = []
    for s in scans:
        reg = s["registration"]
        if reg is None:
            continue
        reasons = "; ".join(str(r) for r in reg.get("review_reasons") or [])
        rows.append(
            [
                s["date"],
                reg["preset"],
                reg["similarity_before"],
                reg["similarity_after"],
                reg["folding_fraction"],
                metrics.get(s["date"], {}).get("body_dice"),
                metrics.get(s["date"], {}).get("jacobian_min"),
                "needs review" if reg["needs_review"] else "ok",
                reasons or None,
            ]
        )
    if not rows:
        return "<p>No follow-up registrations.</p>"
    return _table(
        [
            "scan",
            "preset",
            "similarity before",
            "similarity after",
            "folding fraction",
            "body Dice",
            "Jacobian min",
            "status",
            "reasons",
        ],
        rows,
        text_cols=(0, 1, 7, 8),
    )


def _provenance(data: PatientReportData) -> str:
    rows = [[p.get("date"), p.get("settings"), p.get("versions"), p.get("registration")] for p in data.provenance]
    model = data.model or {}
    text = _table(["scan", "processing settings", "library versions", "registration"], rows, text_cols=(0, 1, 2, 3))
    if model:
        text += _table(
            ["model", "kind", "created", "data fingerprint", "versions"],
            [
                [
                    f"{model['name']}:{model['version']}",
                    model.get("kind"),
                    model.get("created_at"),
                    str(model.get("data_fingerprint", ""))[:12],
                    model.get("versions"),
                ]
            ],
            text_cols=(0, 1, 2, 3, 4),
        )
    return text + f'<p class="meta">Written by {_esc(data.generated_by)}.</p>'


# --- cohort --------------------------------------------------------------------------------------------------------


def cohort_groups(data: CohortReportData) -> tuple[dict[str, Any], dict[str, Any]]:
    """(durations, events) per best response and per risk tertile (patients with known follow-up only)."""
    followed = [p for p in data.patients if p.followup_days is not None]
    by_response: dict[str, tuple[list[float], list[bool]]] = {}
    for p in sorted(followed, key=lambda p: response.rank(response.best_response(p.responses) or "")):
        best = response.best_response(p.responses) or "not assessed"
        t, e = by_response.setdefault(best, ([], []))
        t.append(float(p.followup_days or 0.0))
        e.append(p.event)
    scored = [p for p in followed if p.risk is not None]
    by_risk: dict[str, tuple[list[float], list[bool]]] = {name: ([], []) for name in TERTILE_NAMES}
    if scored:
        for p, g in zip(scored, tertiles([float(p.risk or 0.0) for p in scored]), strict=True):
            by_risk[TERTILE_NAMES[int(g)]][0].append(float(p.followup_days or 0.0))
            by_risk[TERTILE_NAMES[int(g)]][1].append(p.event)
    return by_response, {k: v for k, v in by_risk.items() if v[0]}


def cohort_figures(data: CohortReportData) -> dict[str, FigureMaker]:
    by_response, by_risk = cohort_groups(data)
    colours = {c: response.colour(c) for c in by_response}
    horizon = data.risk_horizon_months
    return {
        "waterfall": lambda: figures.waterfall(data.patients),
        "swimmer": lambda: figures.swimmer(data.patients),
        "km-response": lambda: figures.km_groups(by_response, f"{data.endpoint}-free, by best response", colours),
        "km-risk": lambda: figures.km_groups(
            by_risk, f"{data.endpoint}-free, by tertile of {horizon}-month risk at baseline", TERTILE_COLOURS
        ),
    }


def _cohort_summary(data: CohortReportData) -> str:
    pts = data.patients
    follow = np.array([p.followup_days for p in pts if p.followup_days is not None], dtype=np.float64)
    best = [response.best_response(p.responses) for p in pts]
    counts = {c: best.count(c) for c in response.categories(best)}
    rows: list[list[Any]] = [
        ["patients", len(pts)],
        ["scans", sum(len(p.scan_days) for p in pts)],
        [f"{data.endpoint} events", sum(p.event for p in pts)],
        ["median follow-up (days)", float(np.median(follow)) if follow.size else None],
        ["patients with new lesions", sum(bool(p.new_lesion_days) for p in pts)],
        *[[f"best response {c}", n] for c, n in counts.items()],
        ["best response not assessed", best.count(None)],
        ["patients with a baseline risk", sum(p.risk is not None for p in pts)],
    ]
    return _table(["", "value"], rows, text_cols=(0,))


def cohort_html(data: CohortReportData) -> str:
    """The cohort report as one HTML document."""
    figs = cohort_figures(data)
    parts = [
        "<h1>Cohort report</h1>",
        f'<p class="meta">Endpoint {_esc(data.endpoint)}; risk model {_esc(data.model)}; written by '
        f"{_esc(data.generated_by)}.</p>",
        "<h2>Summary</h2>",
        _cohort_summary(data),
        "<h2>Waterfall: best target-sum change</h2>",
        _img(figs["waterfall"](), "waterfall"),
        "<h2>Swimmer plot</h2>",
        '<p class="meta">Bar: follow-up to the endpoint event (✕) or censoring (▶); dots: scans coloured by RECIST '
        "response; ▼: new lesions.</p>",
        _img(figs["swimmer"](), "swimmer"),
        "<h2>Kaplan–Meier</h2>",
        _img(figs["km-response"](), "km-response"),
        _img(figs["km-risk"](), "km-risk"),
    ]
    return _page("metatrack cohort report", "\n".join(parts))
