"""The import graph vlaccel runs: no cycle, and every import goes down the layers of :data:`LAYERS`.

The graph is read from the source (AST), every ``import`` counted wherever it sits (module level or inside a
function; only ``if TYPE_CHECKING:`` blocks, which never run, are skipped), with an edge for each module Python
runs to carry it out:

- importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first: edges to ``a``, ``a.b`` and ``a.b.c``;
- a module's own packages run before it: ``a.b.c`` has edges to ``a`` and ``a.b``;
- ``from a.b import name`` goes to the submodule ``a.b.name`` if there is one; a name that ``a/b/__init__``
  loads lazily (a dict literal mapping names to ``"vlaccel...."`` modules, read by its ``__getattr__``) goes to
  the module that defines it, and so does ``a.b.name`` used after ``import a.b``.

So a package ``__init__`` that imports its own modules is a cycle: packages export names lazily instead.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: Which package may import which (docs/architecture.md, "Which package may import which"). Lowest layer first;
#: a module imports only modules of its own layer or of a lower one. A module belongs to the layer of its most
#: specific pattern: an exact name beats a ``pkg.*`` pattern (the package and everything under it), a longer
#: ``pkg.*`` beats a shorter one.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("vlaccel", "vlaccel.errors", "vlaccel.registry", "vlaccel.config", "vlaccel.config_cli",
                    "vlaccel.atomic", "vlaccel.progress", "vlaccel.versions", "vlaccel.transformers_compat",
                    "vlaccel.token_layout", "vlaccel.demo_files", "vlaccel.calibration", "vlaccel.memory")),
    ("models", ("vlaccel.models.*",)),
    ("engine", ("vlaccel.api", "vlaccel.weights", "vlaccel.adapters.*", "vlaccel.techniques.*")),
    ("policy files and presets", ("vlaccel.models.io", "vlaccel.presets.*")),
    ("simulator", ("vlaccel.sim.*",)),
    ("applications", ("vlaccel.bench.*", "vlaccel.training.*", "vlaccel.integrations.*", "vlaccel.testing.*")),
    ("commands", ("vlaccel.cli", "vlaccel.demo", "vlaccel.demo_table", "vlaccel.info", "vlaccel.presets_cli",
                  "vlaccel.sim.cli", "vlaccel.bench.cli", "vlaccel.training.cli", "vlaccel.training.kv_gate_cli")),
]

def _package(name: str) -> tuple[str, str]:
    """fnmatch patterns of a package: its ``__init__`` and every module under it."""
    return name, f"{name}.*"


_CLI = ("vlaccel.*cli*", "vlaccel.demo", "vlaccel.demo_table")
#: (importers, what they never import, why): rules the layers alone do not say. Patterns as in fnmatch.
NEVER: list[tuple[tuple[str, ...], tuple[str, ...], str]] = [
    (_package("vlaccel.techniques"), _package("vlaccel.models"),
     "a technique asks the model's adapter, never a concrete model"),
    (_package("vlaccel.techniques"),
     (*_package("vlaccel.sim"), *_package("vlaccel.bench"), *_package("vlaccel.training"), *_CLI),
     "a technique runs inside any application and imports none"),
    (_package("vlaccel.adapters"), ("vlaccel.techniques.*.handler", *_CLI),
     "an adapter may share a technique's helpers (token selection), never its handler"),
    (("vlaccel.api",), _package("vlaccel.techniques"),
     "apply finds handlers through the configs' handler paths (data), never by import"),
    (_package("vlaccel.sim"), _package("vlaccel.bench"),
     "the benchmarks read the simulator's tasks, so the simulator does not import them back"),
]


def _modules(src: Path = SRC) -> dict[str, Path]:
    out = {}
    for path in (src / "vlaccel").rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def _lazy_exports(tree: ast.Module, modules: dict[str, Path]) -> dict[str, str]:
    """name -> module, from a package ``__init__``'s module-level dict literals whose values are vlaccel modules."""
    out: dict[str, str] = {}
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if not isinstance(value, ast.Dict):
            continue
        pairs = [(k.value, v.value) for k, v in zip(value.keys, value.values)
                 if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)]
        if pairs and all(isinstance(v, str) and v in modules for _, v in pairs):
            out.update(pairs)
    return out


def _dotted(node: ast.Attribute) -> tuple[str, str] | None:
    """``a.b.c`` -> ("a", "a.b.c") for an attribute chain on a plain name."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return node.id, ".".join([node.id, *reversed(attrs)])


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    modules = _modules(src)
    trees = {name: ast.parse(path.read_text()) for name, path in modules.items()}
    lazy = {name: _lazy_exports(trees[name], modules) for name, path in modules.items() if path.name == "__init__.py"}

    def runs(dotted: str, seen: frozenset[str] = frozenset()) -> list[str]:
        """The vlaccel modules that importing (or using) ``dotted`` runs: each package on the way, then the
        module itself, or the module a package's lazy name comes from."""
        parts = dotted.split(".")
        out: list[str] = []
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in modules:
                out.append(prefix)
                continue
            target = lazy.get(".".join(parts[: i - 1]), {}).get(parts[i - 1])
            if target is not None and target not in seen:
                out += runs(target, seen | {target})
            break
        return out

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = trees[name]
        skipped = _type_checking_nodes(tree)
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        parts = name.split(".")
        targets = [".".join(parts[:i]) for i in range(1, len(parts))]  # its packages run first
        bound: dict[str, str] = {}  # name bound by `import x.y` / `import x.y as z` -> what it names
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    targets.append(alias.name)
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else \
                        alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                targets += [f"{base}.{a.name}" for a in node.names]
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and id(node) not in skipped:
                chain = _dotted(node)
                if chain is not None and chain[0] in bound:
                    targets.append(bound[chain[0]] + chain[1][len(chain[0]):])
        for target in targets:
            graph[name].update(m for m in runs(target) if m != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str) -> int | None:
    """Index in :data:`LAYERS` of ``module``'s most specific pattern (None: no pattern matches)."""
    best: tuple[tuple[int, int], int] | None = None
    for rank, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if pattern == module:
                score = (2, len(pattern))
            elif pattern.endswith(".*") and (module == pattern[:-2] or module.startswith(pattern[:-1])):
                score = (1, len(pattern))
            else:
                continue
            if best is None or score > best[0]:
                best = (score, rank)
    return None if best is None else best[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
            for a in sorted(graph) for b in sorted(graph[a]) if layer_of(b) > layer_of(a)]


def forbidden_imports(graph: dict[str, set[str]]) -> list[str]:
    def matches(module: str, patterns: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatchcase(module, p) for p in patterns)

    return [f"{a} imports {b}: {why}" for importers, never, why in NEVER
            for a in sorted(graph) if matches(a, importers)
            for b in sorted(graph[a]) if matches(b, never)]


def test_the_graph_reader_sees_imports_inside_functions_and_the_packages_they_run():
    graph = import_graph()
    assert "vlaccel.adapters.base" in graph["vlaccel.api"]  # module level
    assert "vlaccel.techniques.denoise_steps" in graph["vlaccel.presets"]  # inside ddim5()
    assert {"vlaccel", "vlaccel.techniques"} <= graph["vlaccel.presets"]  # the packages that import runs
    assert {"vlaccel", "vlaccel.techniques"} <= graph["vlaccel.techniques.layer_prune"]  # its own packages
    assert "vlaccel.adapters.base" in graph["vlaccel.techniques.layer_prune"]  # `from vlaccel.adapters import get_adapter`
    assert "vlaccel.models.io" in graph["vlaccel.sim.policies"]  # `import vlaccel` ... `vlaccel.load_policy(...)`
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(group) for group in found)


def test_every_module_has_a_layer():
    missing = [m for m in sorted(_modules()) if layer_of(m) is None]
    assert not missing, f"add these modules to LAYERS: {missing}"


def test_no_module_imports_a_higher_layer():
    found = upward_imports(import_graph())
    assert not found, "imports up the layers of LAYERS:\n" + "\n".join(found)


def test_no_forbidden_import():
    found = forbidden_imports(import_graph())
    assert not found, "imports that NEVER forbids:\n" + "\n".join(found)


def test_adapters_use_no_technique_handler():
    """An adapter may import a technique's helpers (SmolVLA's token pruning shares its selection), not a handler."""
    names = []
    for name, path in _modules().items():
        if not name.startswith("vlaccel.adapters."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vlaccel.techniques"):
                names += [f"{name}: {node.module}.{a.name}" for a in node.names if a.name.endswith("Handler")]
    assert names == []
