"""Stage 2, models: what a trained network is once it leaves training.

    artifact.py       a training checkpoint's EMA weights as a generator folder (imf_core.generator)
    registry.py       MLflow model registry: versions, aliases, metrics and lineage on a version,
                      `imf models` (list, show, promote, register, import-official)
    pyfunc_model.py   the MLflow pyfunc that travels with a version (code, not a pickle)

Training registers through here; sampling, evaluation and serving read versions through here.
"""
