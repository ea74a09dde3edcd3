"""MLflow pyfunc flavour of an imf model ("models from code": this file is the model, no pickle).

    import mlflow, pandas as pd
    gen = mlflow.pyfunc.load_model("models:/NAME@champion")
    images = gen.predict(pd.DataFrame({"class": [1, 207, 360], "seed": [0, 1, 2]}))  # uint8 (N, H, W, 3)

Optional columns: omega, t_min, t_max (default: the version's best guidance setting), steps
(default 1), seed (default: the row number). Needs torch, numpy, safetensors (and diffusers for
SD-VAE latents); imf_core travels with the model as code.
"""

import json
from pathlib import Path

import mlflow
import numpy as np
import torch


class IMFGenerator(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from imf_core import load_model
        from imf_core.codecs import codec_from_description

        folder = Path(context.artifacts["imf_model"])
        self.config = json.loads((folder / "config.json").read_text())
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.net = load_model(folder, device=self.device, v_head=False).eval()
        codec = self.config["codec"]
        vae = folder / "vae"
        self.codec = codec_from_description(codec, device=self.device, weights=str(vae) if vae.is_dir() else None)
        self.guidance = self.config.get("guidance", {})

    def predict(self, context, model_input, params=None):
        from imf_core import sample, to_uint8

        rows = model_input if hasattr(model_input, "columns") else None
        if rows is None or "class" not in rows.columns:
            raise ValueError("input must be a table with a 'class' column (and optional omega, t_min, t_max, "
                             "steps, seed columns)")
        n = len(rows)

        def column(name, default):
            return rows[name].to_numpy() if name in rows.columns else np.full(n, default)

        g = self.guidance
        omega = column("omega", g.get("omega", 1.0)).astype(np.float32)
        t_min = column("t_min", g.get("t_min", 0.0)).astype(np.float32)
        t_max = column("t_max", g.get("t_max", 1.0)).astype(np.float32)
        steps = column("steps", g.get("steps", 1)).astype(int)
        seeds = column("seed", 0) if "seed" in rows.columns else np.arange(n)
        shape = self.config["latent_shape"]
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        labels = torch.as_tensor(rows["class"].to_numpy(), dtype=torch.long, device=self.device)
        out = np.zeros((n, *self._image_shape()), dtype=np.uint8)
        for k in np.unique(steps):
            rows_k = np.nonzero(steps == k)[0]
            idx = torch.as_tensor(rows_k)
            z = sample(self.net, noise[idx].to(self.device), labels[idx.to(self.device)],
                       omega=torch.as_tensor(omega[rows_k]), t_min=torch.as_tensor(t_min[rows_k]),
                       t_max=torch.as_tensor(t_max[rows_k]), steps=int(k))
            images = to_uint8(self.codec.decode(z)).permute(0, 2, 3, 1).cpu().numpy()
            out[rows_k] = images if images.shape[-1] == 3 else np.repeat(images, 3, axis=-1)
        return out

    def _image_shape(self):
        side = self.config["resolution"]
        return (side, side, 3)


mlflow.models.set_model(IMFGenerator())
