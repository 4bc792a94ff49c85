"""Accuracy within 60 minutes of CPU training on one thread (issue 15's table).

Every run is ``accuracy.py``'s workflow (``dpcharge convert`` of 1e5 random points of ONE
structure, ``dp --tf train``, ``dp --tf freeze``, ``dpcharge test`` on every grid point of the
unseen structure) with as many steps as the measured cost of a step lets into 60 CPU minutes
(``docs/baseline.md``, ``benchmarks/step_cost.py``). ``template`` runs are the templates as
they were before issue 15 (start_lr 3e-3, glibc's malloc); ``new`` runs use the levers that
won the ablations. Runs work in ``benchmarks/runs/<run>/`` and write
``benchmarks/results/budget/<run>.json``; ``--table`` prints the table of ``docs/benchmarks.md``.

Usage::

    nice -n 10 python benchmarks/budget.py --jobs 2 --table     # every run, then the table
    python benchmarks/budget.py --runs --table                  # only the table
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import accuracy
from accuracy import RESULTS, SI64, SYSTEMS, Run, perform
from baseline_ablation import OLD_TEMPLATE, VARIANTS

BUDGET_RESULTS = RESULTS / "budget"

NEW = VARIANTS["fast_mae_lr1e-2"]
"""What won the Si64 ablations (``baseline_ablation.py``), for one-element systems."""
SI64US = SYSTEMS["si64us"]

RUNS = {
    run.name: run
    for run in (
        # 0.039-0.050 s per step with glibc (step_cost.py, beside another training): 60,000
        # steps take 37-50 CPU minutes
        Run("si64us_template", "budget", SI64US, (1,), 10**5, OLD_TEMPLATE, 60_000),
        Run("si64_template", "budget", SI64, (1,), 10**5, OLD_TEMPLATE, 60_000),
        # 0.036 s per step with tcmalloc in the ablation: 90,000 steps ~54 min (they took 48)
        Run("si64_new", "budget", SI64, (1,), 10**5, NEW.settings, 90_000, allocator=NEW.allocator),
        Run(
            "si64us_new",
            "budget",
            SI64US,
            (1,),
            10**5,
            NEW.settings,
            90_000,
            allocator=NEW.allocator,
        ),
    )
}


def table() -> str:
    """Return the Markdown table of the finished runs."""
    lines = [
        "| run | system | steps | CPU min | unseen MAE (e/Å^3) | paper | NMAE % | R² | electrons |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in RUNS:
        path = BUDGET_RESULTS / f"{name}.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        test = result["tests"].get("unseen")
        if test is None:
            continue
        lines.append(
            f"| {name} | {result['label']} | {result['steps']:,} "
            f"| {result['train_cpu_s'] / 60:.1f} | {test['mae']:.2e} | {result['paper_mae']:.1e} "
            f"| {test['nmae']:.2f} | {test['r2']:.5f} | {test['electrons_predicted']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", choices=list(RUNS), nargs="*", default=list(RUNS))
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once, one thread each")
    parser.add_argument("--table", action="store_true", help="print the results table")
    args = parser.parse_args(argv)
    accuracy.RESULTS = BUDGET_RESULTS  # perform() writes its results here
    with ThreadPoolExecutor(args.jobs) as pool:
        for line in pool.map(lambda name: perform(RUNS[name], 0, threads=1), args.runs):
            print(line, flush=True)
    if args.table:
        print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
