"""The walkthrough's sweep (`imf tune --space tiny --trials 2 --max-steps 8 --evals 4`, run by the session's
walkthrough of docs/quickstart.md) of a Micro/2 on encoded digits: ASHA on quick_fd, MLflow parent/child runs,
registry. Its trials run one at a time in grid order, lr 0.003 then 1e-06, so ASHA judges the second against the
first."""

import json
from pathlib import Path

import pytest
from PIL import Image

MAX_STEPS, TRIALS = 8, 2  # quick_fd (and a checkpoint) every 2 steps: ASHA rungs at steps 2, 4 and 8


@pytest.mark.timeout(1500)
def test_a_small_sweep_stops_a_bad_trial_early_and_registers_the_best(walkthrough, tmp_path):
    from mlflow.tracking import MlflowClient

    folder, runs = walkthrough
    [tune] = [run for run in runs if run.step == "tune"]
    assert tune.returncode == 0, tune.stdout[-3000:] + tune.stderr[-3000:]
    assert f"--trials {TRIALS} --max-steps {MAX_STEPS} --evals 4 " in tune.text
    assert "running up to 1 trial(s) at a time" in tune.stdout  # no GPU: one trainer trial at a time

    uri = f"sqlite:///{folder}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    [parent] = [r for r in client.search_runs(experiments) if "imf.tune.space" in r.data.tags]
    sweep = parent.info.run_name
    assert parent.info.status == "FINISHED"
    assert parent.data.params["space.optim.lr"] == '{"grid": [0.003, 1e-06]}'
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == TRIALS

    curves = {}
    for run in children:
        curves[run.info.run_id] = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "quick_fd")]
        assert run.data.params["optim.lr"] in ("0.003", "1e-06") and "draws.omega_max" in run.data.params
        assert client.get_metric_history(run.info.run_id, "mse_u"), "workers log the loss curves to the child run"
    tags = {r.info.run_id: r.data.tags for r in children}
    outcome = {r.info.run_id: (tags[r.info.run_id]["imf.tune.outcome"], r.info.status) for r in children}
    stopped = [rid for rid, (o, _) in outcome.items() if o == "stopped early"]
    completed = [rid for rid, (o, _) in outcome.items() if o == "completed"]
    state = {rid: (*outcome[rid], tags[rid].get("imf.tune.stopped_at_step"), curves[rid]) for rid in outcome}
    assert stopped and completed and len(stopped) + len(completed) == TRIALS, state
    for rid in stopped:  # its MLflow curve may run past the judged step: the stop reaches the workers later
        judged = int(tags[rid]["imf.tune.stopped_at_step"])
        assert outcome[rid][1] == "KILLED" and judged < MAX_STEPS and curves[rid][-1][0] >= judged, state
    for rid in completed:
        assert outcome[rid][1] == "FINISHED" and [s for s, _ in curves[rid]] == [2, 4, 6, 8], state
    lr = {r.info.run_id: r.data.params["optim.lr"] for r in children}
    assert any(lr[rid] == "1e-06" for rid in stopped), (lr, state)  # the lr that cannot learn in 8 steps
    assert parent.data.metrics["trials_stopped_early"] == len(stopped)

    # The summary: a table (best first) and one plot of quick_fd against each swept parameter.
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"tune_summary.json", "tune_summary.csv", "quick_fd_vs_params.png"} <= artifacts
    summary = json.loads(Path(client.download_artifacts(parent.info.run_id, "tune_summary.json", str(tmp_path)))
                         .read_text())
    columns = summary["columns"]
    assert {"trial", "outcome", "quick_fd", "optim.lr", "draws.omega_max", "draws.time_sampler"} <= set(columns)
    rows = [dict(zip(columns, row)) for row in summary["data"]]
    assert len(rows) == TRIALS and rows[0]["quick_fd"] == min(r["quick_fd"] for r in rows)
    with Image.open(client.download_artifacts(parent.info.run_id, "quick_fd_vs_params.png", str(tmp_path))) as png:
        assert png.width >= 3 * 300  # one panel per swept parameter

    # The registry holds the best trial's best checkpoint, as challenger and (first version) champion.
    # Best among the reports Tune received (a stopped trial's late steps are not candidates).
    # The table rounds to 6 decimals; the value in the best run's own curve is the exact one.
    best_run = rows[0]["run_id"]
    matches = [v for _, v in curves[best_run] if v == pytest.approx(rows[0]["quick_fd"], abs=1e-6)]
    assert matches, (rows[0], curves[best_run])
    best_fd = matches[0]
    assert best_fd <= min(v for rid in completed for _, v in curves[rid]), (rows, state)  # Tune saw them all
    version = client.get_model_version_by_alias("imf-tiny", "challenger")
    assert client.get_model_version_by_alias("imf-tiny", "champion").version == version.version
    assert version.run_id == best_run == parent.data.tags["imf.tune.best_run_id"]
    assert float(version.tags["metric.quick_fd"]) == pytest.approx(best_fd)
    config = json.loads(version.tags["imf.train_config"])
    best = next(r for r in children if r.info.run_id == best_run)
    assert str(config["optim"]["lr"]) == best.data.params["optim.lr"] == "0.003"
    assert config["draws"]["omega_max"] == pytest.approx(float(best.data.params["draws.omega_max"]))
    assert config["train"]["eval_every"] == 2 and config["train"]["max_steps"] == MAX_STEPS

    # Four checkpoints per completed trial were written; each trial keeps its best and its latest. A stopped
    # trial may keep one more: the checkpoint its workers wrote after the last report that its controller (gone
    # when ASHA stopped it) registered, which Ray Train therefore never counted nor deleted.
    trial_dirs = [d for d in (folder / "imf_runs" / sweep / "train").iterdir() if d.is_dir()]
    assert len(trial_dirs) == TRIALS
    kept = {d.name: sorted(json.loads(p.read_text())["step"] for p in d.glob("checkpoint_*/progress.json"))
            for d in trial_dirs}
    finished = [steps for steps in kept.values() if MAX_STEPS in steps]
    assert len(finished) == len(completed) and all(1 <= len(steps) <= 2 for steps in finished), kept
    assert all(1 <= len(steps) <= 3 for steps in kept.values() if steps not in finished), kept
