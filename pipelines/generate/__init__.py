"""Stage 4, generation: `imf sample` makes large image sets from a registered model with Ray Data
(sample.py); the images of (seed, index) come from imf_core.Generator, as in the pyfunc."""
