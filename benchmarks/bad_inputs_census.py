"""Count the outcomes of the bad-input catalogue (tests/bad_inputs.py): clear / unclear / silent / hang.

    OMP_NUM_THREADS=1 python -m benchmarks.bad_inputs_census [--json out.json] [--show unclear,silent,hang]

Run from the repository root; with PYTHONPATH pointing at another checkout's src/ it measures that version of the
library with the same rows (how the "before" counts of issue 18 were taken). Prints the counts per entry point
and the rows that are not clear, with what they raised.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import warnings

KINDS = ("clear", "unclear", "silent", "hang")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write every row's outcome to this file")
    parser.add_argument("--show", default="unclear,silent,hang", help="outcomes whose rows are listed")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds after which a row counts as a hang")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    from tests.bad_inputs import ROWS, outcome, row_id, warm_up

    import sde_diffusion

    warm_up()
    print(f"sde_diffusion from {sde_diffusion.__file__}; {len(ROWS)} rows")
    results, table = [], collections.defaultdict(collections.Counter)
    for row in ROWS:
        kind, what = outcome(row, args.timeout)
        results.append({"id": row_id(row), "entry": row.entry, "kind": kind, "what": what[:300]})
        table[row.entry][kind] += 1
    total = collections.Counter(r["kind"] for r in results)
    print(f"\n| entry point | rows | {' | '.join(KINDS)} |\n|---|---|{'---|' * len(KINDS)}")
    for entry, counts in table.items():
        print(f"| {entry} | {sum(counts.values())} | " + " | ".join(str(counts[k]) for k in KINDS) + " |")
    print(f"| **all** | {len(results)} | " + " | ".join(str(total[k]) for k in KINDS) + " |")
    show = set(args.show.split(","))
    for r in results:
        if r["kind"] in show:
            print(f"\n[{r['kind']}] {r['id']}\n    {r['what'][:200]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
