"""Exponential moving averages of a network's parameters, any number of decays."""

import torch


class EMA:
    def __init__(self, model: torch.nn.Module, decays=(0.9999,)):
        self.decays = tuple(float(d) for d in decays)
        for d in self.decays:
            if not 0.0 <= d < 1.0:
                raise ValueError(f"EMA decay {d} must lie in [0, 1)")
        params = self._params(model)
        self.shadows = {d: {k: p.detach().clone().float() for k, p in params.items()} for d in self.decays}

    @staticmethod
    def _params(model):
        return {k: p for k, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int | None = None):
        """shadow <- d shadow + (1 - d) param; with `step`, d is capped at (1 + step) / (10 + step)
        so that short runs are not dominated by the initial weights."""
        params = self._params(model)
        for d, shadow in self.shadows.items():
            if step is not None:
                d = min(d, (1.0 + step) / (10.0 + step))
            keys = list(shadow)
            torch._foreach_lerp_(
                [shadow[k] for k in keys], [params[k].detach().float() for k in keys], 1.0 - d
            )

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module, decay: float | None = None):
        """Load the averaged weights of `decay` (default: the first) into `model`."""
        shadow = self.shadows[self.decays[0] if decay is None else decay]
        for k, p in self._params(model).items():
            p.copy_(shadow[k].to(p.dtype))

    def state_dict(self) -> dict:
        """Flat {"ema_<decay>/<param name>": tensor} mapping, ready for safetensors."""
        return {f"ema_{d}/{k}": v for d, shadow in self.shadows.items() for k, v in shadow.items()}

    def load_state_dict(self, state: dict):
        for d, shadow in self.shadows.items():
            for k in shadow:
                key = f"ema_{d}/{k}"
                if key not in state:
                    raise KeyError(f"EMA state lacks {key!r}: saved with other decays or another network")
                shadow[k].copy_(state[key])
