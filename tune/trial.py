"""One trial of a sweep, run by Ray Tune: a child MLflow run, then a TorchTrainer fitted to the end
(or until ASHA stops the trial). Imported only inside Ray processes and by the sweep driver."""

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from pipelines.tracking import log_params
from pipelines.train.driver import TrainSpec, build_trainer, prepare

from .space import apply

METRIC = "quick_fd"
TRIAL_TAG = "imf.tune.trial_id"


class EvalReport(TuneReportCallback):
    """Passes Tune only the evaluation reports (rank 0's, with quick_fd): ASHA ranks trials on them, and
    Tune refuses results that lack the metric it optimises. The loss curves go to MLflow."""

    def after_report(self, run_context, metrics, checkpoint):
        evaluated = [m for m in metrics if METRIC in m]
        if evaluated:
            super().after_report(run_context, evaluated[:1], checkpoint)


def run_trial(config: dict, setup: dict):
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

    trainer = build_trainer(spec, run, trial_id, setup["train_storage"], setup["tracking_uri"], run_id,
                            callbacks=[EvalReport()], checkpoint_score=(METRIC, "min"))
    try:
        trainer.fit()
    except TrainingFailedError:
        client.set_terminated(run_id, "FAILED")
        raise
    nonfinite = "nonfinite_step" in client.get_run(run_id).data.tags  # set by rank 0 when the loss blew up
    client.set_terminated(run_id, "FAILED" if nonfinite else "FINISHED")


def _short(value):
    return f"{value:.4g}" if isinstance(value, float) else value
