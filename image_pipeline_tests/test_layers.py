"""The layering holds: the product never imports the testing layer (emulators, sandbox, chaos, bench)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "image_pipeline"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    # relative imports start from the file's package (an __init__.py's package is its own folder)
    here = ["image_pipeline", *path.relative_to(PACKAGE).with_suffix("").parts][:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def test_the_product_never_imports_the_testing_layer() -> None:
    product = [p for p in PACKAGE.rglob("*.py") if "testing" not in p.relative_to(PACKAGE).parts]
    assert len(product) > 20
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(m for m in _imports(p) if m.startswith("image_pipeline.testing"))
        for p in product
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_check_sees_relative_and_function_level_imports(tmp_path: Path) -> None:
    # the scan itself must be able to fail: a relative import inside a function is found
    probe = PACKAGE / "resources" / "images.py"
    assert "image_pipeline.errors" in _imports(probe)
    assert "image_pipeline.resources.publisher" in _imports(PACKAGE / "defs" / "assets.py")
    assert "image_pipeline.lifecycle.posting" in _imports(PACKAGE / "defs" / "assets.py")
    assert "image_pipeline.testing.sandbox" in _imports(PACKAGE / "testing" / "chaos" / "run.py")


def _importers_of(prefix: str, allowed: tuple[str, ...]) -> dict[str, list[str]]:
    """Product modules outside ``allowed`` (paths relative to the package) that import ``prefix``."""
    out: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(allowed):
            continue
        hits = sorted(m for m in _imports(path) if m == prefix or m.startswith(prefix + "."))
        if hits:
            out[rel] = hits
    return out


def test_only_the_entry_points_import_dagsters_definitions() -> None:
    # defs/ is Dagster's side; below it (lifecycle, resources, refusals, ledger, models...) nothing knows it.
    # instance_storage.py is the alias old dagster.yaml files name.
    allowed = ("defs/", "testing/", "definitions.py", "cli.py", "instance_storage.py")
    assert _importers_of("image_pipeline.defs", allowed) == {}


def test_services_and_refusals_know_nothing_of_a_prompts_lifecycle() -> None:
    allowed = ("defs/", "testing/", "lifecycle/", "definitions.py", "cli.py", "instance_storage.py")
    assert _importers_of("image_pipeline.lifecycle", allowed) == {}
