"""The package's import graph: no cycles, and no module imports another module's private name.

Read from the source with `ast` (imports inside functions count too: a lazy import that breaks
a cycle is still a cycle in the design).
"""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "pflash_jax"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph():
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private: list[str] = []
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level:  # relative import
                    pkg = mod.split(".")[: -node.level] if path.name != "__init__.py" else \
                        mod.split(".")[: len(mod.split(".")) - node.level + 1]
                    base = ".".join(pkg + [node.module])
                if not base.startswith("pflash_jax"):
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    target = sub if sub in modules else base
                    if target in modules and target != mod:
                        edges[mod].add(target)
                    if alias.name.startswith("_") and sub not in modules:
                        private.append(f"{mod} imports {base}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules and alias.name != mod:
                        edges[mod].add(alias.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                # `qwen3._chunked`-style use of another module's private name
                if node.attr.startswith("_") and not node.attr.startswith("__"):
                    if node.value.id in {m.rsplit(".", 1)[-1] for m in modules} and \
                            node.value.id != mod.rsplit(".", 1)[-1]:
                        private.append(f"{mod} uses {node.value.id}.{node.attr}")
    return edges, private


def _without_package_inits(edges):
    """A package's __init__ re-exporting its submodules is not a design cycle: drop the
    edges from a package to its own submodules."""
    return {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in edges.items()}


def test_import_graph_has_no_cycle():
    edges = _without_package_inits(_graph()[0])
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_no_module_imports_a_private_name_of_another():
    _, private = _graph()
    assert not private, "\n".join(private)


def test_the_checker_sees_a_cycle_and_a_private_import(tmp_path, monkeypatch):
    """The two checks above would fail on a package that has the faults."""
    pkg = tmp_path / "pflash_jax"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pflash_jax.b import _hidden\n")
    (pkg / "b.py").write_text("def f():\n    from pflash_jax import a\n_hidden = 1\n")
    monkeypatch.setitem(globals(), "PKG", pkg)
    _, private = _graph()
    assert private == ["pflash_jax.a imports pflash_jax.b._hidden"]
    try:
        test_import_graph_has_no_cycle()
    except AssertionError as e:
        assert "pflash_jax.a -> pflash_jax.b -> pflash_jax.a" in str(e)
    else:
        raise AssertionError("the cycle a -> b -> a was not found")
