"""The lesion stream on each backend: every lesion region's values, in batches no larger than asked, in lesion
order (a server-side cursor on PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import Engine, func, select

from db.exports import LESION_STREAM_COLUMNS, feature_tags, lesion_stream
from db.models import FeatureValue, Lesion
from db.session import session_scope
from db.synthetic import RESULT_TAGS, fill_cohort, fill_results
from tracker.survival.synthetic import slope_cohort


def test_lesion_stream_yields_every_value_in_small_batches(engine: Engine) -> None:
    visits, events = slope_cohort(12, seed=2)
    fill_cohort(engine, visits, events)
    fill_results(engine, seed=2)
    with session_scope(engine) as s:
        n_values = s.scalar(select(func.count()).select_from(FeatureValue))
        n_lesions = s.scalar(select(func.count()).select_from(Lesion))
        assert feature_tags(s) == sorted(RESULT_TAGS)
        batches = list(lesion_stream(s, batch_rows=50))
        one = [r for b in lesion_stream(s, visits["patient_id"].iloc[0]) for r in b]
    rows = [r for b in batches for r in b]
    assert max(len(b) for b in batches) == 50 and len(rows) == n_values  # every lesion here has features
    assert len({r[LESION_STREAM_COLUMNS.index("lesion_id")] for r in rows}) == n_lesions
    lesion_ids = [r[LESION_STREAM_COLUMNS.index("lesion_id")] for r in rows]
    assert lesion_ids == sorted(lesion_ids)
    assert {r[0] for r in one} == {visits["patient_id"].iloc[0]} and 0 < len(one) < len(rows)
