"""The folder layout is the architecture: imports only go down the layers, and never in a circle."""

import ast
from pathlib import Path

import quorum

SRC = Path(quorum.__file__).parent
# Lower numbers are lower layers. train and predict share a layer and never import each other.
LAYERS = {
    "__init__": 0, "errors": 0, "console": 1, "files": 1, "device": 1, "distributed": 1, "metrics": 1, "calibration": 1,
    "data": 2, "models": 3, "train": 4, "predict": 4, "report": 5, "demo": 6, "cli": 7, "__main__": 8,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(("quorum", *parts)).removesuffix(".__init__")


def imports(path: Path) -> set[str]:
    """Every quorum module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("quorum"):
            for alias in node.names:  # `from quorum.predict import shards` imports a module
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("quorum")}
    return found - {"quorum"}


MODULES = {module_name(path): path for path in SRC.rglob("*.py")}


def top(module: str) -> str:
    """The layer's name: `quorum.predict.vote` -> predict, `quorum.cli` -> cli."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_belongs_to_a_layer():
    assert {top(name) for name in MODULES} <= set(LAYERS), "a new top-level module needs a layer in LAYERS"


def test_imports_only_go_down_the_layers():
    wrong = []
    for name, path in MODULES.items():
        for imported in imports(path):
            mine, theirs = top(name), top(imported)
            if mine != theirs and LAYERS[theirs] >= LAYERS[mine]:
                wrong.append(f"{name} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    graph = {name: {i for i in imports(path) if i in MODULES} for name, path in MODULES.items()}
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != "open", "import circle: " + " -> ".join([*trail, node, nxt])
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_the_layout_test_sees_a_real_import():
    assert "quorum.predict.vote" in imports(MODULES["quorum.predict.table"])
    assert "quorum.predict.shards" in imports(MODULES["quorum.cli"])
