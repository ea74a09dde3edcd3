"""Shared pieces of the training tests: a tiny encoded dataset and config files."""

import contextlib
import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from pipelines import cli, hooks
from tests.run_hooks import hooks_file


def digits_tree(root: Path, classes=4, per_class=16) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        images = digits.images[digits.target == c][:per_class]
        for i, image in enumerate(images):
            Image.fromarray((image * 255 / 16).astype(np.uint8), "L").save(folder / f"{i:03d}.png")
    return root


def encoded_digits(tmp: Path) -> Path:
    images = digits_tree(tmp / "images")
    out = tmp / "latents"
    assert cli.main(["encode", "--images", str(images), "--out", str(out), "--codec", "pixels",
                     "--resolution", "8"]) == 0
    return out


def write_config(path: Path, **train) -> Path:
    cfg = {
        "model": {"name": "Micro/2"},
        "optim": {"lr": 1e-3, "warmup_epochs": 0},
        "train": {"batch_size": 16, "max_steps": 3, "log_every": 1, "checkpoint_every": 3,
                  "ema_decays": [0.99], "shuffle_buffer": 32, **train},
        "sampling": {"omegas": [1.0, 2.0], "t_min": 0.0, "t_max": 1.0, "per_class": 2},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def train(latents, config, storage, name, workers=2, debug=None, extra=(), tracking_uri=None):
    """`imf train` in this process; the MLflow store is storage/mlflow.db unless tracking_uri is given (a bucket's
    storage needs one). debug: a folder where the tests' hooks record pids, batches and final weights
    (tests/run_hooks.py)."""
    argv = ["train", "--data", str(latents), "--config", str(config), "--workers", str(workers),
            "--storage", str(storage), "--name", name,
            "--tracking-uri", tracking_uri or f"sqlite:///{storage}/mlflow.db", *extra]
    with hooks.installed(hooks_file(debug)) if debug is not None else contextlib.nullcontext():
        return cli.main(argv)


def batch_log(debug: Path, rank: int) -> list[dict]:
    path = debug / f"batches_rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
