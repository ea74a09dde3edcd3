"""The one place imf relies on torch-fidelity (0.4.0) beyond its public API.

- bare_submodule (`fidelity_module`): torch-fidelity is installed without its dependencies (`pip install --no-deps
  torch-fidelity`): its package __init__ imports torchvision for other extractors, and torchvision's PyPI wheels
  do not load beside the CPU build of torch. Its Inception-v3 module needs only torch, and the package offers no
  way to import it alone, so it is imported with an empty package object in sys.modules for the moment of the
  import. tests/test_seams.py checks the module is there; tests/pipelines/evaluation/test_evaluate.py runs it.
"""

import importlib
import importlib.util
import sys

from ..errors import UserError


def fidelity_module(name: str):
    """torch_fidelity.<name>, imported without running torch_fidelity/__init__.py."""
    full = f"torch_fidelity.{name}"
    if full in sys.modules:
        return sys.modules[full]
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None:
        raise UserError("torch-fidelity is not installed: run `pip install --no-deps torch-fidelity==0.4.0` "
                        "(--no-deps: its torchvision requirement would replace this torch)")
    bare = "torch_fidelity" not in sys.modules
    if bare:  # an empty package object with the right __path__; its __init__ never runs
        sys.modules["torch_fidelity"] = importlib.util.module_from_spec(spec)
    try:
        return importlib.import_module(full)
    finally:
        if bare:
            del sys.modules["torch_fidelity"]
