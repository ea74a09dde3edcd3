"""Stage 1, data: images in, latents out.

    images.py   class-folder trees (ImageNet's train layout), decoding with ADM's centre crop, grey to RGB,
                sample grids as PNG
    digits.py   the embedded dataset (scikit-learn's digits, train / held-out test split) and `imf data`
    encode.py   `imf encode`: a Ray Data job from an image tree to latent Parquet shards, resumable
    shards.py   the shard format, the manifest, and the reader training uses

A new codec goes into imf_core.codecs (its CODECS registry); a new input layout into images.py.
"""
