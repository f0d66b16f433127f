"""The floors of docs/architecture.md, read from the source: which package may import which.

Every import statement counts, those inside functions too (an import deferred for start-up time
is still a dependency). Modules are parsed, never imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOYWORLD = REPO / "cones_tasks" / "toyworld"


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names imported from it) of every import in the file, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import; the floors are checked on absolute names"
            found.append((node.lineno, node.module or "", [alias.name for alias in node.names]))
    return found


def _modules(folder: str, *, skip: Path | None = None) -> list[Path]:
    paths = sorted((REPO / folder).rglob("*.py"))
    return [p for p in paths if skip is None or skip not in p.parents]


def _names(module: str, imported: list[str]) -> list[str]:
    """The dotted names an import brings in: the module, and `module.name` for each name taken from it."""
    return [module, *(f"{module}.{name}" for name in imported)]


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if REPO in path.parents else str(path)


def _violations(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for path in paths:
        for line, module, imported in _imports(path):
            for name in _names(module, imported):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    out.append(f"{_shown(path)}:{line}: imports {name}")
                    break
    return out


# The method's core: what a production run executes. No storage, no orchestration, no toy world, no lab.
CORE_FORBIDDEN = ("cones_tasks.toyworld", "cones_lab", "prefect", "duckdb", "pyarrow", "fsspec")
CORE_ALSO = ("catalog", "flows", "cones_cli")


def test_the_core_imports_neither_the_toy_world_nor_the_lab_nor_storage_nor_prefect():
    core = _modules("cones_tasks", skip=TOYWORLD)
    assert len(core) > 20 and REPO / "cones_tasks" / "neurons" / "discovery.py" in core
    assert not _violations(core, CORE_FORBIDDEN + CORE_ALSO)


def test_the_toy_world_may_import_the_core_and_nothing_above_it():
    toy = _modules("cones_tasks/toyworld")
    assert not _violations(toy, ("cones_lab", "prefect", "duckdb", "pyarrow", "fsspec", *CORE_ALSO))


def test_the_catalog_knows_no_flow_no_cli_no_lab_and_no_toy_world():
    assert not _violations(_modules("catalog"), ("prefect", "flows", "cones_cli", "cones_lab", "cones_tasks.toyworld"))


def test_flows_are_imported_by_the_cli_only_and_never_import_the_cli_or_the_lab():
    assert not _violations(_modules("flows"), ("cones_cli", "cones_lab", "duckdb", "fsspec"))


def test_no_product_package_imports_the_lab():
    """The lab is imported by its own commands (cones_cli) and by experiments/, never by what a production run executes."""
    product = _modules("cones_tasks") + _modules("catalog") + _modules("flows")
    assert not _violations(product, ("cones_lab",))


def test_the_lab_and_the_experiments_use_public_names_only():
    private = []
    for path in _modules("cones_lab") + _modules("experiments"):
        for line, module, imported in _imports(path):
            if module.split(".")[0] not in ("cones_tasks", "catalog", "flows"):
                continue
            hidden = [n for n in (*module.split("."), *imported) if n.startswith("_")]
            if hidden:
                private.append(f"{_shown(path)}:{line}: {module} {hidden}")
    assert not private


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("def f():\n    import pyarrow.compute as pc\n", True),  # inside a function still counts
        ("from cones_tasks.toyworld.judge import judge\n", True),
        ("from cones_tasks import toyworld\n", True),  # the package by its parent
        ("import cones_lab.validate\n", True),
        ("from prefect import flow\n", True),
        ("import fsspec\n", True),
        ("import duckdb\n", True),
        ("from cones_tasks.neurons.masks import ConceptMask\n", False),
        ("import pyarrowish\n", False),  # a prefix of a name is not the name
    ],
)
def test_the_rule_catches_what_it_is_for(tmp_path, source, caught):
    """The core's check would fail on these: each kind of forbidden import is seen, look-alikes are not."""
    path = tmp_path / "module.py"
    path.write_text(source)
    found = _violations([path], CORE_FORBIDDEN + CORE_ALSO)
    assert bool(found) == caught, found
