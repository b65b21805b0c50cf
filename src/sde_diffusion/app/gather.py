"""Gather the metrics.json files of a sweep into one table: metrics.csv, metrics.md and quality_vs_nfe.png.

    sde-gather multirun/2026-11-30/12-00-00        # or python -m sde_diffusion.app.gather DIR

One row per (run, sampler), with the run's command-line overrides (from .hydra/overrides.yaml) as its name.
`GatherCallback` does the same automatically at the end of every `-m` sweep.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback

from . import outputs

log = logging.getLogger("sde_diffusion")


def collect(root: Path) -> list[dict]:
    """Flat rows from every metrics.json under `root`, in path order."""
    rows = []
    for file in sorted(Path(root).rglob("metrics.json")):
        overrides = file.parent / ".hydra" / "overrides.yaml"
        name = " ".join(yaml.safe_load(overrides.read_text()) or []) if overrides.is_file() else str(file.parent.relative_to(root))
        rows.extend(outputs.rows_from_metrics(json.loads(file.read_text()), name or str(file.parent.relative_to(root))))
    return rows


def _columns(rows: list[dict]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    return columns


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def markdown(rows: list[dict]) -> str:
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def gather(root: str | Path, metric: str = "sliced_wasserstein") -> list[dict]:
    """Write metrics.csv, metrics.md and quality_vs_nfe.png in `root`; returns the rows."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    rows = collect(root)
    if not rows:
        raise FileNotFoundError(f"no metrics.json with sampler results under {root}")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(rows))
    writer.writeheader()
    writer.writerows(rows)
    outputs._atomic_write(root / "metrics.csv", lambda f: f.write(buffer.getvalue().encode()))
    outputs._atomic_write(root / "metrics.md", lambda f: f.write(markdown(rows).encode()))
    outputs.plot_quality_vs_nfe(root / "quality_vs_nfe.png", rows, metric)
    return rows


class GatherCallback(Callback):
    """Hydra callback: gather the sweep folder's metrics at the end of a multirun."""

    def on_multirun_end(self, config, **kwargs) -> None:
        root = Path(config.hydra.sweep.dir)
        try:
            rows = gather(root)
        except FileNotFoundError as e:
            log.warning("gather: %s", e)
            return
        log.info("gathered %d rows into %s/metrics.{csv,md} and quality_vs_nfe.png", len(rows), root)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="a sweep folder (multirun/...) or any folder holding run folders")
    parser.add_argument("--metric", default="sliced_wasserstein", help="the quality metric of the chart")
    args = parser.parse_args(argv)
    try:
        rows = gather(args.root, args.metric)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None  # the message is the whole report
    print(markdown(rows))
    print(f"wrote {Path(args.root) / 'metrics.csv'}, metrics.md and quality_vs_nfe.png")


if __name__ == "__main__":
    main()
