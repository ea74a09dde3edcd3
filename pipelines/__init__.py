"""The imf pipeline: each stage a subpackage, in the order data flows through them.

    data/        image trees, the embedded digits, `imf encode` to latent shards, the shard format
    models/      the model artifact (a training checkpoint as a generator folder) and the MLflow registry
    train/       `imf train`: driver, per-worker loop, TrainState.step, batches, schedule, monitors
    generate/    `imf sample`: batch generation on Ray Data
    evaluation/  metrics over image sets, Inception, references, `imf evaluate` and its guidance sweep
    serve/       `imf serve`: a Ray Serve application answering HTTP requests for images (batched, replicated)
    ops/         `imf submit` / `imf jobs` (Ray Jobs) and `imf demo`

Shared by every stage, at this level: cli (the command line and its shared flags), config (the
training config), yaml_files (every YAML file read strictly), runtime (Ray start-up), tracking (MLflow),
storage (atomic writes), progress (progress lines), metrics (the formulas), errors. A stage imports only
stages above it in this list (data < models < train < generate < evaluation < serve < ops) and the shared
modules; `tune` (a package beside this one) sits on top. The method itself is `imf_core`, which imports none of this.
"""
