"""Issue 7: no step unpickles a checkpoint or a registry artifact. A scan of every call in the package
for the ways Python code unpickles a file: pickle-family loads, torch.load without weights_only=True,
numpy loads with allow_pickle=True, and MLflow flavours whose load_model unpickles."""

import ast

from tests.infra.infra_files import REPO

PACKAGES = ("imf_core", "pipelines", "tune")
UNPICKLING_MODULES = {"pickle", "cPickle", "cloudpickle", "dill", "joblib", "_pickle"}
PICKLING_FLAVOURS = {"pytorch", "sklearn", "keras", "tensorflow"}  # mlflow.<flavour>.load_model


def dotted(node) -> str:
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def keyword(call: ast.Call, name: str):
    found = [k.value for k in call.keywords if k.arg == name]
    return found[0].value if found and isinstance(found[0], ast.Constant) else None


def problem(call: ast.Call) -> str | None:
    name = dotted(call.func)
    parts = name.split(".")
    if parts[-1] in ("load", "loads", "Unpickler") and parts[0] in UNPICKLING_MODULES:
        return name
    if name == "torch.load" and keyword(call, "weights_only") is not True:
        return "torch.load without weights_only=True"
    if parts[-1] == "load" and parts[0] in ("np", "numpy") and keyword(call, "allow_pickle") is True:
        return "numpy load with allow_pickle=True"
    if len(parts) == 3 and parts[0] == "mlflow" and parts[1] in PICKLING_FLAVOURS and parts[2] == "load_model":
        return name
    return None


def scan(source: str) -> list[tuple[int, str]]:
    return [(node.lineno, p) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and (p := problem(node))]


def test_no_step_unpickles_what_it_loads():
    found = [f"{path.relative_to(REPO)}:{line}: {what}"
             for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))
             for line, what in scan(path.read_text())]
    assert not found, "unpickling calls: " + "; ".join(found)


def test_the_scan_finds_each_kind():
    source = """
import pickle, torch, numpy as np, mlflow
pickle.load(f); torch.load(p); torch.load(p, weights_only=False); np.load(p, allow_pickle=True)
mlflow.pytorch.load_model(uri)
torch.load(p, weights_only=True); np.load(p); mlflow.pyfunc.load_model(uri)
"""
    assert [line for line, _ in scan(source)] == [3, 3, 3, 3, 4]
