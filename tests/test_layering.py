"""The layers of the package, checked on the import statements of every module.

shmpipe.api        the plug-in contract: imports nothing of shmpipe but itself
shmpipe.plugins    built-in sources, sinks, kernels: only shmpipe.api (and themselves)
native_kernels     nothing of shmpipe, except its adapter module shmpipe_kernels.py,
                   which imports only shmpipe.api
shmpipe.shm        memory layout and pipes: nothing above it (engine, observe, ...)
shmpipe.observe    readers of the shared tables: never the engine's internals; a side
                   process may use the child-process contract (plumbing, roles)
shmpipe.view,      side processes (live view, Tango device): api, config, shm, reduce (the
shmpipe.tango      reducers' live results), the child-process contract (plumbing, roles),
                   themselves; the view also observe
and no import circle anywhere in shmpipe.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from tests.conftest import REPO

OBSERVE_MAY_USE = {"shmpipe.engine.plumbing", "shmpipe.engine.roles"}
# Feature packages running as side processes, and the packages each may import besides the
# child-process contract (OBSERVE_MAY_USE) and itself.
SIDE_PACKAGES = {
    "shmpipe.view": (
        "shmpipe.api",
        "shmpipe.config",
        "shmpipe.shm",
        "shmpipe.observe",
        "shmpipe.reduce",
    ),
    "shmpipe.tango": ("shmpipe.api", "shmpipe.config", "shmpipe.shm", "shmpipe.reduce"),
}


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
                mod == "native_kernels.shmpipe_kernels"
                and _within(target, "shmpipe")
                and not (_within(target, "shmpipe.api"))
            ):
                rule = "the native_kernels adapter imports only shmpipe.api"
            elif (
                _within(mod, "native_kernels")
                and mod != "native_kernels.shmpipe_kernels"
                and _within(target, "shmpipe")
            ):
                rule = "native_kernels imports shmpipe only through shmpipe_kernels.py"
            elif _within(mod, "shmpipe.shm") and any(
                _within(target, f"shmpipe.{up}")
                for up in ("engine", "observe", "plugins", "config", "benchmark", "cli")
            ):
                rule = "shmpipe.shm imports nothing above it"
            elif (
                _within(mod, "shmpipe.observe")
                and _within(target, "shmpipe.engine")
                and target not in OBSERVE_MAY_USE
                and target != "shmpipe.engine"
            ):
                rule = "observe never imports engine internals"
            side = next((p for p in SIDE_PACKAGES if _within(mod, p)), None)
            if (
                side is not None
                and _within(target, "shmpipe")
                and not _within(target, side)
                and target not in OBSERVE_MAY_USE
                and not any(_within(target, ok) for ok in SIDE_PACKAGES[side])
            ):
                rule = f"{side} imports only {', '.join(SIDE_PACKAGES[side])}, plumbing and roles"
            if rule:
                bad.append(f"{mod} imports {target}: {rule}")
    bad += [f"import circle: {' -> '.join(c)}" for c in circles(graph, mods)]
    return bad


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


def test_the_package_keeps_its_layers():
    assert violations(REPO) == []


def test_a_plug_in_importing_an_engine_internal_is_caught(tmp_path):
    for top in ("shmpipe", "native_kernels"):
        shutil.copytree(REPO / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__"))
    sink = tmp_path / "shmpipe" / "plugins" / "sinks" / "null.py"
    sink.write_text("from shmpipe.engine.protocol import release\n" + sink.read_text())
    stitch = tmp_path / "native_kernels" / "stitch.py"
    stitch.write_text("import shmpipe.shm.ring\n" + stitch.read_text())
    assert set(violations(tmp_path)) == {
        "shmpipe.plugins.sinks.null imports shmpipe.engine.protocol: "
        "plug-ins import only shmpipe.api",
        "native_kernels.stitch imports shmpipe.shm.ring: "
        "native_kernels imports shmpipe only through shmpipe_kernels.py",
    }


def test_a_side_process_importing_an_engine_internal_is_caught(tmp_path):
    for top in ("shmpipe", "native_kernels"):
        shutil.copytree(REPO / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__"))
    feed = tmp_path / "shmpipe" / "tango" / "feed.py"
    feed.write_text("from shmpipe.engine.protocol import release\n" + feed.read_text())
    catalog = tmp_path / "shmpipe" / "view" / "catalog.py"
    catalog.write_text("import shmpipe.tango.names\n" + catalog.read_text())
    assert set(violations(tmp_path)) == {
        "shmpipe.tango.feed imports shmpipe.engine.protocol: shmpipe.tango imports only "
        "shmpipe.api, shmpipe.config, shmpipe.shm, shmpipe.reduce, plumbing and roles",
        "shmpipe.view.catalog imports shmpipe.tango.names: shmpipe.view imports only "
        "shmpipe.api, shmpipe.config, shmpipe.shm, shmpipe.observe, shmpipe.reduce, plumbing "
        "and roles",
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
