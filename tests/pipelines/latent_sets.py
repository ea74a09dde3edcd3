"""A latent set as `imf encode` writes it (manifest.json + shards/*.parquet, pipelines/data/shards.py), made
without Ray or a codec: random moments of a given shape, for tests that need a valid set or a damaged one."""

import json
from pathlib import Path

import numpy as np

from pipelines.data.shards import MANIFEST, moments_array, shard_path, shard_table, write_shard


def write_latent_set(folder: Path, latent_shape=(1, 8, 8), shards=2, rows=16, classes=4, flip=False,
                     resolution=None, seed=0) -> Path:
    """`shards` shards of `rows` rows each, labels cycling over `classes`; resolution: the --resolution it claims
    (default: the latent side, as the pixels codec)."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    codec = {"codec": "pixels", "weights": "", "channels": latent_shape[0]}
    common = {"codec": codec, "resolution": resolution or latent_shape[1], "crop": "adm-center",
              "latent_shape": list(latent_shape), "flip": flip, "class_names": [str(c) for c in range(classes)]}
    names = []
    for k in range(shards):
        index = np.arange(k * rows, (k + 1) * rows)
        mean = rng.standard_normal((rows, *latent_shape)).astype(np.float32)
        std = np.full_like(mean, 0.05)
        flipped = moments_array(mean[..., ::-1], std) if flip else None
        meta = {**common, "shard": k, "encoded": rows, "rejects": [], "stats": {}}
        write_shard(shard_path(folder, k), shard_table(index, index % classes, moments_array(mean, std), flipped, meta))
        names.append(f"shards/shard-{k:05d}.parquet")
    manifest = {"format": "imf-latents/1", "dataset": "test-latents", **common, "num_classes": classes,
                "shard_size": rows, "counts": {"encoded": shards * rows, "rejected": 0, "files": shards * rows},
                "rejects": [], "latent_stats": {"mean": [0.0] * latent_shape[0], "std": [1.0] * latent_shape[0]},
                "shards": names}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return folder
