"""Reading results back: the patient list, one patient's timeline, the cohort table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from db import views
from db.session import session_scope

if TYPE_CHECKING:
    from sqlalchemy import Engine


def patients(engine: Engine) -> list[dict[str, Any]]:
    with session_scope(engine) as s:
        return views.list_patients(s)


def timeline(engine: Engine, patient: str) -> dict[str, Any]:
    """The `timeline --json` contract (`db.views.timeline`)."""
    with session_scope(engine) as s:
        return views.timeline(s, patient)


def cohort(engine: Engine) -> list[dict[str, Any]]:
    with session_scope(engine) as s:
        return views.cohort(s)
