"""The layer order holds (STYLE.md "Layers"): import-linter's contracts in pyproject.toml
name every module of the apps, and no module reaches back up to one that imports it.

These read the source, not the database: the import graph is grimp's, the one import-linter
checks, so an import inside a function counts as much as one at the top of a module."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
APPS = ("console", "agents", "approvals", "audit")


def contracts() -> dict[str, dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def layer_modules() -> list[str]:
    """Every module or package the layers contract names, in any layer."""
    names: list[str] = []
    for layer in contracts()["layers"]["layers"]:  # type: ignore[attr-defined]
        separator = "|" if "|" in layer else ":"
        names += [name.strip() for name in layer.split(separator)]
    return names


def app_modules() -> list[str]:
    """Every module of the apps, from the files on disk."""
    modules = []
    for app in APPS:
        for path in (ROOT / app).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules.append(".".join(parts))
    return sorted(modules)


def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*APPS, cache_dir=None)


def cycles(g: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(start: str) -> None:
        # Iterative: the graph is deep enough to matter to Python's recursion limit one day.
        work = [(start, iter(sorted(g.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(g.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for module in sorted(g.modules):
        if module not in index:
            visit(module)
    return found


def test_every_module_of_the_apps_is_in_a_layer() -> None:
    named = layer_modules()
    # The apps' own packages hold no code to place (console's only makes the Celery app
    # load with Django), and import-linter cannot name a package without its modules.
    roots = {app for app in APPS if app not in named}

    def placed(module: str) -> bool:
        return any(module == name or module.startswith(name + ".") for name in named)

    missing = [m for m in app_modules() if m not in roots and not placed(m)]
    assert not missing, (
        f"{missing}: add each to its layer in pyproject.toml [tool.importlinter] "
        "(STYLE.md Layers), so lint-imports checks what it imports"
    )


def test_every_module_the_layers_name_exists() -> None:
    modules = set(app_modules())
    assert [name for name in layer_modules() if name not in modules] == []


def test_no_module_imports_one_that_imports_it() -> None:
    g = graph()
    found = cycles(g)
    described = [
        [
            f"{a} -> {b}"
            for a in component
            for b in sorted(g.find_modules_directly_imported_by(a))
            if b in component
        ]
        for component in found
    ]
    assert not found, f"import cycles (cut each: move the shared piece down): {described}"


def test_the_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
