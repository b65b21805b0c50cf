"""Solver overhead alone: what each of our solvers costs beyond its score evaluations, in % of an MLP's cost.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/solver_overhead.py                 # B = 1000, 4000
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/solver_overhead.py --batches 4000 --repeats 5 --csv out.csv
    python benchmarks/solver_overhead.py --before old_*.csv --after new_*.csv     # compare two versions

The arena's overhead table (`arena.measure_overhead`, see its docstring for the method) without the arena: every
contestant of our own family, fixed-step ones at `--steps` steps. Prints the markdown table; with `--csv`, also
writes the rows. To compare two versions of the code, write CSVs from runs of each, alternating (the machine's
speed drifts), and give them to `--before` / `--after`: the table then has the overhead per NFE in microseconds,
the least over each side's files, and what it is in % of the cheapest network call measured.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import torch

from sde_diffusion import arena


def compare(before: list[str], after: list[str]) -> None:
    """Print the least overhead per NFE of each solver and batch size over the `before` and the `after` CSVs."""

    def least(paths):
        best, net = defaultdict(lambda: math.inf), defaultdict(lambda: math.inf)
        for path in paths:
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    if not row.get("error"):
                        key = (row["label"], int(row["batch"]))
                        best[key] = min(best[key], float(row["overhead_ms_per_nfe"]))
                        net[key[1]] = min(net[key[1]], float(row["net_ms"]))
        return best, net

    (old, old_net), (new, new_net) = least(before), least(after)
    print("| solver | B | before (us / NFE) | after (us / NFE) | change (us) | before (% of net) | after (% of net) |")
    print("|---|---|---|---|---|---|---|")
    for key in sorted(set(old) & set(new)):
        net = min(old_net[key[1]], new_net[key[1]])
        print(f"| {key[0]} | {key[1]} | {1e3 * old[key]:.0f} | {1e3 * new[key]:.0f} | {1e3 * (new[key] - old[key]):+.0f} | "
              f"{100 * old[key] / net:.1f}% | {100 * new[key] / net:.1f}% |")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", nargs="+", type=int, default=[1_000, 4_000], help="batch sizes (default: %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="steps of the fixed-step solvers (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats, the least is kept (default: %(default)s)")
    p.add_argument("--solvers", nargs="+", help="contestant labels to keep ('prefix*' matches a prefix)")
    p.add_argument("--csv", help="also write the rows to this CSV file")
    p.add_argument("--before", nargs="+", help="compare: CSVs written by runs of the old code (no measurement)")
    p.add_argument("--after", nargs="+", help="compare: CSVs written by runs of the new code")
    args = p.parse_args(argv)
    if bool(args.before) != bool(args.after):
        p.error("--before and --after go together")
    if args.before:
        compare(args.before, args.after)
        return []
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
