"""The shape of the code (docs/ARCHITECTURE.md): small modules, one direction of imports, a small config."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLER = ROOT / "src" / "triattention_sampler"
MAX_LINES = 400


def python_files():
    return sorted(list((ROOT / "src").rglob("*.py")) + list((ROOT / "torch-ext").rglob("*.py")))


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SAMPLER.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph():
    """Module -> sampler modules it imports (any import, also inside functions)."""
    modules = {module_name(p): p for p in SAMPLER.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.add(sub if sub in modules else target)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                edges.update(n for n in names if n in modules)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def test_no_import_cycle_among_sampler_modules():
    graph = import_graph()
    assert "triattention_sampler.cache.cache" in graph
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_math_does_not_import_the_sampler():
    for path in (ROOT / "torch-ext" / "triattention").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.startswith(("triattention_sampler", "transformers")) for n in names), path


def test_config_is_small_and_scorers_are_registered_in_one_place():
    import triattention_sampler as ts
    from triattention_sampler.scorers import METHODS, Scorer

    assert len(ts.TriAttentionConfig.field_names()) <= 15
    assert all(issubclass(m.scorer, Scorer) for m in METHODS.values())
    # method names appear in the registry only (the CLI and the evaluation ask it)
    for path in SAMPLER.rglob("*.py"):
        if path.parent.name == "scorers":
            continue
        text = path.read_text()
        for name in set(METHODS) - {"triattention"}:  # also the attention implementation's and the package's name
            assert f'"{name}"' not in text and f"'{name}'" not in text, (path, name)
