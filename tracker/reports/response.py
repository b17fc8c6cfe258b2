"""RECIST responses as strings with a known order, from best to worst; unknown categories sort last."""

from __future__ import annotations

from collections.abc import Iterable

BASELINE = "BL"
#: Best to worst. A category not listed (a future one) ranks after all of these and keeps its own name.
ORDER = ("CR", "PR", "Non-CR/Non-PD", "SD", "PD", "NE")
#: Colours per category (colour-blind-safe Okabe-Ito palette); unknown categories get :data:`OTHER_COLOUR`.
COLOURS = {
    "CR": "#009E73",
    "PR": "#56B4E9",
    "Non-CR/Non-PD": "#CC79A7",
    "SD": "#E69F00",
    "PD": "#D55E00",
    "NE": "#999999",
}
OTHER_COLOUR = "#000000"


def rank(response: str) -> int:
    """Position in :data:`ORDER` (0 = best); unknown categories rank after every known one."""
    return ORDER.index(response) if response in ORDER else len(ORDER)


def colour(response: str | None) -> str:
    return COLOURS.get(response or "", OTHER_COLOUR)


def best_response(responses: Iterable[str | None]) -> str | None:
    """The best follow-up response (baseline and missing values skipped); NE only when nothing else was assessed.

    This is the best assessment seen, without the confirmation window of RECIST 1.1 trials.
    """
    seen = [r for r in responses if r and r != BASELINE]
    assessed = [r for r in seen if r != "NE"]
    pool = assessed or seen
    return min(pool, key=lambda r: (rank(r), r)) if pool else None


def categories(responses: Iterable[str | None]) -> list[str]:
    """The distinct categories among `responses` in report order (known ones first, then unknown by name)."""
    found = {r for r in responses if r and r != BASELINE}
    return sorted(found, key=lambda r: (rank(r), r))
