"""RECIST responses as ordered strings: best response, report order, categories added later."""

from __future__ import annotations

from tracker.reports.response import OTHER_COLOUR, best_response, categories, colour, rank


def test_best_response_is_the_best_follow_up() -> None:
    assert best_response(["BL", "SD", "PR", "PD"]) == "PR"
    assert best_response(["BL", "SD", "Non-CR/Non-PD"]) == "Non-CR/Non-PD"
    assert best_response(["BL", "PD", "CR"]) == "CR"


def test_ne_only_when_nothing_else_was_assessed() -> None:
    assert best_response(["BL", "NE", "PD"]) == "PD"
    assert best_response(["BL", "NE", None]) == "NE"
    assert best_response(["BL"]) is None
    assert best_response([]) is None


def test_unknown_categories_rank_last_and_keep_their_name() -> None:
    assert rank("iUPD") > rank("NE")
    assert best_response(["BL", "iUPD"]) == "iUPD"
    assert best_response(["BL", "iUPD", "SD"]) == "SD"
    assert categories(["BL", "iUPD", "PD", "CR", None, "PD"]) == ["CR", "PD", "iUPD"]
    assert colour("iUPD") == OTHER_COLOUR != colour("PD")
