"""ComBat harmonisation of stored lesion features across scanners: fit once on a cohort, apply to new scans."""

from __future__ import annotations

from typing import Any

import pandas as pd
from sqlalchemy import Engine

from db import harmonisation as store
from db.session import session_scope
from tracker.errors import MetatrackError
from tracker.harmonisation import CombatModel, apply_combat, fit_combat

REGION = "lesion"
MIN_PER_BATCH = 2


def _usable_tags(wide: pd.DataFrame) -> list[str]:
    """Tags with a value for every lesion (ComBat takes no missing values)."""
    return [t for t in wide.columns if wide[t].notna().all()]


def fit(engine: Engine, name: str, config: str = "ct_default", parametric: bool = True) -> dict[str, Any]:
    """Fit ComBat on every stored lesion's features of `config`, batches = scanners; store it and apply it."""
    with session_scope(engine) as s:
        store.ensure_new_name(s, name)
        cfg = store.config_by_name(s, config)
        wide, batch = store.feature_matrix(s, cfg.id, REGION)
        if wide.empty:
            raise MetatrackError(f"no lesion features of config {config!r} to fit on")
        counts = batch.value_counts()
        small = counts[counts < MIN_PER_BATCH]
        if len(counts) < 2 or len(small):
            raise MetatrackError(
                f"ComBat needs >= 2 scanners with >= {MIN_PER_BATCH} lesions each; found {counts.to_dict()}"
            )
        tags = _usable_tags(wide)
        model = fit_combat(wide[tags].to_numpy(float), batch.to_numpy(), parametric=parametric)
        fitted_on = {"lesions": len(wide), "batches": counts.to_dict(), "tags": len(tags), "region": REGION}
        store.save_model(s, name, cfg.id, {"tags": tags, "combat": model.to_dict()}, fitted_on)
        harmonised = apply_combat(model, wide[tags].to_numpy(float), batch.to_numpy())
        written = store.write_harmonised(s, cfg.id, REGION, pd.DataFrame(harmonised, index=wide.index, columns=tags))
    return {"model": name, **fitted_on, "values_written": written}


def apply_pending(engine: Engine, config: str = "ct_default") -> dict[str, Any]:
    """Harmonise lesion features not yet harmonised with the active model; unknown scanners are reported, not fit."""
    with session_scope(engine) as s:
        try:
            cfg = store.config_by_name(s, config)
        except MetatrackError:  # nothing extracted with this config yet: nothing to harmonise
            return {"model": None, "values_written": 0, "skipped_scanners": []}
        row = store.active_model(s, cfg.id)
        if row is None:
            return {"model": None, "values_written": 0, "skipped_scanners": []}
        tags: list[str] = row.params["tags"]
        model = CombatModel.from_dict(row.params["combat"])
        wide, batch = store.feature_matrix(s, cfg.id, REGION, only_unharmonised=True)
        if wide.empty:
            return {"model": row.name, "values_written": 0, "skipped_scanners": []}
        wide = wide.reindex(columns=tags)
        known = set(model.batches)
        ok = batch.isin(known) & wide.notna().all(axis=1)
        skipped = sorted(set(batch[~batch.isin(known)]))
        written = 0
        if ok.any():
            h = apply_combat(model, wide[ok].to_numpy(float), batch[ok].to_numpy())
            written = store.write_harmonised(s, cfg.id, REGION, pd.DataFrame(h, index=wide.index[ok], columns=tags))
    return {"model": row.name, "values_written": written, "skipped_scanners": skipped}
