"""The report figures: pure functions from plain data to a matplotlib ``Figure``.

matplotlib rather than plotly: its static PNG/PDF output needs no browser engine or JavaScript (plotly's static
export needs kaleido, a bundled Chromium), so a report is a few hundred kB of embedded PNGs that any browser opens
offline, and the same figure goes into a paper as PDF. Figures are built with ``matplotlib.figure.Figure`` (no
pyplot state), which renders with the Agg backend and is safe to build from any thread.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tracker.reports import response
from tracker.reports.km import kaplan_meier, number_at_risk

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from tracker.reports.data import CohortPatient, SurvivalCurve, TrackSnapshots

PD_THRESHOLD_PCT = 20.0  # RECIST 1.1: progression at +20 % of the target sum (against the nadir)
PR_THRESHOLD_PCT = -30.0  # RECIST 1.1: partial response at -30 % against baseline
HU_WINDOW = (-160.0, 240.0)  # soft-tissue window for the lesion snapshots
DPI = 100
WIDE = (9.0, 4.0)
MARKERS = {"new": "*", "merged": "D", "split": "^", "vanished": "X"}
AT_RISK_TICKS = 6


def _figure(size: tuple[float, float] = WIDE) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=DPI, layout="constrained")


def to_bytes(fig: Figure, fmt: str = "png") -> bytes:
    """The figure as PNG or PDF bytes (Agg renders PNG; PDF through matplotlib's own backend)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=DPI)
    return buf.getvalue()


def _response_legend(ax: Axes, categories: Sequence[str], **kw: Any) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", linestyle="", color=response.colour(c), label=c, markersize=7) for c in categories
    ]
    if handles:
        ax.legend(handles=handles, title="RECIST", fontsize=8, title_fontsize=8, **kw)


def _recist_bands(ax: Axes) -> None:
    ax.axhspan(PD_THRESHOLD_PCT, max(ax.get_ylim()[1], PD_THRESHOLD_PCT + 10), color="#D55E00", alpha=0.08, lw=0)
    ax.axhspan(min(ax.get_ylim()[0], PR_THRESHOLD_PCT - 10), PR_THRESHOLD_PCT, color="#009E73", alpha=0.08, lw=0)
    ax.axhline(PD_THRESHOLD_PCT, color="#D55E00", ls="--", lw=1)
    ax.axhline(PR_THRESHOLD_PCT, color="#009E73", ls="--", lw=1)
    ax.axhline(0.0, color="black", lw=0.8)


def spider(
    days: Sequence[int],
    change_pct: Sequence[float | None],
    responses: Sequence[str | None],
    targets: Mapping[str, Sequence[tuple[int, float]]] | None = None,
) -> Figure:
    """Target-sum % change from baseline against days, markers coloured by response, +20 % / -30 % bands; thin
    grey lines: each target's own diameter change, ``targets[name]`` = (day, % change) per scan, when given."""
    fig = _figure()
    ax = fig.add_subplot()
    pts = [(d, p, r) for d, p, r in zip(days, change_pct, responses, strict=True) if p is not None]
    per_target = [v for series in (targets or {}).values() for _, v in series]
    if pts:
        x, y, r = zip(*pts, strict=True)
        ax.plot(x, y, color="#333333", lw=1.5, zorder=2, label="target sum")
        ax.scatter(x, y, c=[response.colour(v) for v in r], s=60, zorder=3, edgecolors="black", linewidths=0.5)
        lo, hi = min(*y, *per_target, PR_THRESHOLD_PCT), max(*y, *per_target, PD_THRESHOLD_PCT)
        ax.set_ylim(lo - 10, hi + 10)
    else:
        ax.set_ylim(-50, 40)
        ax.text(0.5, 0.5, "no RECIST target sum", transform=ax.transAxes, ha="center")
    _recist_bands(ax)
    for name, series in (targets or {}).items():
        if series:
            tx, ty = zip(*series, strict=True)
            ax.plot(tx, ty, color="#999999", lw=0.8, zorder=1)
            ax.annotate(name, (tx[-1], ty[-1]), fontsize=7, color="#666666", xytext=(3, 0), textcoords="offset points")
    ax.set_xlabel("days from baseline")
    ax.set_ylabel("target sum, % change from baseline")
    _response_legend(ax, response.categories(responses), loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def volume_trajectories(tracks: Mapping[int, Sequence[tuple[int, float, str | None]]]) -> Figure:
    """Volume (mm³) of each track against days; new, vanished, merged and split sightings marked.

    ``tracks[number]`` lists (day, volume_mm3, change) per scan where the track has a link; a vanished track has
    volume 0 at the scan it vanished.
    """
    from matplotlib.lines import Line2D

    fig = _figure()
    ax = fig.add_subplot()
    cmap = _track_colours(len(tracks))
    for k, (number, pts) in enumerate(sorted(tracks.items())):
        if not pts:
            continue
        x = [p[0] for p in pts]
        y = [p[1] for p in pts]
        ax.plot(x, y, color=cmap[k], lw=1.5, marker="o", ms=4, label=f"T{number}")
        for d, v, change in pts:
            if change in MARKERS:
                ax.plot([d], [v], marker=MARKERS[change], color=cmap[k], ms=11, mec="black", mew=0.7, ls="")
    ax.set_xlabel("days from baseline")
    ax.set_ylabel("lesion volume (mm³)")
    ax.set_ylim(bottom=0)
    handles, _ = ax.get_legend_handles_labels()
    handles += [Line2D([], [], marker=m, color="grey", mec="black", ls="", ms=9, label=c) for c, m in MARKERS.items()]
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + len(tracks) // 12)
    return fig


def _track_colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(max(n, 1))]


def track_snapshots(track: TrackSnapshots) -> Figure:
    """One row of axial slices (baseline frame), one per scan, with the track's lesion contour."""
    n = max(len(track.panels), 1)
    fig = _figure((min(2.0 * n, 16.0), 2.4))
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, panel in zip(axes, track.panels, strict=False):
        ax.imshow(panel.image, cmap="gray", vmin=HU_WINDOW[0], vmax=HU_WINDOW[1], extent=panel.extent_mm)
        if panel.lesion.any():
            ax.contour(
                panel.lesion.astype(np.float32),
                levels=[0.5],
                origin="upper",
                colors=["#FFB000"],
                linewidths=1.2,
                extent=panel.extent_mm,
            )
        ax.set_title(f"{panel.scan_date}\n{panel.change or 'not seen'}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"T{track.number}", fontsize=10)
    return fig


def risk_trajectory(
    days: Sequence[int], risks: Mapping[int, Sequence[float | None]], bands: Mapping[int, Sequence[Any]] | None = None
) -> Figure:
    """Risk within each horizon (months) as of each scan; ``bands[h]`` holds (low, high) per scan when stored."""
    fig = _figure()
    ax = fig.add_subplot()
    for h, values in sorted(risks.items()):
        pts = [(d, v) for d, v in zip(days, values, strict=True) if v is not None]
        if not pts:
            continue
        x, y = zip(*pts, strict=True)
        (line,) = ax.plot(x, y, marker="o", label=f"{h} months")
        band = [(d, b) for d, b in zip(days, (bands or {}).get(h, []), strict=False) if b is not None]
        if band:
            bx = [d for d, _ in band]
            ax.fill_between(bx, [b[0] for _, b in band], [b[1] for _, b in band], color=line.get_color(), alpha=0.2)
    ax.set_ylim(0, 1)
    ax.set_xlabel("days from baseline (scan)")
    ax.set_ylabel("risk of the endpoint")
    if ax.lines:
        ax.legend(title="within", fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.text(0.5, 0.5, "no risk scores", transform=ax.transAxes, ha="center")
    return fig


def survival_curve(curve: SurvivalCurve) -> Figure:
    """S(t) in months after the scan, with the stored 90 % band when there is one."""
    fig = _figure((6.0, 3.5))
    ax = fig.add_subplot()
    months = [0.0, *curve.months]
    ax.step(months, [1.0, *curve.survival], where="post", color="#0072B2", label="survival")
    if curve.lower is not None and curve.upper is not None:
        ax.fill_between(
            months, [1.0, *curve.lower], [1.0, *curve.upper], step="post", color="#0072B2", alpha=0.2, label="90 %"
        )
        ax.legend(fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, months[-1])
    ax.set_xlabel(f"months after the scan of {curve.scan_date}")
    ax.set_ylabel("endpoint-free probability")
    return fig


def waterfall(patients: Sequence[CohortPatient]) -> Figure:
    """Best (lowest) target-sum % change per patient, largest first, bars coloured by best response."""
    rows = []
    for p in patients:
        changes = [c for c in p.change_pct if c is not None]
        if changes:
            rows.append((min(changes), response.best_response(p.responses)))
    rows.sort(key=lambda r: -r[0])
    fig = _figure((10.0, 4.0))
    ax = fig.add_subplot()
    if rows:
        ax.bar(range(len(rows)), [r[0] for r in rows], color=[response.colour(r[1]) for r in rows], width=0.85)
        lo, hi = min(min(r[0] for r in rows), PR_THRESHOLD_PCT), max(max(r[0] for r in rows), PD_THRESHOLD_PCT)
        ax.set_ylim(lo - 10, hi + 10)
    else:
        ax.text(0.5, 0.5, "no RECIST target sums", transform=ax.transAxes, ha="center")
        ax.set_ylim(-50, 40)
    _recist_bands(ax)
    ax.set_xticks([])
    ax.set_xlabel(f"patients ({len(rows)}), ordered by best change")
    ax.set_ylabel("best target-sum change (%)")
    _response_legend(ax, response.categories(r[1] for r in rows), loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def swimmer(patients: Sequence[CohortPatient]) -> Figure:
    """One lane per patient: follow-up bar, scans coloured by response, new lesions, event or censoring."""
    from matplotlib.lines import Line2D

    order = sorted(patients, key=lambda p: p.followup_days or max(p.scan_days, default=0), reverse=True)
    n = len(order)
    fig = _figure((10.0, min(1.6 + 0.16 * n, 45.0)))
    ax = fig.add_subplot()
    # one artist per kind of mark (not per patient): a 300-patient plot draws in a fraction of a second
    ends = [max(p.followup_days or 0.0, max(p.scan_days, default=0)) for p in order]
    ax.barh(range(n), ends, height=0.6, color="#DDDDDD", edgecolor="#888888", lw=0.5)
    scans = [
        (d, y, response.colour(r)) for y, p in enumerate(order) for d, r in zip(p.scan_days, p.responses, strict=True)
    ]
    if scans:
        ax.scatter([d for d, _, _ in scans], [y for _, y, _ in scans], c=[c for _, _, c in scans], s=18, zorder=3)
    new = [(d, y + 0.35) for y, p in enumerate(order) for d in p.new_lesion_days]
    if new:
        ax.scatter([d for d, _ in new], [y for _, y in new], marker="v", color="black", s=14, zorder=4)
    for event, marker, colour, size in ((True, "X", "#D55E00", 40), (False, ">", "#555555", 22)):
        ends_at = [
            (p.followup_days, y) for y, p in enumerate(order) if p.followup_days is not None and p.event == event
        ]
        if ends_at:
            ax.scatter([d for d, _ in ends_at], [y for _, y in ends_at], marker=marker, color=colour, s=size, zorder=5)
    ax.set_yticks(range(n))
    ax.set_yticklabels([p.patient_id for p in order], fontsize=6 if n > 40 else 8)
    ax.set_ylim(-0.8, n - 0.2)
    ax.invert_yaxis()
    ax.set_xlabel("days from baseline")
    cats = response.categories(r for p in order for r in p.responses)
    handles = [Line2D([], [], marker="o", ls="", color=response.colour(c), label=c) for c in ["BL", *cats]]
    handles += [
        Line2D([], [], marker="v", ls="", color="black", label="new lesion"),
        Line2D([], [], marker="X", ls="", color="#D55E00", label="event"),
        Line2D([], [], marker=">", ls="", color="#555555", label="censored"),
    ]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def km_groups(
    groups: Mapping[str, tuple[Sequence[float], Sequence[int | bool]]], title: str, colours: Mapping[str, str] | None
) -> Figure:
    """Kaplan-Meier curves per group (days) with censoring ticks and a numbers-at-risk table below."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure((9.0, 4.8))
    ax, table = fig.subplots(2, 1, height_ratios=[4, 1 + 0.25 * len(groups)], sharex=True)
    horizon = max((max(t) for t, _ in groups.values() if len(t)), default=1.0)
    ticks = [t for t in MaxNLocator(AT_RISK_TICKS).tick_values(0.0, horizon) if 0.0 <= t <= horizon]
    for k, (name, (t, e)) in enumerate(groups.items()):
        if len(t) == 0:
            continue
        curve = kaplan_meier(t, e)
        colour = (colours or {}).get(name)
        (line,) = ax.step(curve.times, curve.survival, where="post", color=colour, label=f"{name} (n={len(t)})")
        cens = np.asarray(t)[~np.asarray(e, dtype=bool)]
        idx = np.searchsorted(curve.times, cens, side="right") - 1
        ax.plot(cens, curve.survival[idx], "|", color=line.get_color(), ms=6)
        for x, count in zip(ticks, number_at_risk(t, ticks), strict=True):
            table.text(x, k, str(count), ha="center", va="center", fontsize=8, color=line.get_color())
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("endpoint-free")
    ax.set_title(title, fontsize=10)
    if ax.lines:
        ax.legend(fontsize=8, loc="lower left")
    else:
        ax.text(0.5, 0.5, "no patients in these groups", transform=ax.transAxes, ha="center")
    table.set_yticks(range(len(groups)))
    table.set_yticklabels(list(groups), fontsize=8)
    table.set_ylim(max(len(groups), 1) - 0.5, -0.5)
    table.set_xticks(ticks)
    table.set_xlabel("days from baseline; numbers at risk")
    for side in ("top", "right", "left"):
        table.spines[side].set_visible(False)
    table.tick_params(left=False)
    return fig
