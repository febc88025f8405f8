"""tfkd's import graph: no cycles, and no import from a lower layer into a higher one. Every import
counts, those inside functions included (a function-local import that dodges a cycle is still a
cycle)."""
import ast
import os

import pytest

from tests.conftest import REPO

PACKAGE = os.path.join(REPO, "tfkd")

# Bottom to top; a module may import its own layer and the layers below. Modules not listed
# (e.g. a new one) count as top-level: they may import anything, and nothing listed may import them.
LAYERS = [
    ("base", ["tfkd", "tfkd.errors", "tfkd.io", "tfkd.layout", "tfkd.registry", "tfkd.method_config", "tfkd.losses",
              "tfkd.optimizers", "tfkd.distribute", "tfkd.progress"]),
    ("data/models", ["tfkd.data", "tfkd.models", "tfkd.evaluation"]),
    ("methods", ["tfkd.methods"]),
    ("config", ["tfkd.config"]),
    ("runs", ["tfkd.runs"]),
    ("export/teachers/extract", ["tfkd.export", "tfkd.teachers", "tfkd.extract"]),
    ("drivers", ["tfkd.train", "tfkd.train_fewshot", "tfkd.tuning", "tfkd.cli"]),
]


def module_files(package_dir):
    mods = {}
    root = os.path.dirname(package_dir)
    for folder, _, files in os.walk(package_dir):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                mod = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                mods[mod[: -len(".__init__")] if mod.endswith(".__init__") else mod] = path
    return mods


def import_graph(package_dir=PACKAGE):
    """{module: {imported module of the package}}, resolving relative imports and ``from pkg import mod``."""
    mods = module_files(package_dir)
    edges = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.endswith("__init__.py") else mod.rsplit(".", 1)[0]
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in mods:  # an attribute of a module -> the module
                    name = name.rsplit(".", 1)[0] if "." in name else ""
                # A package's __init__ is loaded on the way to any of its submodules: not an edge.
                if name and name != mod and not mod.startswith(name + "."):
                    edges[mod].add(name)
    return edges


def layer_of(mod):
    """Index in LAYERS (the longest matching prefix); unlisted modules are top-level."""
    best, best_len = len(LAYERS), -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = mod.startswith(prefix + ".") and prefix != "tfkd"  # the root package is itself only
            if (mod == prefix or inside) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    return best


def cycles(edges):
    """Strongly connected components with more than one module (Tarjan), ignoring a package's
    own __init__ importing its submodules."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [c for c in found if not all(m.startswith(min(c, key=len)) for m in c)]


def test_the_checker_sees_function_local_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg import low\n")
    (pkg / "low.py").write_text("import os\n\n\ndef later():\n    from pkg.sub import high\n    return high\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "high.py").write_text("from .. import low\n")
    edges = import_graph(str(pkg))
    assert "pkg.sub.high" in edges["pkg.low"] and edges["pkg.sub.high"] == {"pkg.low"}
    assert cycles(edges) == [["pkg.low", "pkg.sub.high"]]
    (pkg / "low.py").write_text("import os\n")
    assert cycles(import_graph(str(pkg))) == []  # a package importing its own submodule is no cycle


def test_layers_cover_the_package():
    assert layer_of("tfkd.methods.distill") == 2 and layer_of("tfkd.runs") == 4
    assert layer_of("tfkd.somewhere_new") == len(LAYERS)  # unlisted: top level
    assert "tfkd.runs" in import_graph()["tfkd.train"]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_upward_imports():
    upward = sorted(f"{a} ({LAYERS[layer_of(a)][0] if layer_of(a) < len(LAYERS) else 'top'}) imports {b} "
                    f"({LAYERS[layer_of(b)][0] if layer_of(b) < len(LAYERS) else 'top'})"
                    for a, targets in import_graph().items() for b in targets if layer_of(b) > layer_of(a))
    assert upward == []


@pytest.mark.parametrize("lower,forbidden", [
    ("tfkd.methods", ("tfkd.runs", "tfkd.export", "tfkd.teachers", "tfkd.train", "tfkd.train_fewshot",
                      "tfkd.tuning", "tfkd.config")),
    ("tfkd.runs", ("tfkd.export", "tfkd.teachers", "tfkd.extract", "tfkd.train", "tfkd.train_fewshot",
                   "tfkd.tuning")),
    ("tfkd.export", ("tfkd.train", "tfkd.train_fewshot", "tfkd.tuning")),
    ("tfkd.teachers", ("tfkd.train", "tfkd.train_fewshot", "tfkd.tuning")),
    ("tfkd.extract", ("tfkd.train", "tfkd.train_fewshot", "tfkd.tuning")),
    ("tfkd.config", ("tfkd.runs", "tfkd.export", "tfkd.teachers", "tfkd.train", "tfkd.train_fewshot")),
])
def test_named_upward_edges_are_absent(lower, forbidden):
    edges = import_graph()
    bad = sorted(f"{a} imports {b}" for a, targets in edges.items() if a == lower or a.startswith(lower + ".")
                 for b in targets if any(b == f or b.startswith(f + ".") for f in forbidden))
    assert bad == []
