"""Model registry: model versions, their files in the content-addressed store, promotion per endpoint.

A model is "name:version"; versions count up per name. At most one model per endpoint is promoted (a partial
unique index enforces it); promoting demotes the previous one to "trained" in the same transaction.

Only SQL and store bookkeeping live here. A model's kind ("rnn", "landmark-cox", see
tracker.survival.kinds.MODEL_KINDS; "segmentation" for the lesion segmentation models, all of the endpoint
``tracker.segmentation.SEGMENTATION_ENDPOINT``, which the risk paths leave out) is recorded as the "kind" entry of
the version's hyperparameters JSON. Loading a risk model:
``tracker.survival.cache.cached_model(mv.file_sha256, lambda: model_file_bytes(store, mv))``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.models import ModelState, ModelVersion
from db.repo import ensure_blob
from db.types import utcnow
from tracker.errors import MetatrackError
from tracker.segmentation import SEGMENTATION_ENDPOINT

if TYPE_CHECKING:
    from tracker.store import FileStore, FileWriter

MODEL_KIND = "model"  # the blob kind of model files in the store
MODEL_SUFFIX = ".pt"


class RegistrableModel(Protocol):
    """What the registry needs of a model of any kind (a risk model, a segmentation model)."""

    metadata: dict[str, Any]  # data_fingerprint, hyperparameters, metrics, versions, seed

    @property
    def kind(self) -> str: ...

    @property
    def features(self) -> list[str]: ...

    def to_bytes(self) -> bytes: ...


def parse_spec(spec: str) -> tuple[str, int | None]:
    """'name' or 'name:version' -> (name, version or None)."""
    name, sep, ver = spec.strip().partition(":")
    if not name:
        raise MetatrackError(f"model {spec!r}: expected NAME or NAME:VERSION")
    if not sep:
        return name, None
    try:
        version = int(ver.lstrip("v"))
    except ValueError as exc:
        raise MetatrackError(f"model {spec!r}: version {ver!r} is not a number") from exc
    return name, version


def get_version(session: Session, spec: str) -> ModelVersion:
    """The model version for 'name[:version]' (the newest version when none is given)."""
    name, version = parse_spec(spec)
    q = select(ModelVersion).where(ModelVersion.name == name)
    q = q.where(ModelVersion.version == version) if version is not None else q.order_by(ModelVersion.version.desc())
    mv = session.scalars(q.limit(1)).first()
    if mv is None:
        raise MetatrackError(f"model {spec!r} is not registered (see `metatrack model list`)")
    return mv


def register_model(
    session: Session, store: FileWriter, model: RegistrableModel, name: str, endpoint: str
) -> ModelVersion:
    """Store the model file (once per content hash) and add version max+1 of `name` in state "trained".

    The version's hyperparameters are the model's ``metadata["hyperparameters"]`` plus ``"kind": model.kind``.
    """
    if not name or ":" in name:
        raise MetatrackError(f"model name {name!r}: must be non-empty and contain no ':'")
    data = model.to_bytes()
    stored = store.put_bytes(data, MODEL_SUFFIX)
    ensure_blob(session, stored.sha256, MODEL_KIND, MODEL_SUFFIX, stored.size_bytes)
    latest = session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name)) or 0
    meta = model.metadata
    mv = ModelVersion(
        name=name,
        version=int(latest) + 1,
        endpoint=endpoint,
        state=ModelState.TRAINED,
        file_sha256=stored.sha256,
        data_fingerprint=str(meta.get("data_fingerprint", "")),
        features=list(model.features),
        hyperparameters={**dict(meta.get("hyperparameters", {})), "kind": model.kind},
        metrics=_jsonable(meta.get("metrics", {})),
        versions=dict(meta.get("versions", {})),
        seed=int(meta.get("seed", 0)),
    )
    session.add(mv)
    session.flush()
    return mv


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """Plain floats/ints (numpy scalars and NaN-free) for the JSON column."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, float) and v != v:
            v = None
        out[str(k)] = v
    return out


def model_file_bytes(store: FileStore, mv: ModelVersion) -> bytes:
    """The bytes of a version's model file in the store."""
    return store.find(mv.file_sha256, MODEL_SUFFIX).read_bytes()


def promoted_model(session: Session, endpoint: str) -> ModelVersion | None:
    """The promoted model of an endpoint, if any."""
    return session.scalar(
        select(ModelVersion).where(ModelVersion.endpoint == endpoint, ModelVersion.state == ModelState.PROMOTED)
    )


def promoted_models(session: Session, endpoint: str | None = None) -> list[ModelVersion]:
    """Every promoted risk model (one per endpoint), or the one of `endpoint`; never a segmentation model."""
    q = select(ModelVersion).where(
        ModelVersion.state == ModelState.PROMOTED, ModelVersion.endpoint != SEGMENTATION_ENDPOINT
    )
    if endpoint is not None:
        q = q.where(ModelVersion.endpoint == endpoint)
    return list(session.scalars(q.order_by(ModelVersion.endpoint)))


def promote(session: Session, spec: str) -> ModelVersion:
    """Promote a version; the endpoint's previously promoted model goes back to "trained" (same transaction)."""
    mv = get_version(session, spec)
    if mv.state is ModelState.PROMOTED:
        return mv
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.endpoint == mv.endpoint, ModelVersion.state == ModelState.PROMOTED)
        .values(state=ModelState.TRAINED)
        .execution_options(synchronize_session="fetch")
    )
    session.flush()
    mv.state = ModelState.PROMOTED
    mv.promoted_at = utcnow()
    session.flush()
    return mv


def retire(session: Session, spec: str) -> ModelVersion:
    """Retire a version (a promoted one stops scoring: its endpoint has no promoted model afterwards)."""
    mv = get_version(session, spec)
    mv.state = ModelState.RETIRED
    session.flush()
    return mv


def describe(mv: ModelVersion, full: bool = False) -> dict[str, Any]:
    """A version as a plain dict (for tables and JSON)."""
    row: dict[str, Any] = {
        "model": f"{mv.name}:{mv.version}",
        "id": mv.id,
        "endpoint": mv.endpoint,
        "state": mv.state.value,
        "features": len(mv.features),
        "created_at": mv.created_at,
        "promoted_at": mv.promoted_at,
    }
    if full:
        row.update(
            features=list(mv.features),
            file_sha256=mv.file_sha256,
            data_fingerprint=mv.data_fingerprint,
            hyperparameters=mv.hyperparameters,
            metrics=mv.metrics,
            versions=mv.versions,
            seed=mv.seed,
        )
    return row


def list_models(session: Session, name: str | None = None) -> list[dict[str, Any]]:
    """Every registered version (optionally of one name), by name and version."""
    q = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version)
    if name is not None:
        q = q.where(ModelVersion.name == name)
    return [describe(mv) for mv in session.scalars(q)]


def show_model(session: Session, spec: str) -> dict[str, Any]:
    """Everything about one version."""
    return describe(get_version(session, spec), full=True)
