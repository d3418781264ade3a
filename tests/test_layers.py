"""The package graph of docs/DEVELOPING.md: no package imports upward, none in a circle (every import
statement, function-level ones included; read with ast, nothing is imported)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYER = {"analysis": 0, "datasets": 0, "diffusion": 0, "models": 0, "utils": 0,
         "training": 1, "generation": 1, "evaluation": 1}
# middle-layer packages may import each other only along these edges
SIDEWAYS = {("training", "evaluation")}  # training/baseline.py's validation metrics


def package_edges() -> dict[tuple[str, str], list[str]]:
    edges = {}
    for pkg in LAYER:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in LAYER and top != pkg:
                        edges.setdefault((pkg, top), []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return edges


def test_no_package_imports_upward_or_sideways():
    bad = {e: w for e, w in package_edges().items()
           if LAYER[e[1]] > LAYER[e[0]] or (LAYER[e[1]] == LAYER[e[0]] == 1 and e not in SIDEWAYS)}
    assert not bad, bad


def test_no_import_cycles_between_packages():
    graph = {}
    for a, b in package_edges():
        graph.setdefault(a, set()).add(b)

    def reachable(start):
        seen, stack = set(), [start]
        while stack:
            for nxt in graph.get(stack.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen
    cycles = sorted(p for p in graph if p in reachable(p))
    assert not cycles, cycles
