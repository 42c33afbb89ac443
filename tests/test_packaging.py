"""Packaging: what each install gives, and the import graph of the package.

* Opening and analysing stores needs no torch: the core imports without it, and creating a
  model-backed array without it says which extra to install.
* Every third-party module the package imports is declared in ``pyproject.toml`` (in the core
  dependencies or in the extra of the subpackage that imports it).
* The package's import graph has no circle, and no module imports from the package root.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

import infl_array as ia

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "infl_array"

# import name -> distribution name, where they differ
DISTRIBUTIONS = {"sklearn": "scikit-learn"}
# imported by the package but never required: pyDVL's enum, only when a pyDVL model is given
UNDECLARED = {"pydvl"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        out[name] = path
    return out


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(module, is_relative)`` of every import in a file (function-level ones included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, False) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.append((node.module, node.level > 0))
    return found


def test_core_works_without_torch(tmp_path: Path) -> None:
    store = tmp_path / "s"
    arr = ia.InfluenceArray.from_function(
        store,
        lambda r, c: np.add.outer(np.arange(r.start, r.stop), np.arange(c.start, c.stop)),
        shape=(6, 9),
        block_shape=(4, 4),
    )
    arr.fill(progress=False)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now fails
        import numpy as np
        import infl_array as ia
        from infl_array.cli import main

        arr = ia.open({str(store)!r})
        assert arr[2, 3] == 5 and arr.top_k(2)[1][0].tolist() == [8, 7]
        assert main(["info", {str(store)!r}]) == 0
        assert main(["top", {str(store)!r}, "--k", "2"]) == 0
        assert main(["verify", "--quiet", {str(store)!r}]) == 0
        try:
            ia.InfluenceArray.create({str(tmp_path / "t")!r}, object(), test=(1, 2), train=(1, 2))
        except ImportError as exc:
            assert "infl_array[torch]" in str(exc), exc
        else:
            raise AssertionError("create without torch did not raise ImportError")
        print("OK")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("OK")
    assert not (tmp_path / "t").exists()  # nothing was created


def test_every_imported_distribution_is_declared() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = meta["dependencies"]
    extras = meta["optional-dependencies"]

    def declared(dist: str, where: list[str]) -> bool:
        return any(req.split("[")[0].split(">")[0].split("=")[0].strip() == dist for req in where)

    stdlib = set(sys.stdlib_module_names)
    missing = []
    for name, path in _modules().items():
        allowed = core + (extras["torch"] if name.startswith("infl_array.torch") else [])
        for module, relative in _imports(path):
            top = module.split(".")[0]
            if relative or top in stdlib or top in UNDECLARED or top == "infl_array":
                continue
            dist = DISTRIBUTIONS.get(top, top)
            # optional integrations imported inside functions: dask, tqdm's extras, demo's sklearn
            if not declared(dist, allowed) and not any(declared(dist, e) for e in extras.values()):
                missing.append(f"{name} imports {module} ({dist})")
            elif name.startswith("infl_array.torch") and not declared(dist, allowed):
                missing.append(f"{name} imports {module}: not in core or the torch extra")
    assert not missing, missing


def test_import_graph_has_no_circle_and_no_root_imports() -> None:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    root_imports = []
    for name, path in modules.items():
        deps = set()
        for module, relative in _imports(path):
            if relative:
                continue  # the package uses absolute imports only
            if module == "infl_array" and name != "infl_array":
                root_imports.append(name)
            if module in modules:
                deps.add(module)
        # ``from infl_array.x import y`` where y is a module
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                deps |= {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
        graph[name] = deps - {name}
    assert not root_imports, f"modules importing the package root: {root_imports}"
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path, node, dep]))
            if dep not in state:
                visit(dep, [*path, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
