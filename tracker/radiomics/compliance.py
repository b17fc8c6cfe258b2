"""IBSI 1 compliance scoring against the reference value tables.

Rule (IBSI): round a value to 3 significant digits; it passes if ``|rounded - reference| <= tolerance``.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from tracker.errors import MetatrackError

#: significant digits a value is rounded to before comparison
SIGNIFICANT_DIGITS = 3
TEXTURE_PREFIXES = ("cm_", "rlm_", "szm_", "dzm_", "ngt_", "ngl_")
_CSV_NAMES = {
    "ibsi_dp": "digital_phantom",
    "ibsi_A": "config_A",
    "ibsi_B": "config_B",
    "ibsi_C": "config_C",
    "ibsi_D": "config_D",
    "ibsi_E": "config_E",
}


@dataclass
class ComplianceReport:
    """Outcome of one configuration's comparison.

    ``misses`` holds (tag, value, reference, tolerance) of every failed row; ``not_scored`` the tags left out
    of the rate (diagnostics, rows without reference value, and texture when it was not computed).
    """

    config: str
    passed: int = 0
    scored: int = 0
    misses: list[tuple[str, float, float, float]] = field(default_factory=list)
    not_scored: dict[str, str] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.passed / self.scored if self.scored else float("nan")

    def summary(self) -> str:
        lines = [f"{self.config}: {self.passed}/{self.scored} within tolerance ({100 * self.rate:.1f}%)"]
        lines += [
            f"  MISS {t}: ours {v:.6g} (rounded {round_sig(v)}) ref {r:g} tol {tol:g}" for t, v, r, tol in self.misses
        ]
        reasons: dict[str, int] = {}
        for why in self.not_scored.values():
            reasons[why] = reasons.get(why, 0) + 1
        lines += [f"  not scored: {n} ({why})" for why, n in sorted(reasons.items())]
        return "\n".join(lines)


def round_sig(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """``value`` rounded to ``digits`` significant digits."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def significant_digits(text: str) -> int:
    """Significant digits written in a reference value such as ``"125256"``, ``"0.0946"`` or ``"1.2e3"``."""
    mantissa = text.strip().lstrip("+-").lower().split("e")[0]
    digits = mantissa.replace(".", "").lstrip("0")
    if "." not in mantissa:
        digits = digits.rstrip("0")
    return max(len(digits), 1)


def reference_dir() -> Path:
    """Folder with ``ibsi_1_reference_values_*.csv``: $METATRACK_IBSI_DATA/reference_values/ibsi_1, else the
    copies vendored under the repository's tests/data/ibsi/reference_values."""
    env = os.environ.get("METATRACK_IBSI_DATA")
    candidates = [Path(env) / "reference_values" / "ibsi_1"] if env else []
    root = Path(__file__).resolve().parents[2]
    candidates += [
        root / "tests" / "data" / "ibsi" / "reference_values",
        root.parent / "shared" / "data" / "ibsi" / "reference_values" / "ibsi_1",
    ]
    for c in candidates:
        if (c / "ibsi_1_reference_values_digital_phantom.csv").is_file():
            return c
    raise MetatrackError(
        "IBSI reference tables not found; set METATRACK_IBSI_DATA (folder with reference_values/ibsi_1/)"
    )


def load_reference(config_name: str, folder: Path | None = None) -> list[dict[str, str]]:
    """Rows of the IBSI reference table for ``config_name`` (``ibsi_dp``, ``ibsi_A`` … ``ibsi_E``)."""
    if config_name not in _CSV_NAMES:
        raise MetatrackError(
            f"compliance: no IBSI reference table for config '{config_name}' ({', '.join(_CSV_NAMES)})"
        )
    path = (folder or reference_dir()) / f"ibsi_1_reference_values_{_CSV_NAMES[config_name]}.csv"
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def score(
    config_name: str, values: dict[str, float], folder: Path | None = None, *, diagnostics: bool = False
) -> ComplianceReport:
    """Compare ``values`` (tag -> value) with the IBSI reference table of ``config_name``.

    Features are scored by default; diagnostics rows and rows without a reference value are not scored, and
    texture rows are not scored (and reported as such) when every texture value is missing or NaN. With
    ``diagnostics=True`` only the diagnostics rows are scored (values from ``diagnostics.diagnostics``).
    """
    report = ComplianceReport(config_name)
    texture_present = any(
        t.startswith(TEXTURE_PREFIXES) and math.isfinite(v) for t, v in values.items() if v is not None
    )
    for row in load_reference(config_name, folder):
        tag = row["tag"]
        if row["family"].startswith("Diagnostics") != diagnostics:
            report.not_scored[tag] = "feature" if diagnostics else "diagnostics"
            continue
        if not row["reference value"].strip():
            report.not_scored[tag] = "no reference value"
            continue
        if tag.startswith(TEXTURE_PREFIXES) and not texture_present and not diagnostics:
            report.not_scored[tag] = "texture not available"
            continue
        ref, tol = float(row["reference value"]), float(row["tolerance"])
        value = values.get(tag, float("nan"))
        report.scored += 1
        # features: IBSI's 3 significant digits; diagnostics (exact counts and sizes such as 125256): as
        # many digits as the reference shows
        digits = max(SIGNIFICANT_DIGITS, significant_digits(row["reference value"])) if diagnostics else None
        rounded = round_sig(value, digits or SIGNIFICANT_DIGITS) if value is not None else float("nan")
        if value is not None and math.isfinite(value) and abs(rounded - ref) <= tol + 1e-12 * abs(ref):
            report.passed += 1
        else:
            report.misses.append((tag, float("nan") if value is None else value, ref, tol))
    return report
