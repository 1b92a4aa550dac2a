"""The package's shape: dependencies point one way, and no module reaches into another's private members."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "gpubp").glob("*.py")) + sorted((ROOT / "kernels").glob("*.py"))


def module_name(path):
    package = "gpubp" if path.parent.name == "gpubp" else "gpubp.kernels"
    return package if path.stem == "__init__" else f"{package}.{path.stem}"


def imported_modules(path):
    """Every gpubp module ``path`` imports, at the top or inside a function."""
    name = module_name(path)
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("gpubp"):
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("gpubp"))
    known = {module_name(p) for p in SOURCES}
    return {m for m in found if m in known and m != name}


def test_no_import_cycles_even_inside_functions():
    graph = {module_name(p): imported_modules(p) for p in SOURCES}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_module_reads_another_objects_private_members(path):
    offenders = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if ast.unparse(owner).startswith(("parser", "train")) and path.name == "cli.py":
                continue  # argparse's own internals, to list subcommands in --help
            offenders.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert not offenders, offenders
