"""Packaging: what each install gives, and the import graph of the package.

* Opening and analysing stores needs no torch: the core imports without it, and creating a
  model-backed array without it says which extra to install.
* Every third-party module the package imports is declared in ``pyproject.toml`` (in the core
  dependencies or in the extra of the subpackage that imports it).
* The package's import graph has no circle, no module imports from the package root, imports
  are absolute, and they only go down the layers (errors, version, protocol, display <
  storage < engine < executors < arrays < quality, plot, cli, demo); the core imports
  ``infl_array.torch`` only through the hooks listed in ``CORE_TO_TORCH``. Inside
  ``infl_array.torch`` imports go one way between its subpackages (``TORCH_LAYERS``: data <
  full < layerwise < source). Every module declares ``__all__``.
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


# The layer rule of the package (issue 20): imports only go down these ranks.
# A module may import modules of its own rank or below; ``infl_array/__init__.py`` is above all.
LAYERS = {
    "infl_array.errors": 0,
    "infl_array.version": 0,
    "infl_array.protocol": 0,
    "infl_array.display": 0,
    "infl_array.storage": 1,
    "infl_array.engine": 2,
    "infl_array.executors": 3,
    "infl_array.arrays": 4,
    "infl_array.quality": 5,
    "infl_array.cli": 5,
    "infl_array.plot": 5,
    "infl_array.demo": 5,
}
TORCH = "infl_array.torch"
# The only imports from the core into infl_array.torch (all function-local): (importer, module,
# name). arrays/influence.py builds a model's block source (the documented make_block_source
# hook; a new test set goes through the source's declared retest capability); demo.py fits a
# torch model.
CORE_TO_TORCH = {
    ("infl_array.arrays.influence", "infl_array.torch.source.source", "make_block_source"),
    ("infl_array.demo", "infl_array.torch", "DirectInfluence"),
}


def _edges() -> dict[str, dict[str, set[str]]]:
    """``{importer: {imported module: names}}`` over the package, every import counted
    (module-level, function-local and ``TYPE_CHECKING`` ones); a name that is itself a module
    (``from infl_array.x import y``) is an edge to that module."""
    modules = _modules()
    graph: dict[str, dict[str, set[str]]] = {}
    for name, path in modules.items():
        deps: dict[str, set[str]] = {}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("infl_array"):
                        deps.setdefault(a.name, set())
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("infl_array"):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    if sub in modules:
                        deps.setdefault(sub, set())
                    else:
                        deps.setdefault(str(node.module), set()).add(a.name)
        deps.pop(name, None)
        graph[name] = deps
    return graph


def _layer(module: str) -> int | None:
    """Rank of a core module in :data:`LAYERS` (None for the root and for infl_array.torch)."""
    for prefix, rank in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return None


def _is_torch(module: str) -> bool:
    return module == TORCH or module.startswith(TORCH + ".")


def test_every_core_module_has_a_layer() -> None:
    loose = [m for m in _modules() if m != "infl_array" and not _is_torch(m) and _layer(m) is None]
    assert not loose, f"modules outside the layers of LAYERS (add them there): {loose}"


def test_every_module_declares_all() -> None:
    def declares(path: Path) -> bool:
        for node in ast.parse(path.read_text()).body:
            targets = (
                node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            )
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                return True
        return False

    missing = [name for name, path in _modules().items() if not declares(path)]
    assert not missing, f"modules without __all__ (list their public names): {missing}"


def test_package_uses_absolute_imports_only() -> None:
    relative = [name for name, path in _modules().items() if any(r for _, r in _imports(path))]
    assert not relative, f"modules with relative imports (write infl_array....): {relative}"


def test_import_graph_has_no_circle_and_no_root_imports() -> None:
    graph = {name: set(deps) for name, deps in _edges().items()}
    root_imports = [name for name, deps in graph.items() if "infl_array" in deps]
    assert not root_imports, f"modules importing the package root: {root_imports}"
    graph = {name: {d for d in deps if d in graph} for name, deps in graph.items()}
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


def test_imports_only_go_down_the_layers() -> None:
    upward = []
    for name, deps in _edges().items():
        own = _layer(name)
        if own is None:
            continue  # the root and infl_array.torch may import any core module
        for dep in deps:
            rank = _layer(dep)
            if rank is not None and rank > own:
                upward.append(f"{name} (layer {own}) imports {dep} (layer {rank})")
    assert not upward, f"imports up the layers of LAYERS: {upward}"


def test_core_imports_torch_only_through_the_documented_hooks() -> None:
    found = {
        (name, dep, imported)
        for name, deps in _edges().items()
        if not _is_torch(name) and name != "infl_array"
        for dep, names in deps.items()
        if _is_torch(dep)
        for imported in names or {""}
    }
    assert found <= CORE_TO_TORCH, f"core imports of infl_array.torch: {found - CORE_TO_TORCH}"
    gone = CORE_TO_TORCH - found
    assert not gone, f"hooks no longer used (remove them from CORE_TO_TORCH): {gone}"


# The order of infl_array.torch's subpackages (issue 20): a module may import its own
# subpackage and those of lower rank; none imports the infl_array.torch package itself.
TORCH_LAYERS = {
    "infl_array.torch.data": 0,
    "infl_array.torch.full": 1,
    "infl_array.torch.layerwise": 2,
    "infl_array.torch.source": 3,
}


def _torch_layer(module: str) -> int | None:
    """Rank of a torch module's subpackage in :data:`TORCH_LAYERS` (None for the others)."""
    for prefix, rank in TORCH_LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return None


def test_every_torch_module_has_a_subpackage() -> None:
    loose = [m for m in _modules() if _is_torch(m) and m != TORCH and _torch_layer(m) is None]
    assert not loose, f"torch modules outside the subpackages of TORCH_LAYERS: {loose}"


def test_torch_imports_go_one_way_between_its_subpackages() -> None:
    upward = []
    for name, deps in _edges().items():
        own = _torch_layer(name)
        if own is None:
            continue
        for dep in deps:
            rank = _torch_layer(dep)
            if dep == TORCH or (rank is not None and rank > own):
                upward.append(f"{name} (rank {own}) imports {dep} (rank {rank})")
    assert not upward, f"imports up the torch subpackages of TORCH_LAYERS: {upward}"
