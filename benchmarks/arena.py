"""The solver arena: every solver x NFE budget on exact-score problems, beside diffusers / torchsde / scipy peers.

    PYTHONPATH=src python benchmarks/arena.py            # the full run: 3 problems x 5 SDEs (~45 min on 2 cores)
    PYTHONPATH=src python benchmarks/arena.py --quick    # 2 problems x 2 SDEs, fewer budgets (~2 min)
    PYTHONPATH=src python benchmarks/arena.py --problems ring-2d --sdes edm --solvers 'dpm_solver_pp*' 'diffusers:*'

Writes records.csv (one row per run), summary.csv (means over seeds), results.md (claims, frontier, tables,
overhead), error_vs_nfe_<problem>_<sde>.png and overhead.csv under --out. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import torch

from sde_diffusion import arena


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a ~2 minute run: ring-2d and gmm-32d on EDM and VP, budgets up to 100")
    p.add_argument("--out", default="benchmarks/results/arena", help="output folder (default: %(default)s)")
    p.add_argument("--problems", nargs="+", choices=sorted(arena.PROBLEMS), help="problems to run")
    p.add_argument("--sdes", nargs="+", choices=sorted(arena.SDES), help="forward SDEs to run")
    p.add_argument("--budgets", nargs="+", type=int, help="NFE budgets")
    p.add_argument("--seeds", type=int, help="seeds per setting")
    p.add_argument("--samples", type=int, help="samples per run")
    p.add_argument("--solvers", nargs="+", help="contestant labels to keep ('prefix*' matches a prefix)")
    p.add_argument("--stop-below", type=float, help="deterministic solvers stop raising the budget below this trajectory error (0: never)")
    p.add_argument("--no-peers", action="store_true", help="leave out diffusers, torchsde and scipy")
    p.add_argument("--calibrated", action=argparse.BooleanOptionalAction, default=None,
                   help="run the solvers on calibrated grids (default: yes, but not with --quick)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--jobs", type=int, default=arena.run.default_jobs(), help="worker processes (default: OMP_NUM_THREADS or the CPU count)")
    p.add_argument("--overhead-batches", nargs="*", type=int, help="batch sizes of the overhead measurement (none: skip it)")
    p.add_argument("--overhead-width", type=int, default=256, help="hidden width of the MLP of the overhead measurement")
    p.add_argument("--list", action="store_true", help="list the contestants and exit")
    return p.parse_args(argv)


def main(argv=None) -> arena.ArenaResult:
    args = parse(argv)
    overrides = {k: v for k, v in dict(
        problems=tuple(args.problems) if args.problems else None, sdes=tuple(args.sdes) if args.sdes else None,
        budgets=tuple(args.budgets) if args.budgets else None, seeds=args.seeds, samples=args.samples,
        solvers=tuple(args.solvers) if args.solvers else None, stop_below=args.stop_below,
    ).items() if v is not None}
    if args.calibrated is not None:
        overrides["calibrated"] = args.calibrated
    overrides.update(peers=not args.no_peers, memory=not args.no_memory, jobs=args.jobs)
    config = arena.ArenaConfig.quick(**overrides) if args.quick else arena.ArenaConfig.full(**overrides)
    lineup = arena.select(arena.default_contestants(config.peers, config.calibrated), config.solvers)
    if args.list:
        for c in lineup.contestants:
            print(f"{c.label:30s} {c.family:10s} {'stochastic' if c.stochastic else 'deterministic':13s} {c.describe()}")
        for label, reason in lineup.skipped:
            print(f"{label:30s} skipped: {reason}")
        return None
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    start = time.perf_counter()
    result = arena.run_arena(config, lineup)
    overhead_rows = None
    batches = args.overhead_batches
    if batches is None:
        batches = [1_000, 4_000] if args.quick else [1_000, 4_000, 16_000, 64_000]
    if batches:
        torch.set_num_threads(1)
        overhead_rows = arena.measure_overhead(lineup.contestants, batches, width=args.overhead_width,
                                               repeats=2 if args.quick else 3, log=print)
    result.seconds = time.perf_counter() - start
    command = "python benchmarks/arena.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    paths = arena.write_report(result, Path(args.out), overhead_rows, command.strip())
    print(f"\n{len(result.records)} runs in {result.seconds / 60:.1f} min; wrote")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return result


if __name__ == "__main__":
    main()
