"""MLflow pyfunc flavour of an imf model ("models from code": this file is the model, no pickle).

    import mlflow, pandas as pd
    gen = mlflow.pyfunc.load_model("models:/NAME@champion")
    images = gen.predict(
        pd.DataFrame({"class": [1, 7, 3], "seed": [0, 0, 0], "index": [0, 1, 2]}))  # uint8 (N, H, W, 3)

Columns: class (required), seed and index (image `index` of the request `seed`: the same noise, hence
the same image, as image `index` of `imf sample --seed SEED`; default seed 0, index the row number),
omega, t_min, t_max, steps (default: the version's stored guidance). Needs torch, numpy, safetensors
(and diffusers for SD-VAE latents); imf_core travels with the model as code.
"""

from pathlib import Path

import mlflow
import numpy as np

COLUMNS = ("class", "seed", "index", "omega", "t_min", "t_max", "steps")


class IMFGenerator(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from imf_core import load_generator

        self.generator = load_generator(Path(context.artifacts["imf_model"]))

    def predict(self, context, model_input, params=None):
        rows = model_input if hasattr(model_input, "columns") else None
        if rows is None or "class" not in rows.columns:
            raise ValueError(f"input must be a table with a 'class' column (optional: {', '.join(COLUMNS[1:])})")
        unknown = sorted(set(rows.columns) - set(COLUMNS))
        if unknown:
            raise ValueError(f"unknown column(s) {unknown}: the columns are {', '.join(COLUMNS)}")
        n, g = len(rows), self.generator.guidance

        def column(name, default):
            return rows[name].to_numpy() if name in rows.columns else np.full(n, default)

        seeds = column("seed", 0).astype(np.int64)
        indices = rows["index"].to_numpy().astype(np.int64) if "index" in rows.columns else np.arange(n)
        steps = column("steps", g["steps"]).astype(int)
        out = [None] * n
        for seed, k in sorted({(int(s), int(k)) for s, k in zip(seeds, steps)}):
            picked = np.nonzero((seeds == seed) & (steps == k))[0]
            images = self.generator.images(
                seed, indices[picked], rows["class"].to_numpy()[picked],
                omega=column("omega", g["omega"])[picked].astype(np.float32),
                t_min=column("t_min", g["t_min"])[picked].astype(np.float32),
                t_max=column("t_max", g["t_max"])[picked].astype(np.float32), steps=k)
            for row, image in zip(picked, images.permute(0, 2, 3, 1).numpy()):
                out[row] = image if image.shape[-1] == 3 else np.repeat(image, 3, axis=-1)
        return np.stack(out)


mlflow.models.set_model(IMFGenerator())
