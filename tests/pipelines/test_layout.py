"""The house rules of the layout (README, pipelines/__init__.py): stages import only earlier stages and the
shared modules, no two modules import each other (directly or around a loop), imf_core imports nothing of the
pipeline, and no function in pipelines/ or tune/ is longer than one can read in a sitting."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["data", "models", "train", "generate", "evaluation", "serve", "ops"]
SHARED = {"cli", "config", "runtime", "tracking", "storage", "progress", "metrics", "errors"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions, resolved to absolute names."""
    tree, package = ast.parse(path.read_text()), module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" \
        else module_name(path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def ours(names: set[str], modules: set[str]) -> set[str]:
    return {n for n in names if n in modules}


MODULES = {module_name(p): p for top in ("pipelines", "tune", "imf_core") for p in (ROOT / top).rglob("*.py")}
GRAPH = {m: ours(imports_of(p), set(MODULES)) - {m} for m, p in MODULES.items()}


def stage_of(module: str):
    parts = module.split(".")
    if parts[0] != "pipelines" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in STAGES else "shared"


def test_stages_import_only_earlier_stages_and_shared_modules():
    bad = []
    for module, targets in GRAPH.items():
        stage = stage_of(module)
        for target in targets:
            to = stage_of(target)
            if stage in STAGES and to in STAGES and STAGES.index(to) > STAGES.index(stage):
                bad.append(f"{module} -> {target}")
            if module.startswith("pipelines") and target.startswith("tune"):
                bad.append(f"{module} -> {target} (pipelines never import tune)")
            if module.startswith("imf_core") and not target.startswith("imf_core"):
                bad.append(f"{module} -> {target} (imf_core imports nothing of the pipeline)")
        if stage == "shared" and module != "pipelines.cli":
            bad += [f"{module} -> {t} (a shared module uses no stage)" for t in targets if stage_of(t) in STAGES]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    def leaf(name):  # `from pkg import module` lists both: count the module, not its package
        return name if name in MODULES and not MODULES[name].name == "__init__.py" else None

    graph = {m: {t for t in targets if leaf(t)} for m, targets in GRAPH.items() if leaf(m)}
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("top", ["pipelines", "tune"])
def test_functions_fit_on_a_screen(top):
    long = []
    for path in (ROOT / top).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long, "\n".join(long)


def test_each_stage_says_what_it_holds():
    for stage in STAGES:
        doc = ast.get_docstring(ast.parse((ROOT / "pipelines" / stage / "__init__.py").read_text()))
        assert doc and len(doc) > 80, f"pipelines/{stage}/__init__.py needs a docstring that maps the stage"
