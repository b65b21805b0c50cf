"""Solver overhead alone: what each of our solvers costs beyond its score evaluations, in % of an MLP's cost.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/solver_overhead.py                 # B = 1000, 4000
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/solver_overhead.py --batches 4000 --repeats 5 --csv out.csv

The arena's overhead table (`arena.measure_overhead`, see its docstring for the method) without the arena: every
contestant of our own family, fixed-step ones at `--steps` steps. Prints the markdown table; with `--csv`, also
writes the rows.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import torch  # noqa: E402

from sde_diffusion import arena  # noqa: E402


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", nargs="+", type=int, default=[1_000, 4_000], help="batch sizes (default: %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="steps of the fixed-step solvers (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats, the least is kept (default: %(default)s)")
    p.add_argument("--solvers", nargs="+", help="contestant labels to keep ('prefix*' matches a prefix)")
    p.add_argument("--csv", help="also write the rows to this CSV file")
    args = p.parse_args(argv)
    if min(args.batches) < 1 or args.steps < 1 or args.repeats < 1:
        p.error("--batches, --steps and --repeats must be positive")
    torch.set_num_threads(1)
    lineup = arena.select(arena.default_contestants(peers=False, calibrated=False), tuple(args.solvers) if args.solvers else None)
    rows = arena.measure_overhead(lineup.contestants, args.batches, steps=args.steps, repeats=args.repeats, log=print)
    print(arena.overhead_markdown(rows))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
            writer.writeheader()
            writer.writerows(rows)
    return rows


if __name__ == "__main__":
    main()
