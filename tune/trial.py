"""One trial of a sweep, run by Ray Tune: a child MLflow run, then a TorchTrainer fitted to the end
(or until ASHA stops the trial). Imported only inside Ray processes and by the sweep driver."""

import logging

from ray import tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

from pipelines import ray_seams
from pipelines.tracking import log_params
from pipelines.train.driver import TrainSpec, build_trainer, prepare, run_status_actor
from pipelines.train.schedule import total_steps

from .space import apply

METRIC = "quick_fd"
TRIAL_TAG = "imf.tune.trial_id"


class EvalReport(TuneReportCallback):
    """Passes Tune only the evaluation reports (rank 0's, with quick_fd): ASHA ranks trials on them, and
    Tune refuses results that lack the metric it optimises. The loss curves go to MLflow.

    The last step's report is held back: Tune ends a trial as soon as it sees step max_t, and a trial ended
    while Ray Train still shuts its workers down makes the controller print a traceback (the workers died
    with their owner). run_trial sends that report itself once fit() has returned."""

    def __init__(self, last_step: int):
        super().__init__()
        self.last_step = last_step

    def holds_back(self, report: dict) -> bool:
        return METRIC in report and report.get("step", 0) >= self.last_step

    def after_report(self, run_context, metrics, checkpoint):
        evaluated = [m for m in metrics if METRIC in m]
        if evaluated and not self.holds_back(evaluated[0]):
            super().after_report(run_context, evaluated[:1], checkpoint)


class QuietTeardown(ray_seams.controller_callback_class()):
    """Runs in the trial's Train controller. When ASHA stops a trial, Tune ends the trial's actor, which owns
    the controller and through it the workers: the controller's shutdown then finds its workers dead with
    their owner, and Ray logs that with a traceback it calls expected. Only that record is dropped; a worker
    that crashed on its own is still logged (and fails the trial)."""

    LOGGER = ray_seams.BACKEND_SETUP_LOGGER

    def after_controller_start(self, train_run_context):
        logging.getLogger(self.LOGGER).addFilter(owner_died_filter)


def owner_died_filter(record: logging.LogRecord) -> bool:
    return not ray_seams.owner_died(record.exc_info[1] if record.exc_info else None)


def run_trial(config: dict, setup: dict):
    import ray
    from mlflow.tracking import MlflowClient
    from ray.train import TrainingFailedError

    point = config["params"]
    spec = TrainSpec(**{**setup["spec"], "raw": apply(setup["base"], point)})
    run = prepare(spec)
    trial_id = tune.get_context().get_trial_id()
    client = MlflowClient(setup["tracking_uri"], registry_uri=setup["tracking_uri"])
    swept = ", ".join(f"{k}={_short(v)}" for k, v in point.items())
    run_id = client.create_run(setup["experiment_id"], run_name=f"{setup['sweep']}-{trial_id}", tags={
        "mlflow.parentRunId": setup["parent_run_id"], TRIAL_TAG: trial_id, "imf.tune.sweep": setup["sweep"],
        "imf.model": run.cfg.model.name,
        "mlflow.note.content": f"Trial {trial_id} of sweep {setup['sweep']}: {swept}."}).info.run_id
    log_params(client, run_id, {**run.cfg.flat(), "workers": spec.workers, "data": spec.data})
    print(f"trial {trial_id}: {swept}; MLflow run {run_id}", flush=True)

    report = EvalReport(last_step=total_steps(run.cfg, run.num_rows, spec.workers)[1])
    status = run_status_actor()  # rank 0 tells it a non-finite loss, as in `imf train`
    trainer = build_trainer(spec, run, trial_id, setup["train_storage"], setup["tracking_uri"], run_id,
                            callbacks=[report, QuietTeardown()], checkpoint_score=(METRIC, "min"), status=status)
    try:
        result = trainer.fit()
    except TrainingFailedError:
        client.set_terminated(run_id, "FAILED")
        raise
    failed_read = ray.get(status.read_failure.remote())  # a shard damaged during the trial (read_guard.py)
    if failed_read is not None:
        print(f"trial {trial_id}: {failed_read}", flush=True)
    failed = failed_read is not None or ray.get(status.nonfinite.remote()) is not None
    client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
    if result.checkpoint and report.holds_back(result.metrics or {}):
        tune.report({**result.metrics, CHECKPOINT_PATH_KEY: result.checkpoint.path})


def _short(value):
    return f"{value:.4g}" if isinstance(value, float) else value
