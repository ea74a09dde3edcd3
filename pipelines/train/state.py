"""What one training worker holds, how it steps, and how it goes to and from disk.

`TrainState.step(x, y, draws)` is one optimiser step: forward and backward of the objective,
gradient synchronisation, the optimiser and the EMA. Synchronisation is explicit:
`torch.func.jvp` runs on the bare module, so a DistributedDataParallel wrapper's hooks would be
bypassed. After backward, every rank all-reduces one flat buffer of gradients (plus its loss, so
that a non-finite loss anywhere stops every rank at the same step).

A checkpoint folder (what `save` writes and `load` and `pipelines.models` read):
    model/               the online network (imf_core.save_model: model.safetensors + config.json,
                         whose config also holds the training config and the dataset summary)
    ema.safetensors      {"ema_<decay>/<param>": tensor}, metadata "decays"
    optimizer.safetensors + optimizer.json    AdamW state (tensors + layout)
    progress.json        step, epoch, batch_in_epoch, images_seen (+ the data folder)
"""

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from imf_core import (
    EMA,
    FastIMFObjective,
    FlowMatchingObjective,
    IMFObjective,
    MeanFlowObjective,
    build_model,
    save_model,
)
from imf_core.checkpoint import load_strict, save_tensors

from ..config import TrainConfig


def make_objective(cfg: TrainConfig, num_classes: int):
    o = cfg.objective
    weighting = dict(norm_p=o.norm_p, norm_eps=o.norm_eps)
    du_dt = dict(jvp_step=o.jvp_step, jvp_precision=o.jvp_precision)
    if o.kind == "imf" and o.fast:
        jvp = "auto" if o.jvp == "forward_ad" else o.jvp  # auto: the fastest forward-mode AD for the network
        return FastIMFObjective(num_classes, tangent=o.tangent, jvp=jvp, **weighting, **du_dt)
    if o.kind == "imf":
        return IMFObjective(num_classes, tangent=o.tangent, jvp=o.jvp, **weighting, **du_dt)
    if o.kind == "mf":
        return MeanFlowObjective(num_classes, omega=o.mf_omega, kappa=o.mf_kappa, jvp=o.jvp, **weighting, **du_dt)
    return FlowMatchingObjective(num_classes, guided=o.fm_guided, tangent=o.tangent, **weighting)


@dataclass
class Progress:
    """Where a run stands; only `advance` and `next_epoch` move it."""
    step: int = 0  # optimiser steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    images_seen: int = 0

    def advance(self, images: int):
        """One optimiser step taken on a global batch of `images`."""
        self.step += 1
        self.batch_in_epoch += 1
        self.images_seen += images

    def next_epoch(self):
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0


@dataclass
class StepResult:
    metrics: dict  # mse_u, mse_v (readable curves), weighted losses, grad_norm, lr
    finite: bool  # the loss, averaged over ranks, was finite: the step was taken (every rank decides the same)


class TrainState:
    def __init__(self, cfg: TrainConfig, latent_shape, num_classes: int, device, with_ema: bool = True):
        C, H, W = latent_shape
        if H != W:
            raise ValueError(f"latent shape {latent_shape} is not square; imfDiT needs H == W")
        self.cfg, self.device = cfg, torch.device(device)
        needs_v = cfg.objective.kind != "mf" and cfg.objective.tangent == "aux"
        weights = torch.Generator().manual_seed(cfg.train.seed)  # the same initial weights on every rank and run
        self.model = build_model(cfg.model.name, weights, input_size=H, in_channels=C, num_classes=num_classes,
                                 v_head=needs_v, **cfg.model.overrides).to(self.device)
        self.objective = make_objective(cfg, num_classes)
        self.draw_cfg = cfg.draw_config()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                           weight_decay=cfg.optim.weight_decay)
        self.ema = EMA(self.model, cfg.train.ema_decays) if with_ema else None
        self.progress = Progress()

    def autocast(self):
        if self.device.type == "cuda" and self.cfg.train.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def learning_rate(self, steps_per_epoch: int) -> float:
        warmup = self.cfg.optim.warmup_epochs * steps_per_epoch
        if warmup <= 0:
            return self.cfg.optim.lr
        return self.cfg.optim.lr * min(1.0, (self.progress.step + 1) / warmup)

    def loss(self, x, y, draws):
        with self.autocast():
            return self.objective(self.model, x, y, draws)

    def step(self, x, y, draws, lr: float) -> StepResult:
        """One optimiser step on this rank's batch; every rank must call it equally often. The metrics: the
        readable curves mse_u/mse_v (unweighted), the adaptive-weighted loss that is optimised (it sits near 2
        by construction; averaged over ranks), grad norm and lr. A non-finite loss on any rank leaves the
        weights and the progress as they were, on every rank (`finite` is False)."""
        out = self.loss(x, y, draws)
        out.loss.backward()
        mean_loss, grad_norm = self.apply_gradients(out.loss, lr)
        finite = math.isfinite(mean_loss)
        if finite:
            self.progress.advance(self.cfg.train.batch_size)
            if self.ema is not None:
                self.ema.update(self.model, self.progress.step if self.cfg.train.ema_warmup else None)
        parts = out.metrics()
        return StepResult({"mse_u": parts["mse_u"], "mse_v": parts["mse_v"], "weighted_loss": mean_loss,
                           "weighted_loss_u": parts["loss_u"], "weighted_loss_v": parts["loss_v"],
                           "grad_norm": grad_norm, "lr": lr}, finite)

    def apply_gradients(self, loss_value: torch.Tensor, lr: float) -> tuple[float, float]:
        """Average gradients (and the loss) over ranks, clip if asked, step the optimizer unless the mean loss is
        not finite. Returns (mean loss, grad norm)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [loss_value.detach().float().reshape(1)])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
        mean_loss = float(flat[-1])
        if not torch.isfinite(flat[-1]):
            self.optimizer.zero_grad(set_to_none=True)
            return mean_loss, float("nan")
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(p).to(p.dtype)
            offset += g.numel()
        max_norm = self.cfg.optim.grad_clip or float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return mean_loss, grad_norm

    def broadcast_parameters(self):
        """Make every rank start from rank 0's weights."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for p in self.model.parameters():
                dist.broadcast(p.data, src=0)

    # ---- disk -------------------------------------------------------------------------------

    def save(self, directory, extra: dict | None = None):
        """model/ (safetensors + config.json, loadable by imf_core.load_model), ema, optimizer, progress."""
        directory = Path(directory)
        save_model(directory / "model", self.model, extra={"train_config": self.cfg.to_dict(), **(extra or {})})
        extra = {k: v for k, v in (extra or {}).items() if k not in ("dataset",)}
        if self.ema is not None:
            save_tensors(directory / "ema.safetensors", self.ema.state_dict(),
                         metadata={"decays": json.dumps(list(self.ema.decays))})
        tensors, layout = _flatten_optimizer(self.optimizer.state_dict())
        save_tensors(directory / "optimizer.safetensors", tensors)
        (directory / "optimizer.json").write_text(json.dumps(layout))
        (directory / "progress.json").write_text(json.dumps(vars(self.progress) | extra))

    def load(self, directory):
        directory = Path(directory)
        load_strict(self.model, load_file(str(directory / "model" / "model.safetensors"), device=str(self.device)),
                    source=str(directory))
        if self.ema is not None:
            self.ema.load_state_dict(load_file(str(directory / "ema.safetensors")))
        layout = json.loads((directory / "optimizer.json").read_text())
        tensors = load_file(str(directory / "optimizer.safetensors"), device=str(self.device))
        self.optimizer.load_state_dict(_unflatten_optimizer(tensors, layout))
        saved = json.loads((directory / "progress.json").read_text())
        self.progress = Progress(**{k: saved[k] for k in vars(Progress())})


def _flatten_optimizer(state: dict):
    tensors, layout = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, entries in state["state"].items():
        layout["state"][str(pid)] = {}
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{pid}/{key}"] = value
                layout["state"][str(pid)][key] = {"tensor": f"{pid}/{key}"}
            else:
                layout["state"][str(pid)][key] = {"value": value}
    return tensors, layout


def _unflatten_optimizer(tensors: dict, layout: dict) -> dict:
    state = {}
    for pid, entries in layout["state"].items():
        state[int(pid)] = {k: tensors[v["tensor"]] if "tensor" in v else v["value"] for k, v in entries.items()}
    return {"state": state, "param_groups": layout["param_groups"]}
