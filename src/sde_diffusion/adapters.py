"""Bring your own model: networks trained elsewhere, as `(sde, score_model)` pairs every solver can sample.

- `from_diffusers(network, scheduler, **conditioning)`: a diffusers network (`UNet2DModel`, `UNet2DConditionModel`,
  a transformer: anything called `network(x, timestep, **conditioning)` returning a tensor or an output with
  `.sample`) and the scheduler it was trained with. A DDPM-style scheduler (one with `alphas_cumprod`: DDPM, DDIM,
  DPM-Solver, UniPC, Euler, ...) becomes `LinearSDE.from_alphas_cumprod(scheduler.alphas_cumprod)`, and the network is
  called with its own timestep `N t - 1`; a flow-matching scheduler (`FlowMatch*`, or `use_flow_sigmas`) becomes
  `RectifiedFlowSDE(shift=config.shift)`, the network called with `N t` (diffusers' flow-matching timesteps are
  sigma times `num_train_timesteps`). `prediction_type`: epsilon -> "eps", v_prediction -> "v", sample -> "x0",
  flow_prediction (and every flow-matching scheduler) -> "flow". A network with twice the input's channels (learned
  variance, Nichol & Dhariwal 2021) contributes its first half.
- `from_denoiser(D, sigma_min, sigma_max, **conditioning)`: an EDM / k-diffusion denoiser `D(x, sigma, **cond)`
  returning E[x_0 | x] on the EDM process (`EDMSDE`, sigma(t) = t, x0 prediction).

Conditioning (class labels, encoder states) is passed to every call unchanged, so it must fit the batch being
sampled: one row per sample of `shape`, or anything the network broadcasts. Nothing here downloads anything;
diffusers is an optional dependency that only `from_diffusers` needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .schedules import DiscreteScheduleSDE, RectifiedFlowSDE
from .score import Prediction, ScoreModel
from .sde import EDMSDE, LinearSDE

DIFFUSERS_PREDICTIONS: dict[str, Prediction] = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "flow"}
"""diffusers' `prediction_type` names and ours."""


class DiffusersNetwork:
    """`network(x, t)` for a diffusers network: its own timestep for t, the conditioning, the first C channels."""

    def __init__(self, network: Callable, to_timestep: Callable[[torch.Tensor], torch.Tensor], conditioning: dict[str, Any]):
        self.network, self.to_timestep, self.conditioning = network, to_timestep, conditioning

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.network(x, self.to_timestep(t).to(x.dtype), **self.conditioning)
        out = getattr(out, "sample", out)
        out = out[0] if isinstance(out, tuple) else out
        channels = x.shape[1]
        if out.ndim == x.ndim and out.shape[1] == 2 * channels and out.shape[2:] == x.shape[2:]:
            out = out[:, :channels]  # learned variance: the mean's half
        if out.shape != x.shape:
            raise ValueError(
                f"the network returned shape {tuple(out.shape)} for input {tuple(x.shape)}: its output channels must "
                f"equal the input's ({channels}), or twice them for a learned variance"
            )
        return out

    def __repr__(self):
        return f"DiffusersNetwork({type(self.network).__name__})"


def _config(scheduler) -> dict:
    config = getattr(scheduler, "config", None)
    if config is None:
        raise TypeError(f"scheduler must be a diffusers scheduler (with .config); got {type(scheduler).__name__}")
    return dict(config)


def diffusers_sde(scheduler) -> tuple[LinearSDE, Prediction, Callable[[torch.Tensor], torch.Tensor]]:
    """(sde, prediction, t -> the network's timestep) of a diffusers scheduler's training schedule."""
    config = _config(scheduler)
    flow = type(scheduler).__name__.startswith("FlowMatch") or bool(config.get("use_flow_sigmas", False))
    n = int(config.get("num_train_timesteps", 1000))
    if flow:
        shift = config.get("shift") or config.get("flow_shift") or 1.0  # FlowMatch* / DPM-Solver and UniPC's flow sigmas
        return RectifiedFlowSDE(shift=float(shift)), "flow", lambda t: t * n
    if not hasattr(scheduler, "alphas_cumprod"):
        raise ValueError(f"{type(scheduler).__name__} has neither alphas_cumprod nor a flow-matching schedule: not supported")
    kind = config.get("prediction_type", "epsilon")
    if kind not in DIFFUSERS_PREDICTIONS:
        raise ValueError(f"unknown prediction_type {kind!r}; supported: {sorted(DIFFUSERS_PREDICTIONS)}")
    sde = DiscreteScheduleSDE(torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64))
    return sde, DIFFUSERS_PREDICTIONS[kind], sde.timestep


def from_diffusers(network: Callable, scheduler, **conditioning) -> tuple[LinearSDE, ScoreModel]:
    """A diffusers network and its scheduler as `(sde, score_model)` (see the module docstring)."""
    if not callable(network):
        raise TypeError(f"network must be callable as network(x, timestep, **conditioning); got {type(network).__name__}")
    sde, prediction, to_timestep = diffusers_sde(scheduler)
    return sde, ScoreModel(DiffusersNetwork(network, to_timestep, conditioning), sde, prediction=prediction)


def from_denoiser(denoiser: Callable, sigma_min: float = 0.002, sigma_max: float = 80.0, **conditioning) -> tuple[LinearSDE, ScoreModel]:
    """An EDM / k-diffusion denoiser D(x, sigma, **conditioning) ~ E[x_0 | x] as `(EDMSDE, x0 score model)`."""
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable as D(x, sigma, **conditioning); got {type(denoiser).__name__}")
    sde = EDMSDE(sigma_min, sigma_max)
    return sde, ScoreModel(lambda x, t: denoiser(x, t.to(x.dtype), **conditioning), sde, prediction="x0")
