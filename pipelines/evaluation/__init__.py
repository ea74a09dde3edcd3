"""Stage 5, evaluation: scores of image sets against references.

    image_sets.py   reading sample and reference sets (npz, Parquet, image files), sample grids
    inception.py    torch-fidelity's Inception-v3 from a local weights file
    scoring.py      references, the metrics each allows, metric names by protocol
    evaluate.py     `imf evaluate` (and `reference`): scores logged to MLflow and to the model version
    sweep.py        `imf evaluate sweep`: one model at many guidance settings; the best stored on the version

The metric formulas are pipelines/metrics.py (training's quick_fd uses them too).
"""
