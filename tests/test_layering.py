"""The floors of the package: imports only go down, and no module imports itself in a circle."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

# Bottom to top. A module may import modules of its own floor or of floors below.
FLOORS = [
    ("io", ["rhapso_gpu.errors", "rhapso_gpu.io"]),
    ("geometry", ["rhapso_gpu.geometry", "rhapso_gpu.models"]),
    ("backend", ["rhapso_gpu.backend", "cpu_fallback"]),
    ("stages", ["rhapso_gpu.synth", "rhapso_gpu.evaluation", "rhapso_gpu.fusion", "rhapso_gpu.multiscale", "rhapso_gpu.matching", "rhapso_gpu.detection", "rhapso_gpu.solver", "rhapso_gpu.split", "rhapso_gpu.stitching"]),
    ("orchestration", ["rhapso_gpu.scheduler", "rhapso_gpu.pipeline", "rhapso_gpu.cli", "rhapso_gpu.__main__", "pipelines"]),
]
STAGES = FLOORS[3][1]


def _floor(module: str) -> int | None:
    for i, (_, prefixes) in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def _modules():
    for pkg in ("rhapso_gpu", "cpu_fallback", "pipelines"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


def _imports(module: str, path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target
            for alias in node.names:  # `from pkg import submodule`
                yield f"{target}.{alias.name}"


def _own(name: str) -> bool:
    return name.split(".")[0] in ("rhapso_gpu", "cpu_fallback", "pipelines")


MODULES = dict(_modules())


def _resolve(name: str) -> str | None:
    """The project module an import names (dropping a trailing attribute name)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def test_every_module_has_a_floor():
    unplaced = [m for m in MODULES if m != "rhapso_gpu" and _floor(m) is None]
    assert unplaced == [], f"add these modules to a floor in {__file__}: {unplaced}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_go_down(module):
    floor = _floor(module)
    if floor is None:  # the package root only holds the version
        return
    for name in _imports(module, MODULES[module]):
        target = _resolve(name) if _own(name) else None
        if target is None or target == "rhapso_gpu":
            continue
        target_floor = _floor(target)
        assert target_floor is not None and target_floor <= floor, (
            f"{module} ({FLOORS[floor][0]}) imports {target} ({FLOORS[target_floor][0]}): imports only go down"
        )
        if floor == 3 and target_floor == 3:
            own_stage = next(p for p in STAGES if module.startswith(p))
            assert target.startswith(own_stage), f"stage {module} imports another stage {target}"


def test_no_import_cycles():
    graph = {
        m: {t for n in _imports(m, p) if _own(n) and (t := _resolve(n)) and t not in (m, "rhapso_gpu")}
        for m, p in MODULES.items()
    }
    # a package importing its own submodules (re-exports) is not a cycle
    graph = {m: {t for t in targets if not t.startswith(m + ".")} for m, targets in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
