"""The layers of the package, checked on the import statements of every module.

Every package stands on a floor (``FLOORS``, lowest first) and imports only its own floor
and those below it: no arrow runs back up. On top of that, some packages are held tighter:

shmpipe.api        the plug-in contract: imports nothing of shmpipe but itself
shmpipe.plugins    built-in sources, sinks, kernels: only shmpipe.api (and themselves)
native_kernels     nothing of shmpipe, except its adapters (the package shmpipe_kernels),
                   which import only shmpipe.api
shmpipe.child      the contract of a forked process (plumbing, roles, exit codes): below
                   observe, the side processes and the engine, which all use it
shmpipe.view,      side processes (live view, Tango device): api, config, shm, child,
shmpipe.tango      reduce (the reducers' live results), themselves; the view also observe
shmpipe.serve      the service (beside the command line): starts pipelines as ``shmpipe run``
                   processes; of the engine it imports only the exit codes
and no import circle anywhere in shmpipe.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from tests.conftest import REPO

# Lowest first. A module imports only packages on its own floor or below; a package on no
# floor fails the test until it is given one.
FLOORS = (
    ("shmpipe", "shmpipe.api", "shmpipe.netserver", "native_kernels"),
    ("shmpipe.shm", "shmpipe.plugins", "shmpipe.asapo"),
    ("shmpipe.config", "shmpipe.results", "shmpipe.reduce"),
    ("shmpipe.child",),
    ("shmpipe.observe",),
    ("shmpipe.view", "shmpipe.tango"),
    ("shmpipe.engine",),
    ("shmpipe.benchmark",),
    ("shmpipe.cli", "shmpipe.__main__", "shmpipe.serve"),
)
# Feature packages running as side processes, and the packages each may import besides itself.
SIDE_PACKAGES = {
    "shmpipe.view": (
        "shmpipe.api", "shmpipe.config", "shmpipe.shm", "shmpipe.child", "shmpipe.observe",
        "shmpipe.reduce",
    ),
    "shmpipe.tango": (
        "shmpipe.api", "shmpipe.config", "shmpipe.shm", "shmpipe.child", "shmpipe.reduce"
    ),
}  # fmt: skip


def floor(name: str) -> tuple[int, str] | None:
    """The floor of module ``name`` and the package that places it there (the longest)."""
    placed = [
        (len(pkg), level, pkg)
        for level, pkgs in enumerate(FLOORS)
        for pkg in pkgs
        if _within(name, pkg) and pkg != "shmpipe" or name == pkg
    ]
    return max(placed)[1:] if placed else None


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(root: Path) -> dict[str, set[str]]:
    """Every module under ``root`` (shmpipe, native_kernels) and what it imports, at any level."""
    found: dict[str, set[str]] = {}
    for top in ("shmpipe", "native_kernels"):
        for path in (root / top).rglob("*.py"):
            name, names = module_name(root, path), set()
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:
                        up = package.split(".")[: len(package.split(".")) - node.level + 1]
                        base = ".".join([*up, base] if base else up)
                    names.add(base)
                    names.update(f"{base}.{a.name}" for a in node.names)
            found[name] = names
    return found


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(root: Path) -> list[str]:
    graph = imports(root)
    mods = set(graph)
    bad = []
    for mod, names in graph.items():
        ours = {n for n in names if _within(n, "shmpipe") or _within(n, "native_kernels")}
        ours = targets(ours, mods) - {mod}
        for target in sorted(ours):
            rule = None
            if _within(mod, "shmpipe.api") and not _within(target, "shmpipe.api"):
                rule = "shmpipe.api imports only shmpipe.api"
            elif (
                _within(mod, "shmpipe.plugins")
                and _within(target, "shmpipe")
                and not (_within(target, "shmpipe.api") or _within(target, "shmpipe.plugins"))
            ):
                rule = "plug-ins import only shmpipe.api"
            elif (
                _within(mod, "native_kernels.shmpipe_kernels")
                and _within(target, "shmpipe")
                and not (_within(target, "shmpipe.api"))
            ):
                rule = "the native_kernels adapter imports only shmpipe.api"
            elif (
                _within(mod, "native_kernels")
                and not _within(mod, "native_kernels.shmpipe_kernels")
                and _within(target, "shmpipe")
            ):
                rule = "native_kernels imports shmpipe only through its adapters, shmpipe_kernels"
            elif (
                _within(mod, "shmpipe.serve")
                and _within(target, "shmpipe.engine")
                and target not in ("shmpipe.engine", "shmpipe.engine.exit_codes")
            ):
                rule = "shmpipe.serve runs pipelines as processes: of the engine, the exit codes"
            side = next((p for p in SIDE_PACKAGES if _within(mod, p)), None)
            if (
                side is not None
                and _within(target, "shmpipe")
                and not _within(target, side)
                and not any(_within(target, ok) for ok in SIDE_PACKAGES[side])
            ):
                rule = f"{side} imports only {', '.join(SIDE_PACKAGES[side])}"
            if rule is None:
                rule = _floor_rule(mod, target)
            if rule:
                bad.append(f"{mod} imports {target}: {rule}")
    bad += [f"import circle: {' -> '.join(c)}" for c in circles(graph, mods)]
    return bad


def _floor_rule(mod: str, target: str) -> str | None:
    here, there = floor(mod), floor(target)
    if here is None:
        return f"{mod} is on no floor: give its package one in FLOORS (tests/test_layering.py)"
    if there is None:
        return f"{target} is on no floor: give its package one in FLOORS (tests/test_layering.py)"
    if there[0] > here[0]:
        return f"{here[1]} (floor {here[0]}) imports from a higher floor ({there[1]}, {there[0]})"
    return None


def targets(names: set[str], mods: set[str]) -> set[str]:
    """The modules ``names`` denote: a module itself, or the module of ``pkg.mod.Class``."""
    out = set()
    for n in names:
        if n in mods:
            out.add(n)
        elif n.rpartition(".")[0] in mods:
            out.add(n.rpartition(".")[0])
    return out


def circles(graph: dict[str, set[str]], mods: set[str]) -> list[list[str]]:
    # Edges to a module's own ancestors (packages) and from a package to its own modules
    # (re-exports) are how packages work, not circles.
    edges = {
        m: {
            n
            for n in targets(graph[m], mods)
            if n != m and not m.startswith(n + ".") and not n.startswith(m + ".")
        }
        for m in graph
    }
    found: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                found.append([*path[path.index(n) :], n])
            elif n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    return found


def _code_with(tmp_path: Path, added: dict[str, str]) -> Path:
    """A copy of ``shmpipe`` and ``native_kernels`` under ``tmp_path`` with a line put at the
    top of some files (``added``: path -> line; a missing file is made)."""
    for top in ("shmpipe", "native_kernels"):
        shutil.copytree(REPO / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__"))
    for name, line in added.items():
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(line + "\n" + (path.read_text() if path.exists() else ""))
    return tmp_path


def test_the_package_keeps_its_layers():
    assert violations(REPO) == []


def test_a_plug_in_importing_an_engine_internal_is_caught(tmp_path):
    root = _code_with(
        tmp_path,
        {
            "shmpipe/plugins/sinks/null.py": "from shmpipe.engine.protocol import release",
            "native_kernels/stitch.py": "import shmpipe.shm.ring",
        },
    )
    assert set(violations(root)) == {
        "shmpipe.plugins.sinks.null imports shmpipe.engine.protocol: "
        "plug-ins import only shmpipe.api",
        "native_kernels.stitch imports shmpipe.shm.ring: "
        "native_kernels imports shmpipe only through its adapters, shmpipe_kernels",
    }


def test_a_side_process_importing_an_engine_internal_is_caught(tmp_path):
    root = _code_with(
        tmp_path,
        {
            "shmpipe/tango/feed.py": "from shmpipe.engine.protocol import release",
            "shmpipe/view/catalog.py": "import shmpipe.tango.names",
        },
    )
    assert set(violations(root)) == {
        "shmpipe.tango.feed imports shmpipe.engine.protocol: shmpipe.tango imports only "
        "shmpipe.api, shmpipe.config, shmpipe.shm, shmpipe.child, shmpipe.reduce",
        "shmpipe.view.catalog imports shmpipe.tango.names: shmpipe.view imports only "
        "shmpipe.api, shmpipe.config, shmpipe.shm, shmpipe.child, shmpipe.observe, "
        "shmpipe.reduce",
    }


def test_an_import_from_a_higher_floor_is_caught(tmp_path):
    root = _code_with(
        tmp_path,
        {
            "shmpipe/observe/metrics.py": "from shmpipe.engine.recovery import Recovery",
            "shmpipe/child/roles.py": "import shmpipe.observe.logs",
            "shmpipe/newpkg/__init__.py": "import shmpipe.shm.layout",
        },
    )
    assert set(violations(root)) == {
        "shmpipe.observe.metrics imports shmpipe.engine.recovery: shmpipe.observe (floor 4) "
        "imports from a higher floor (shmpipe.engine, 6)",
        "shmpipe.child.roles imports shmpipe.observe.logs: shmpipe.child (floor 3) imports "
        "from a higher floor (shmpipe.observe, 4)",
        "shmpipe.newpkg imports shmpipe.shm.layout: shmpipe.newpkg is on no floor: give its "
        "package one in FLOORS (tests/test_layering.py)",
    }


def test_an_import_circle_is_caught(tmp_path):
    shutil.copytree(
        REPO / "shmpipe", tmp_path / "shmpipe", ignore=shutil.ignore_patterns("__pycache__")
    )
    (tmp_path / "native_kernels").mkdir()
    streams = tmp_path / "shmpipe" / "shm" / "streams.py"
    streams.write_text(streams.read_text() + "\nfrom shmpipe.shm.ring import SlotRing\n")
    assert any(v.startswith("import circle") for v in violations(tmp_path))


def test_nothing_outside_tests_imports_the_tests():
    """The package, the native kernels and the scripts must work without the test folder."""
    bad = []
    for top in ("shmpipe", "native_kernels", "scripts", "bench"):
        for path in (REPO / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom) and not node.level
                    else []
                )
                bad += [
                    f"{path.relative_to(REPO)} imports {n}" for n in names if _within(n, "tests")
                ]
    assert bad == []
