"""Distributed training on Ray Train (2 CPU workers, gloo), tracked in a local MLflow store. The streamed
reference run (`whole`) is made once in conftest.py; a run resumed from it is checked in test_train_s3.py."""

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from imf_core import draw_step, step_generator
from imf_core.draws import StepDraws
from pipelines import cli
from pipelines.config import load_config
from pipelines.data.shards import read_manifest, shard_files, to_training_batch
from pipelines.train.state import TrainState
from tests.pipelines.train_helpers import batch_log, train, write_config

pytestmark = pytest.mark.timeout(600)


def rows_by_index(latents):
    table = pq.ParquetDataset(shard_files(latents)).read()
    index = table.column("index").to_pylist()
    return {i: n for n, i in enumerate(index)}, table


def reference_params(latents, config_path, debug, steps, workers=2):
    """One process stepping on the concatenation of the workers' batches with their draws."""
    cfg = load_config(config_path)
    manifest = read_manifest(latents)
    shape = tuple(manifest["latent_shape"])
    state = TrainState(cfg, shape, manifest["num_classes"], "cpu", with_ema=False)
    position, table = rows_by_index(latents)
    logs = [{e["step"]: e["index"] for e in batch_log(debug, r)} for r in range(workers)]
    local = cfg.train.batch_size // workers
    for step in range(steps):
        xs, ys, draws = [], [], []
        for rank in range(workers):
            rows = [position[i] for i in logs[rank][step]]
            sub = table.take(rows)
            batch = {"index": torch.tensor(sub.column("index").to_pylist()),
                     "label": torch.tensor(sub.column("label").to_pylist()),
                     "moments": torch.tensor(sub.column("moments").to_pylist(), dtype=torch.float32)}
            x, y = to_training_batch(batch, step_generator(cfg.train.seed, step, rank, stream=1), shape, False)
            xs.append(x), ys.append(y)
            draws.append(draw_step(local, shape, state.draw_cfg, step_generator(cfg.train.seed, step, rank)))
        joined = StepDraws(**{f: torch.cat([getattr(d, f) for d in draws]) for f in vars(draws[0])})
        state.step(torch.cat(xs), torch.cat(ys), joined, cfg.optim.lr)
    return state.model.state_dict()


def test_two_workers_stay_in_sync_and_equal_one_worker_on_the_joined_batch(latents, whole):
    from mlflow.tracking import MlflowClient

    tmp, config = whole
    debug = tmp / "debug"
    p0 = load_file(str(debug / "params_rank0.safetensors"))
    p1 = load_file(str(debug / "params_rank1.safetensors"))
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    rows = [set(i for e in batch_log(debug, r)[:4] for i in e["index"]) for r in (0, 1)]
    assert not rows[0] & rows[1]  # each worker reads its own shard of the data

    expected = reference_params(latents, config, debug, steps=6)
    moved = 0.0
    start = TrainState(load_config(config), (3, 8, 8), 4, "cpu", with_ema=False).model.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(p0[k], v, rtol=1e-5, atol=1e-6)
        moved = max(moved, float((v - start[k]).abs().max()))
    assert moved > 1e-4  # the comparison is between trained weights, not the initial ones

    # MLflow, from rank 0: config as params, loss parts and throughput as metrics, grids, checkpoints.
    run_id = json.loads((tmp / "runs" / "whole" / "imf_run.json").read_text())["mlflow_run_id"]
    client = MlflowClient(f"sqlite:///{tmp}/runs/mlflow.db")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.001" and run.data.params["draws.omega_max"] == "8.0"
    for metric in ("mse_u", "mse_v", "weighted_loss", "weighted_loss_u", "weighted_loss_v", "grad_norm", "lr",
                   "img_per_s", "sec_per_kimg", "peak_mem_gb"):
        assert metric in run.data.metrics, metric
    assert [m.step for m in client.get_metric_history(run_id, "mse_u")] == [1, 2, 3, 4, 5, 6]
    grids = [a.path for a in client.list_artifacts(run_id, "samples/step_0000006")]
    assert grids == ["samples/step_0000006/omega_1.png", "samples/step_0000006/omega_2.png"]
    assert Path(run.data.tags["checkpoint.latest"], "model", "model.safetensors").is_file()


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(latents, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", max_steps=20, checkpoint_every=1)
    text = config.read_text().replace("lr: 0.001", "lr: 1.0e+30")
    config.write_text(text)
    status = train(latents, config, tmp_path / "runs", "nan", workers=1)
    out = capsys.readouterr().out
    assert status == 3
    found = re.search(r"NaN/Inf at step (\d+); last good checkpoint: (\S+)\. ", out)
    assert found, out
    step, latest = int(found.group(1)), found.group(2)
    progress = json.loads(Path(latest, "progress.json").read_text())
    assert progress["step"] == step  # the checkpoint before the bad step, written intact
    weights = load_file(str(Path(latest, "model", "model.safetensors")))
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_bad_inputs_are_refused_before_any_worker_starts(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", batch_size=10)
    assert cli.main(["train", "--data", str(tmp_path / "none"), "--config", str(config)]) == 2
    assert "data folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["train", "--data", str(empty), "--config", str(config), "--workers", "3"]) == 2
    assert "not divisible by --workers 3" in capsys.readouterr().err
    assert cli.main(["train", "--data", str(empty), "--config", str(config), "--model", "Z/9"]) == 2
    assert "unknown" in capsys.readouterr().err
