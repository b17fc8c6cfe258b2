"""Feature matrices for harmonisation, fitted models, and harmonised values, in the database."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from db.models import FeatureConfig, FeatureValue, HarmonisationModel, Lesion, Scan
from db.types import table_of
from tracker.errors import MetatrackError


def config_by_name(session: Session, name: str) -> FeatureConfig:
    """The newest stored feature configuration of that name."""
    row = session.scalar(select(FeatureConfig).where(FeatureConfig.name == name).order_by(FeatureConfig.id.desc()))
    if row is None:
        raise MetatrackError(f"no lesion features extracted with config {name!r} yet; run `metatrack process`")
    return row


def feature_matrix(
    session: Session, config_id: int, region: str = "lesion", only_unharmonised: bool = False
) -> tuple[pd.DataFrame, pd.Series]:
    """Lesions x tags values of one configuration and region, and each lesion's batch (its scan's scanner)."""
    q = (
        select(FeatureValue.lesion_id, FeatureValue.tag, FeatureValue.value, Scan.scanner)
        .join(Lesion, Lesion.id == FeatureValue.lesion_id)
        .join(Scan, Scan.id == Lesion.scan_id)
        .where(FeatureValue.config_id == config_id, FeatureValue.region == region)
    )
    if only_unharmonised:
        q = q.where(FeatureValue.harmonised.is_(None))
    rows = pd.DataFrame(session.execute(q).all(), columns=["lesion_id", "tag", "value", "scanner"])
    if rows.empty:
        return pd.DataFrame(), pd.Series(dtype=object)
    wide = rows.pivot_table(index="lesion_id", columns="tag", values="value", aggfunc="first", dropna=False)
    batch = rows.drop_duplicates("lesion_id").set_index("lesion_id")["scanner"].fillna("unknown").reindex(wide.index)
    return wide, batch


def ensure_new_name(session: Session, name: str) -> None:
    """Refuse a name that is taken: a fitted model is never refitted in place."""
    if session.scalar(select(HarmonisationModel).where(HarmonisationModel.name == name)) is not None:
        raise MetatrackError(
            f"harmonisation model {name!r} exists; models are never refitted silently, pick a new name"
        )


def save_model(session: Session, name: str, config_id: int, params: dict[str, Any], fitted_on: dict[str, Any]) -> None:
    ensure_new_name(session, name)
    for old in session.scalars(select(HarmonisationModel).where(HarmonisationModel.config_id == config_id)):
        old.active = False
    session.add(
        HarmonisationModel(
            name=name, kind="combat", config_id=config_id, params=params, fitted_on=fitted_on, active=True
        )
    )


def active_model(session: Session, config_id: int) -> HarmonisationModel | None:
    return session.scalar(
        select(HarmonisationModel).where(HarmonisationModel.config_id == config_id, HarmonisationModel.active)
    )


def write_harmonised(session: Session, config_id: int, region: str, values: pd.DataFrame) -> int:
    """Store harmonised values (lesions x tags); returns how many values were written."""
    params = [
        {"b_lid": int(lid), "b_tag": tag, "b_h": float(v)}
        for lid, row in values.iterrows()
        for tag, v in row.items()
        if v is not None and np.isfinite(v)
    ]
    if params:
        t = table_of(FeatureValue)
        stmt = (
            update(t)
            .where(
                t.c.lesion_id == bindparam("b_lid"),
                t.c.tag == bindparam("b_tag"),
                t.c.config_id == config_id,
                t.c.region == region,
            )
            .values(harmonised=bindparam("b_h"))
        )
        session.connection().execute(stmt, params)
    return len(params)
