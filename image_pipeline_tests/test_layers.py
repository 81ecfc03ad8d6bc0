"""The house holds its shape: imports go down the layers only, no import cycle, no module past ~600 lines.

Layers, bottom to top (README, "Layout"):
  domain     what a row, a caption, a check, a refusal is; no Dagster, no I/O
  services   one package per external system (sheets, images, publisher) and the HTTP seam
  lifecycle  the exactly-once protocol of one prompt, over the services' interfaces
  settings   environment -> settings and resources
  defs       Dagster's definitions (assets, checks, jobs, schedule, sensor, IO manager, instance storage)
  entry      definitions.py (Dagster's entry point), cli/ (the command line)
  testing    emulators, sandbox, chaos, bench: they exercise the product, the product never imports them
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "image_pipeline"

LAYERS = ("domain", "services", "lifecycle", "defs", "settings", "entry", "testing")
MAX_LINES = 600
# libraries that mean Dagster or I/O: the domain layer must not import them
DOMAIN_FORBIDDEN = (
    "dagster",
    "requests",
    "gspread",
    "google",
    "huggingface_hub",
    "sqlite3",
    "urllib3",
    "httpx",
)


def _module(path: Path) -> str:
    parts = ["image_pipeline", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else ""
    if head in ("definitions", "cli", "instance_storage"):
        return "entry"
    return head if head in LAYERS else "entry"


def _imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Every module a file imports (at the top, or also inside functions), relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    # relative imports start from the file's package (an __init__.py's package is its own folder)
    here = ["image_pipeline", *path.relative_to(PACKAGE).with_suffix("").parts][:-1]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # a TYPE_CHECKING block never runs, so it cannot make a cycle
        nodes = [n for n in nodes if isinstance(n, (ast.Import, ast.ImportFrom))]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def _product_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _ours(found: set[str], modules: set[str]) -> set[str]:
    """The project's modules among ``found`` (``from pkg import name`` counts only when ``name`` is a module)."""
    return {m for m in found if m in modules}


def test_imports_go_down_the_layers_only() -> None:
    files = _product_files()
    modules = {_module(p) for p in files}
    assert len(files) > 40
    upward: dict[str, list[str]] = {}
    for path in files:
        mine = _module(path)
        rank = LAYERS.index(_layer(mine))
        bad = sorted(m for m in _ours(_imports(path), modules) if LAYERS.index(_layer(m)) > rank)
        if bad:
            upward[mine] = bad
    assert upward == {}


def test_the_domain_layer_has_no_dagster_and_no_io_clients() -> None:
    offenders = {}
    for path in (PACKAGE / "domain").rglob("*.py"):
        hits = sorted(m for m in _imports(path) if m.split(".")[0] in DOMAIN_FORBIDDEN)
        if hits:
            offenders[_module(path)] = hits
    assert offenders == {}


def test_no_import_cycle_among_the_modules() -> None:
    files = _product_files()
    modules = {_module(p) for p in files}
    graph = {_module(p): _ours(_imports(p, top_level_only=True), modules) - {_module(p)} for p in files}
    # a package's __init__ importing its own submodules is how a package offers its interface
    for mod, deps in graph.items():
        graph[mod] = {d for d in deps if not d.startswith(mod + ".")}
    cycles = _cycles(graph)
    assert cycles == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_is_longer_than_about_600_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in _product_files()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_checks_can_fail() -> None:
    # each scan must be able to see what it forbids: relative and function-level imports, cycles, layers
    assert "image_pipeline.domain.errors" in _imports(PACKAGE / "services" / "images" / "huggingface.py")
    assert "image_pipeline.lifecycle.posting" in _imports(
        PACKAGE / "defs" / "assets" / "generate_and_post.py"
    )
    assert "image_pipeline.testing.sandbox" in _imports(PACKAGE / "testing" / "chaos" / "__init__.py") | {
        m for p in (PACKAGE / "testing" / "chaos").rglob("*.py") for m in _imports(p)
    }
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _layer("image_pipeline.defs.assets") == "defs" and _layer("image_pipeline.cli.run") == "entry"
    assert LAYERS.index(_layer("image_pipeline.defs.sensors")) > LAYERS.index(
        _layer("image_pipeline.lifecycle.ledger")
    )
