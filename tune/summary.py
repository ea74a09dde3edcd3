"""After a sweep: one row per trial, the child runs closed with their outcome, and the parent run's
summary table and plot of the metric against each swept parameter."""

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .trial import METRIC, TRIAL_TAG


@dataclass
class TrialRow:
    trial_id: str
    params: dict
    outcome: str  # completed | stopped early | failed
    last_step: int | None = None
    best: dict = field(default_factory=dict)  # the evaluation report with the lowest metric
    checkpoint: str | None = None  # the checkpoint saved with that report
    run_id: str | None = None
    error: str = ""

    @property
    def score(self) -> float:
        return self.best.get(METRIC, math.inf)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def trial_rows(results, expected_steps) -> list[TrialRow]:
    """`expected_steps(params)`: the step a trial with those settings would end at if never stopped."""
    rows = []
    for result in results:
        params = (result.config or {}).get("params", {})
        frame = result.metrics_dataframe
        reports = frame.to_dict("records") if frame is not None and len(frame) else []
        trial_id = (result.metrics or {}).get("trial_id") or (reports[0]["trial_id"] if reports else "?")
        evaluated = [r for r in reports if _finite(r.get(METRIC))]
        row = TrialRow(trial_id, params, "completed")
        if reports:
            row.last_step = int(max(r.get("step", 0) for r in reports))
        if evaluated:
            best = min(evaluated, key=lambda r: r[METRIC])
            row.best = {k: v for k, v in best.items() if k == "step" or k.startswith("quick_")}
            with_checkpoint = [r for r in evaluated if isinstance(r.get("checkpoint_path"), str)]
            if with_checkpoint:
                row.checkpoint = min(with_checkpoint, key=lambda r: r[METRIC])["checkpoint_path"]
        if result.error is not None:
            row.outcome, row.error = "failed", str(result.error).strip().splitlines()[-1][:300]
        elif row.last_step is None or row.last_step < expected_steps(params):
            row.outcome = "stopped early"
        rows.append(row)
    return rows


def close_child_runs(client, experiment_id: str, parent_run_id: str, rows: list[TrialRow]):
    """Tag each child run with its trial's outcome. A trial ASHA stops early, or one whose actor died, cannot
    close its own run: runs left RUNNING end as FINISHED, KILLED (ASHA) or FAILED."""
    by_trial = {r.trial_id: r for r in rows}
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=10000)
    for run in children:
        row = by_trial.get(run.data.tags.get(TRIAL_TAG))
        outcome = row.outcome if row else "failed"
        if run.info.status == "FAILED":  # the trial closed its own run so (a non-finite loss, say)
            outcome = "failed"
        if row:
            row.run_id, row.outcome = run.info.run_id, outcome
        client.set_tag(run.info.run_id, "imf.tune.outcome", outcome)
        if outcome == "stopped early" and row and row.last_step is not None:
            # Tune stops a trial some time after the report that decided it: its workers may have logged a
            # few more steps to this run by then. This is the step ASHA judged it at.
            client.set_tag(run.info.run_id, "imf.tune.stopped_at_step", str(row.last_step))
        if run.info.status == "RUNNING":
            status = {"completed": "FINISHED", "stopped early": "KILLED"}.get(outcome, "FAILED")
            history = client.get_metric_history(run.info.run_id, METRIC)
            client.set_terminated(run.info.run_id, status, end_time=max((m.timestamp for m in history), default=None))


def _cell(value):
    if isinstance(value, float):
        return round(value, 6)
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value


def table(rows: list[TrialRow], keys: list[str]) -> dict:
    """Column name -> values, best trial first."""
    ordered = sorted(rows, key=lambda r: r.score)
    columns = {"trial": [r.trial_id for r in ordered], "outcome": [r.outcome for r in ordered],
               "last_step": [r.last_step for r in ordered],
               METRIC: [_cell(r.score) if _finite(r.score) else None for r in ordered],
               "best_step": [r.best.get("step") for r in ordered],
               "best_omega": [r.best.get("quick_fd_best_omega") for r in ordered],
               "run_id": [r.run_id for r in ordered]}
    for key in keys:
        columns[key] = [_cell(r.params.get(key)) for r in ordered]
    return columns


def _label(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def plot(rows: list[TrialRow], keys: list[str], out: Path) -> Path:
    """One panel per swept parameter: each trial's best metric against its value (categories for non-numbers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in rows if _finite(r.score)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), squeeze=False)
    styles = {"completed": ("o", "tab:blue"), "stopped early": ("x", "tab:orange"), "failed": ("s", "tab:red")}
    for ax, key in zip(axes[0], keys):
        values = [r.params.get(key) for r in scored]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        labels = sorted({_label(v) for v in values}) if not numeric else []
        for outcome, (marker, color) in styles.items():
            picked = [(v, r.score) for v, r in zip(values, scored) if r.outcome == outcome]
            if picked:
                xs = [v if numeric else labels.index(_label(v)) for v, _ in picked]
                ax.scatter(xs, [s for _, s in picked], marker=marker, color=color, label=outcome)
        if not numeric:
            ax.set_xticks(range(len(labels)), labels, rotation=20)
        elif values and min(values) > 0 and max(values) > 100 * min(values):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(f"best {METRIC} (lower is better)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def log_summary(client, parent_run_id: str, rows: list[TrialRow], keys: list[str]) -> str:
    """Log the table (MLflow table + CSV) and the plot to the parent run; returns the printable table."""
    columns = table(rows, keys)
    client.log_table(parent_run_id, data=columns, artifact_file="tune_summary.json")
    frame = pd.DataFrame(columns)
    text = frame.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.6g}")
    with tempfile.TemporaryDirectory(prefix="imf_tune_") as tmp:
        csv_path = Path(tmp) / "tune_summary.csv"
        frame.to_csv(csv_path, index=False)
        client.log_artifact(parent_run_id, str(csv_path))
        client.log_artifact(parent_run_id, str(plot(rows, keys, Path(tmp) / f"{METRIC}_vs_params.png")))
    stopped = sum(r.outcome == "stopped early" for r in rows)
    failed = sum(r.outcome == "failed" for r in rows)
    metrics = {"trials": len(rows), "trials_stopped_early": stopped, "trials_failed": failed}
    best = min(rows, key=lambda r: r.score, default=None)
    if best is not None and _finite(best.score):
        metrics[f"best_{METRIC}"] = best.score
    for key, value in metrics.items():
        client.log_metric(parent_run_id, key, value)
    return text
