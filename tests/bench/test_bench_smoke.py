"""Each benchmark runs once at a tiny size and prints its side-by-side ratios (no thresholds)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(900)


def run(*argv):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_train_step_bench():
    out = run("bench/train_step.py", "--device", "cpu", "--threads", "1", "--model", "Micro/2", "--input-size", "8",
              "--num-classes", "10", "--batch", "8", "--warmup", "1", "--repeats", "1", "--steps", "1",
              "--which", "fm,ref,fast,fd")
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith(("| fm ", "| fast ", "| fd "))]
    assert len(rows) == 3 and all(float(row[4]) > 0 for row in rows)  # activations per image, measured
    assert "check fd vs ref" in out and "fd / ref" in out


def test_tangent_accuracy_bench():
    out = run("bench/tangent_accuracy.py", "--step-sizes", "1e-2", "--b2-shape", "hidden_size=32,num_heads=2",
              "--batch", "2")
    assert out.count("| FD fp32 | 1e-02 (default) |") == 2 and out.count("| bf16 | finite difference | fp32 |") == 2


def test_sample_bench():
    out = run("bench/sample.py", "--device", "cpu", "--threads", "1", "--model", "Micro/2", "--input-size", "8",
              "--num-classes", "10", "--batch", "8", "--decode-batch", "8", "--vae", "tiny", "--repeats", "1",
              "--iters", "1")
    assert "authors" in out and "ours" in out


def test_toy_objectives_bench():
    out = run("bench/toy_objectives.py", "--steps", "30")
    assert all(name in out for name in ("iMF (aux v-head)", "MeanFlow", "flow matching"))


def test_encode_bench(tmp_path):
    out = run("bench/encode.py", "--count", "64", "--workers", "1", "--shard-size", "32")
    assert "ratio Ray / bare" in out and "after the first shard" in out and "ratio S3 / local" in out


def test_serve_bench():
    out = run("bench/serve.py", "--model", "Micro/2", "--input-size", "8", "--clients", "1,4", "--repeats", "1",
              "--requests", "2")
    assert "single-client latency overhead" in out and "serve / direct batched" in out
