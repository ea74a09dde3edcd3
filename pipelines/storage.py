"""Files the steps write: atomically (a temporary name, then a rename), so that a killed run never leaves
a half-written file where a reader looks."""

import json
from pathlib import Path

from imf_core.checkpoint import write_atomic

__all__ = ["write_atomic", "write_json"]


def write_json(path, data: dict) -> Path:
    text = json.dumps(data, indent=1) + "\n"
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))
