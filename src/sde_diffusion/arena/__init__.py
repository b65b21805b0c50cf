"""The solver arena: every solver against exact ground truth, and against peer libraries, in one run.

    from sde_diffusion import arena
    result = arena.run_arena(arena.ArenaConfig.quick())
    arena.write_report(result, "benchmarks/results/arena")

`problems` holds the data laws with exact scores and the forward SDEs; `contestants` the line-up (every registered
solver, variants, and the diffusers / torchsde / scipy peers); `run` the measurement; `report` the CSV, Markdown,
frontier and charts; `overhead` the per-step cost of the solvers beyond the network's; `measure` wall time and
peak memory. `benchmarks/arena.py` is the command line.
"""

from .contestants import (
    Calibrated,
    Contestant,
    Diffusers,
    LineUp,
    Ours,
    Setting,
    default_contestants,
    discrete_table,
    exact_eps,
    select,
)
from .measure import PeakTensorMemory, peak_memory, wall_time
from .overhead import MLPNoise, measure_overhead, overhead_markdown
from .problems import PROBLEMS, SDES, Problem, get_problem, get_sde
from .report import frontier, summarize, write_report
from .run import BUDGETS, ArenaConfig, ArenaResult, Case, Record, run_arena, run_case, run_one

__all__ = [
    "ArenaConfig", "ArenaResult", "BUDGETS", "Case", "Contestant", "Diffusers", "LineUp", "MLPNoise", "Ours",
    "Calibrated", "PROBLEMS", "PeakTensorMemory", "Problem", "Record", "SDES", "Setting", "default_contestants", "discrete_table",
    "exact_eps", "frontier", "get_problem", "get_sde", "measure_overhead", "overhead_markdown", "peak_memory",
    "run_arena", "run_case", "run_one", "select", "summarize", "wall_time", "write_report",
]
