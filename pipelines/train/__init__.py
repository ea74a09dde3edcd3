"""Stage 3, training on Ray Train.

    driver.py     `imf train`: TrainSpec, checks before Ray starts, the MLflow run, the TorchTrainer
    worker.py     the per-worker loop: batches in, TrainState.step, reports, checkpoints
    state.py      TrainState: network, objective, optimiser, EMA; step() and the checkpoint format
    batches.py    a worker's batches (in memory for small latent sets, streamed through Ray Data otherwise)
    schedule.py   run length in steps and when to log, evaluate, checkpoint
    monitors.py   rank 0's sample grids and quick_fd, from the EMA network
    progress.py   rank 0's progress line

`tune` builds the same TrainSpec for each trial.
"""
