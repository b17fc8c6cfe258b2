"""The layers, read from the code's own imports (AST, nothing is imported or run).

- `db/` never imports the pipeline, a workflow or the CLI (it exchanges `tracker.records` with them);
- no module outside `db/` and `migrations/` builds SQL: from SQLAlchemy it may name only the `Engine` and
  `Session` types, and the ORM models (`db.models`) only for type checking;
- pure modules (the maths: matching, RECIST, lesions, deltas, scoring, radiomics, survival, registration,
  simulator, harmonisation, the per-scan pipeline, records, I/O) import neither `db`, SQLAlchemy, a workflow
  nor the CLI;
- sessions are opened only in `db/` and `tracker/workflows/`: the CLI calls workflows.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tracker", "registration", "db", "cli", "migrations", "benchmarks")
SQLALCHEMY_TYPES = {"Engine", "Session"}
PURE = (
    "tracker/matching.py",
    "tracker/recist.py",
    "tracker/lesions.py",
    "tracker/deltas.py",
    "tracker/scoring.py",
    "tracker/harmonisation.py",
    "tracker/pipeline.py",
    "tracker/records.py",
    "tracker/imageio.py",
    "tracker/store.py",
    "tracker/featurefiles.py",
    "tracker/demo_model.py",
    "tracker/dicom/",
    "tracker/propagation.py",
    "tracker/segmentation/",
    "tracker/exports/",
    "tracker/reports/",
    "tracker/radiomics/",
    "tracker/survival/",
    "tracker/simulator/",
    "registration/",
)


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "versions" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _type_checking_blocks(tree: ast.Module) -> set[int]:
    """Line numbers of statements inside `if TYPE_CHECKING:` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for child in node.body:
                for sub in ast.walk(child):
                    if hasattr(sub, "lineno"):
                        lines.add(sub.lineno)
    return lines


def imports(path: Path) -> list[tuple[str, str | None, bool]]:
    """(module, imported name or None, only for type checking) of every import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = _type_checking_blocks(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno in typing_only) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.module, a.name, node.lineno in typing_only) for a in node.names]
    return out


def _is(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_layer_check_sees_the_code() -> None:
    """A guard against a check that passes because it reads nothing."""
    names = {_rel(p) for p in _modules()}
    assert {"db/results.py", "tracker/workflows/process.py", "tracker/pipeline.py", "cli/main.py"} <= names
    assert ("db.results", "save_outcome", False) in imports(ROOT / "tracker/workflows/process.py")


@pytest.mark.parametrize("path", [p for p in _modules() if _rel(p).startswith("db/")], ids=_rel)
def test_db_imports_no_pipeline_workflow_or_cli(path: Path) -> None:
    bad = [m for m, _, _ in imports(path) if _is(m, "tracker.pipeline", "tracker.workflows", "cli")]
    assert not bad, f"{_rel(path)} imports {bad}"


@pytest.mark.parametrize("path", [p for p in _modules() if not _rel(p).startswith(("db/", "migrations/"))], ids=_rel)
def test_no_sql_outside_db(path: Path) -> None:
    bad = []
    for module, name, typing_only in imports(path):
        if _is(module, "sqlalchemy") and not (name in SQLALCHEMY_TYPES and module in ("sqlalchemy", "sqlalchemy.orm")):
            bad.append(f"{module}.{name}" if name else module)
        if _is(module, "db.models") and not typing_only:
            bad.append(module)
    assert not bad, f"{_rel(path)} builds SQL or ORM rows outside db/: {bad}"


@pytest.mark.parametrize("path", [p for p in _modules() if _rel(p).startswith(PURE)], ids=_rel)
def test_pure_modules_import_no_database_workflow_or_cli(path: Path) -> None:
    bad = [m for m, _, _ in imports(path) if _is(m, "db", "sqlalchemy", "tracker.workflows", "cli")]
    assert not bad, f"{_rel(path)} is pure computation but imports {bad}"


@pytest.mark.parametrize("path", [p for p in _modules() if _rel(p).startswith("cli/")], ids=_rel)
def test_cli_opens_no_session(path: Path) -> None:
    """The CLI parses, calls a workflow and prints: only the app context may open the engine."""
    allowed = {("db.session", "make_engine"), ("db", "migrate")} if _rel(path) == "cli/context.py" else set()
    bad = [f"{m}.{n}" for m, n, t in imports(path) if _is(m, "db") and not t and (m, n) not in allowed]
    assert not bad, f"{_rel(path)} talks to the database directly: {bad}"


@pytest.mark.parametrize("path", sorted((ROOT / "tests").rglob("test_*.py")), ids=_rel)
def test_no_test_imports_another_test_module(path: Path) -> None:
    """What several tests share lives in tests/helpers.py (and fixtures in conftest.py)."""
    bad = [m for m, _, _ in imports(path) if m.split(".")[-1].startswith("test_") or m.startswith("test_")]
    assert not bad, f"{_rel(path)} imports test modules {bad}"
