"""What a run writes: atomic JSON / NPZ / YAML files and PNG plots (matplotlib's Agg backend, no display needed).

Plots: samples beside data (scatter for 2-D, an image grid for images), the training loss, and sample quality
against NFE (one point per solver of a run, one line per solver across a sweep).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml


def _atomic_write(path: Path, write) -> Path:
    """Write through a temporary file in the same folder and rename it over `path` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; results are as readable as any file
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def _jsonable(value: Any):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN / inf
    return value


def write_json(path: Path, data: dict) -> Path:
    text = json.dumps(_jsonable(data), indent=2, allow_nan=False)
    return _atomic_write(path, lambda f: f.write(text.encode()))


def write_config(path: Path, config: dict) -> Path:
    """The resolved config (interpolations filled in) as YAML."""
    text = yaml.safe_dump(_jsonable(config), sort_keys=False)
    return _atomic_write(path, lambda f: f.write(text.encode()))


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    # numpy's stubs let **kwds fill the allow_pickle flag (a bool); here every key names an array.
    return _atomic_write(path, lambda f: np.savez_compressed(f, **arrays))  # type: ignore[arg-type]


def read_samples(path: Path) -> dict[str, torch.Tensor]:
    """The arrays of a samples.npz (as `write_npz` writes), as tensors. A file that is not an .npz of plain numeric
    arrays raises ConfigError naming `evaluate.samples`; pickled objects are never loaded (they could run code)."""
    from .config import ConfigError

    try:
        with np.load(path, allow_pickle=False) as arrays:
            if not hasattr(arrays, "files"):
                raise ValueError("a single .npy array, not an .npz archive")
            samples = {name: torch.from_numpy(arrays[name]) for name in arrays.files}
    except Exception as e:  # numpy's text for a pickle suggests allow_pickle=True, which is unsafe: not quoted
        kind = "it holds pickled Python objects" if "pickle" in str(e) else f"{type(e).__name__}"
        raise ConfigError(f"evaluate.samples: {path} is not a samples .npz of numeric arrays ({kind}); give the "
                          "samples.npz a run wrote, or its run folder") from None
    bad = [n for n, x in samples.items() if not (x.is_floating_point() and x.ndim >= 2)]
    if bad or not samples:
        raise ConfigError(f"evaluate.samples: {path} holds no floating-point sample arrays of shape (n, ...) "
                          f"({'arrays ' + str(bad) if bad else 'no arrays'})")
    return samples


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def _image_grid(x: torch.Tensor, shape: Sequence[int], count: int = 64) -> np.ndarray:
    """Up to `count` images (C, H, W) in [-1, 1] tiled into one (rows*H, cols*W[, C]) array in [0, 1]."""
    images = x[:count].reshape(-1, *shape).clamp(-1, 1).add(1).div(2).numpy()
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    c, h, w = shape
    grid = np.ones((rows * (h + 1), cols * (w + 1), c))
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        grid[r * (h + 1) : r * (h + 1) + h, k * (w + 1) : k * (w + 1) + w] = img.transpose(1, 2, 0)
    return grid[..., 0] if c == 1 else grid


def plot_samples(path: Path, samples: dict[str, torch.Tensor], data: torch.Tensor, shape: Sequence[int]) -> Path:
    """Data beside the samples of each solver: a scatter for 2-D points, an image grid for (C, H, W) images,
    the first two coordinates otherwise."""
    return _save(samples_figure(samples, data, shape), path)


def samples_figure(samples: dict[str, torch.Tensor], data: torch.Tensor, shape: Sequence[int]):
    """The figure of `plot_samples` (also logged to TensorBoard by the evaluation hook)."""
    plt = _pyplot()
    panels = {"data": data, **samples}
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    for ax, (name, x) in zip(axes[0], panels.items(), strict=True):
        x = x.detach().float().cpu()
        if len(shape) == 3:
            ax.imshow(_image_grid(x, shape), cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
        else:
            flat = x.reshape(len(x), -1)
            keep = torch.isfinite(flat).all(1)
            ax.scatter(flat[keep, 0], flat[keep, 1], s=1, alpha=0.4, color="k" if name == "data" else None)
            lim = data.reshape(len(data), -1)[:, :2].abs().max().item() * 1.15
            ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
        ax.set_title(name)
    return fig


def plot_loss(path: Path, history: list[dict]) -> Path:
    """The logged training loss against the step (log scale)."""
    plt = _pyplot()
    records = [r for r in history if "loss" in r]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if records:
        ax.plot([r["step"] for r in records], [r["loss"] for r in records])
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="training loss")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def rows_from_metrics(metrics: dict, run: str) -> list[dict]:
    """One flat row per solver of a run's metrics.json: run, solver key, NFE, wall time, every metric with its
    standard error, the floors (`floor_<metric>`, `floor_<metric>_stderr`) and the data's log-density if known."""
    rows = []
    for key, s in metrics.get("solvers", {}).items():
        row = {"run": run, "sampler": key}
        row.update({k: v for k, v in s.items() if not isinstance(v, (dict, list))})
        for metric, value in metrics.get("floor", {}).items():
            row[f"floor_{metric}"] = value
        if "data_log_prob" in metrics:
            row["data_log_prob"] = metrics["data_log_prob"]
        rows.append(row)
    return rows


def plot_quality_vs_nfe(path: Path, rows: list[dict], metric: str = "sliced_wasserstein") -> Path:
    """`metric` against NFE with its standard error, one line per solver (points sorted by NFE), the two-sample
    floor as a band (mean +- 2 standard errors: samples inside it are indistinguishable from data at this size);
    beside it, where the data's log-density is known (Gaussian mixtures), the samples' mean log p against the
    data's, which sees errors (mass between the modes, widened modes) that a distance at the floor cannot."""
    plt = _pyplot()
    has_log_prob = any(r.get("sample_log_prob") is not None and r.get("data_log_prob") is not None for r in rows)
    fig, axes = plt.subplots(1, 2 if has_log_prob else 1, figsize=(11 if has_log_prob else 5.5, 4), squeeze=False)
    by_solver: dict[str, list] = {}
    for r in rows:
        if r.get("nfe") and r.get(metric) is not None:
            by_solver.setdefault(str(r.get("solver", r.get("sampler"))), []).append(r)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ax = axes[0][0]
    for i, (name, points) in enumerate(sorted(by_solver.items())):
        points.sort(key=lambda r: r["nfe"])
        err = [r.get(f"{metric}_stderr") or 0.0 for r in points]
        ax.errorbar([r["nfe"] for r in points], [r[metric] for r in points], yerr=err, marker="o", capsize=3,
                    color=colors[i % len(colors)], label=name)
    floors = [(r[f"floor_{metric}"], r.get(f"floor_{metric}_stderr") or 0.0) for r in rows if r.get(f"floor_{metric}") is not None]
    if floors:
        mean, se = float(np.mean([f for f, _ in floors])), float(np.mean([e for _, e in floors]))
        ax.axhspan(max(mean - 2 * se, 1e-12), mean + 2 * se, color="gray", alpha=0.25, lw=0,
                   label="two-sample floor (±2 s.e.)")
        ax.axhline(mean, ls="--", color="gray", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel=metric.replace("_", " "), title="distance to the data")
    ax.grid(alpha=0.3, which="both")
    if by_solver:
        ax.legend(fontsize=8)
    if has_log_prob:
        ax = axes[0][1]
        for i, (name, points) in enumerate(sorted(by_solver.items())):
            points = [r for r in points if r.get("sample_log_prob") is not None]
            ax.plot([r["nfe"] for r in points], [r["sample_log_prob"] for r in points], marker="o",
                    color=colors[i % len(colors)], label=name)
        data = float(np.mean([r["data_log_prob"] for r in rows if r.get("data_log_prob") is not None]))
        ax.axhline(data, ls="--", color="k", lw=1, label="data")
        ax.set(xscale="log", xlabel="NFE", ylabel="mean log p(sample) (exact density)", title="log-density of the samples")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("sample quality vs NFE", fontsize=10)
    return _save(fig, path)
