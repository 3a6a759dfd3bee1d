"""The package's architecture as a test: imports run one way, from the command line down to the errors.

Every ``evo_fpn`` import of every module counts, lazy and ``TYPE_CHECKING`` ones included, so
a type hint cannot hide a dependency that points up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import evo_fpn

PACKAGE = Path(evo_fpn.__file__).parent

LAYERS: tuple[tuple[str, ...], ...] = (
    ("run", "inspect", "train", "compare", "dashboard", "storage_server", "export", "search"),  # python -m evo_fpn.X
    ("cli",),  # one module per entry point
    ("viz",),  # figures and pages, read from studies
    ("study",),  # an Optuna study: configuration, objective, budget loop, workers, summary
    ("tasks",),  # what scores an architecture: proxy, supernet, synthetic
    ("training",),  # the training loop, evaluation, the proxy's configuration, the backbone stage
    ("model", "data"),  # the detector and its neck; datasets
    ("arch", "samplers", "storage"),  # architectures as data; general Optuna samplers; storages
    ("errors", "record", "limits", "compat"),  # leaves
)
"""Top to bottom. A module imports its own subpackage and the layers below, never above or beside."""

LAYER_OF = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join(["evo_fpn", *parts])] = path
    return out


def imports(path: Path, name: str) -> set[str]:
    """The evo_fpn modules ``name`` imports (``from evo_fpn.x import y``: ``evo_fpn.x.y`` when that is a module)."""
    known = modules()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("evo_fpn")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("evo_fpn"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & known.keys()
            found |= subs or {node.module}
    return {m for m in found if m != name and m != "evo_fpn"}


def top(module: str) -> str:
    return module.split(".")[1]


def test_every_module_has_a_layer() -> None:
    assert not [m for m in modules() if m != "evo_fpn" and top(m) not in LAYER_OF]


def test_imports_run_one_way() -> None:
    wrong = []
    for name, path in modules().items():
        if name == "evo_fpn":
            continue
        for dep in imports(path, name):
            if top(dep) != top(name) and LAYER_OF[top(dep)] <= LAYER_OF[top(name)]:
                wrong.append(f"{name} -> {dep}")
    assert wrong == []


def test_no_import_circle() -> None:
    edges = {name: imports(path, name) for name, path in modules().items()}

    def circle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, trail = stack.pop()
            for dep in edges.get(node, ()):
                if dep == start:
                    return [*trail, dep]
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, [*trail, dep]))
        return None

    assert [c for m in edges if (c := circle_from(m))] == []


def test_library_code_never_imports_the_command_line() -> None:
    cli = {m for m in modules() if m != "evo_fpn" and LAYER_OF[top(m)] <= LAYER_OF["cli"]}
    library = [m for m in modules() if m != "evo_fpn" and m not in cli]
    assert [f"{m} -> {d}" for m in library for d in imports(modules()[m], m) if d in cli] == []


def test_modules_stay_short() -> None:
    assert {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > 500} == {}


def test_the_command_modules_only_start_their_command() -> None:
    for name in LAYERS[0]:
        text = (PACKAGE / f"{name}.py").read_text()
        assert f"from evo_fpn.cli.{name} import main" in text and len(text.splitlines()) <= 10
