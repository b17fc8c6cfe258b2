"""The lesion stream on each backend: every lesion region's values, in batches no larger than asked, in lesion
order (a server-side cursor on PostgreSQL); a lesion other tracks merged into says "merged", as the timeline does."""

from __future__ import annotations

from sqlalchemy import Engine, func, select

from db.exports import LESION_STREAM_COLUMNS, feature_tags, lesion_stream
from db.models import FeatureValue, Lesion, TrackLink
from db.session import session_scope
from db.synthetic import RESULT_TAGS, fill_cohort, fill_results
from tracker.records import ChangeClass
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


def test_a_lesion_other_tracks_merged_into_is_merged_as_in_the_timeline(engine: Engine) -> None:
    visits, events = slope_cohort(4, seed=3)
    fill_cohort(engine, visits, events)
    fill_results(engine, seed=3)
    with session_scope(engine) as s:
        # two tracks seen at one scan: the first's link becomes a merge into the second's lesion
        link, other = s.execute(
            select(TrackLink, Lesion)
            .join(Lesion, (Lesion.scan_id == TrackLink.scan_id) & (Lesion.track_id != TrackLink.track_id))
            .where(TrackLink.lesion_id.is_not(None))
            .limit(1)
        ).one()
        link.change, link.lesion_id = ChangeClass.MERGED, other.id
        survivor = other.id
    with session_scope(engine) as s:
        rows = [r for b in lesion_stream(s) for r in b]
    change_of = {r[LESION_STREAM_COLUMNS.index("lesion_id")]: r[LESION_STREAM_COLUMNS.index("change")] for r in rows}
    assert change_of[survivor] == "merged"
    assert set(change_of.values()) <= {"persistent", "new", "merged", "split"}
