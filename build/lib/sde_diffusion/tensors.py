"""Small tensor helpers shared by every module: broadcasting coefficients over any rank, time checks."""

from __future__ import annotations

import torch

Time = float | torch.Tensor


def append_dims(coef: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a per-sample coefficient (scalar or `(batch,)`) to broadcast against a rank-`ndim` tensor."""
    if coef.ndim == 0:
        return coef
    return coef.reshape(coef.shape + (1,) * (ndim - coef.ndim))


def as_time(t: Time, like: torch.Tensor | None = None) -> torch.Tensor:
    """`t` as a tensor; a Python number takes the dtype and device of `like` (float64 without one)."""
    if isinstance(t, torch.Tensor):
        if like is not None and (t.dtype != like.dtype or t.device != like.device) and like.is_floating_point():
            return t.to(dtype=like.dtype, device=like.device)
        return t
    if like is not None and like.is_floating_point():
        return torch.tensor(float(t), dtype=like.dtype, device=like.device)
    return torch.tensor(float(t), dtype=torch.float64)


def batch_time(t: Time, x: torch.Tensor) -> torch.Tensor:
    """`t` as a `(batch,)` tensor matching `x` (a scalar is repeated), with a clear error on a shape mismatch."""
    t = as_time(t, x)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(
            f"t must be a scalar or have shape (batch,) = ({x.shape[0]},) to match x of shape "
            f"{tuple(x.shape)}; got t of shape {tuple(t.shape)}"
        )
    return t


def check_time_range(t: torch.Tensor, T: float, what: str = "t") -> None:
    """Raise a ValueError naming the offending value when any `t` lies outside `[0, T]`."""
    tol = 1e-6 * max(1.0, T)
    lo, hi = t.min().item(), t.max().item()
    if lo < -tol or hi > T + tol or lo != lo or hi != hi:
        bad = lo if (lo < -tol or lo != lo) else hi
        raise ValueError(f"{what} must lie in [0, T] = [0, {T:g}]; got {bad:g}")


def sum_except_batch(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first."""
    return x.reshape(x.shape[0], -1).sum(dim=1)
