"""Uncertainty from an ensemble (issue 16): does the models' spread find their error?

Every model is ``accuracy.py``'s workflow with the settings of ``budget.py``'s ``exp`` runs
(``input_templates/si.json``'s levers, tcmalloc), ``--steps`` steps on one thread, other seeds
for other members; the densities are the Quantum ESPRESSO Si64 sets of ``make_densities.py``.
Three experiments, each a table of ``docs/uncertainty.md``:

``ranking``
    Eight models on the same 1e5 points of Si64 seed 1. ``dpcharge test`` of the first 2, 4 and
    8 on every grid point of the unseen Si64 (seed 6) and, out of distribution, of a hot Si64
    (seed 7, displacements 2.5 times larger) and amorphous Si64 (seed 3): MAE of the ensemble
    mean, mean deviation (e/Å^3), Spearman correlation of deviation and absolute error.
``water``
    The same for four models on 1e5 points of water32 seed 1, tested on seed 3.
``points``
    Concurrent learning of grid points: four models trained on 1e3 uniform points of Si64
    seed 1 draw 1e3, 1e4 and 1e5 of its points by their deviation, with weights
    (``dpcharge convert --select-by``, a fifth of the drawing uniform); one model trained on
    each, against one trained on as many uniform points, equal steps: MAE on seed 6.
``structures``
    Concurrent learning of structures: the first four ``ranking`` models rank a pool whose
    DFT is held back (Si64 seeds 2-5, amorphous Si64 seeds 1-3) with ``dpcharge select``;
    a model trained on seed 1 plus the ``COUNT`` most uncertain, against seed 1 plus
    ``COUNT`` random ones (``DRAWS`` draws), 1e5 points from each structure: MAE over the rest
    of the pool, and on its worst structure.

Runs work in ``benchmarks/runs/uncertainty/`` (not committed); results go to
``benchmarks/results/uncertainty/``; ``--table`` prints the Markdown tables.

Usage (one training at a time per job, niced, on a shared machine)::

    nice -n 10 python benchmarks/uncertainty.py --experiments ranking points structures --jobs 2
    python benchmarks/uncertainty.py --table
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import accuracy
import numpy as np
from accuracy import (
    RESULTS,
    RUNS,
    SI64,
    SYSTEMS,
    Run,
    System,
    density_file,
    execute,
    perform_each,
    tool,
)
from budget import SCHEDULES

from dpcharge.chgcar import read_structure

FOLDER = RUNS / "uncertainty"
UNCERTAINTY_RESULTS = RESULTS / "uncertainty"
WATER = SYSTEMS["water32"]
MEMBERS = {SI64.name: 8, WATER.name: 4}
"""Models of each system's ensemble (a water step costs 1.8 times a Si step)."""
ENSEMBLES = (2, 4, 8)
SELECTORS = 4
"""Models of the ensembles that choose points and structures."""
POINTS = (1_000, 10_000, 100_000)
POOL = tuple(density_file("si64", seed) for seed in (2, 3, 4, 5)) + tuple(
    density_file("asi64", seed) for seed in (1, 2, 3)
)
COUNT = 2
"""Structures added to seed 1 in ``structures``."""
DRAWS = 3
"""Random choices of ``COUNT`` structures, against the ensemble's one."""
TESTS = {
    SI64.name: {
        "unseen": density_file("si64", SI64.test_seed),
        "hot": density_file("si64hot", 7),
        "amorphous": density_file("asi64", 3),
    },
    WATER.name: {"unseen": density_file("water32", WATER.test_seed)},
}


def member(name: str, seed: int, steps: int, system: System = SI64, **fields: object) -> Run:
    """Return one model's run: ``si.json``'s settings with ``seed`` for every random choice.

    Every pair of real elements is excluded from the descriptor, as in ``budget.py``.
    """
    template = SCHEDULES["exp"]
    elements = range(len(system.type_map))
    pairs = [[i, j] for i in elements for j in elements if i <= j]
    seeds = tuple((key, seed) for key in ("model.descriptor.seed", "model.fitting_net.seed"))
    settings = (
        *template.settings,
        ("model.descriptor.exclude_types", pairs),
        *seeds,
        ("training.seed", seed),
    )
    fields.setdefault("points", 10**5)
    return Run(
        name,
        "uncertainty",
        system,
        (1,),
        settings=settings,
        steps=steps,
        allocator=template.allocator,
        **fields,
    )


def members(steps: int, system: System = SI64) -> list[Run]:
    """Return the runs of ``system``'s ensemble, seeds 1 to its ``MEMBERS``."""
    kind = "member" if system is SI64 else f"{system.name}_member"
    return [
        member(f"uncertainty_{kind}{seed}_{steps}", seed, steps, system)
        for seed in range(1, MEMBERS[system.name] + 1)
    ]


def model(run: Run) -> Path:
    """Return the frozen model of a finished run."""
    return RUNS / run.name / "model.pb"


def test(models: list[Path], files: list[Path], name: str) -> dict:
    """Run ``dpcharge test`` of an ensemble (or one model) once; return its JSON report."""
    folder = FOLDER / "tests"
    folder.mkdir(parents=True, exist_ok=True)
    report = folder / f"{name}.json"
    if not report.exists():
        command = [tool("dpcharge"), "test", *map(str, models), *map(str, files)]
        command += ["--json", str(report), "--threads", "1"]
        if len(models) > 1:
            command += ["--plots", str(folder / name)]
        execute(command, folder, 1, folder / "log.txt")
    return json.loads(report.read_text())


def ranking(steps: int, jobs: int, system: System = SI64) -> list[dict]:
    """Train the members; test the ensembles of the first 2, 4 and 8 on each test file."""
    runs = members(steps, system)
    perform_each(runs, jobs)
    kind = "" if system is SI64 else f"{system.name}_"
    rows = []
    for size in (size for size in ENSEMBLES if size <= len(runs)):
        models = [model(run) for run in runs[:size]]
        for role, path in TESTS[system.name].items():
            figures = test(models, [path], f"ranking_{kind}{size}_{role}_{steps}")["overall"]
            rows.append({**figures, "models": size, "system": system.name, "test": role})
    return rows


def water(steps: int, jobs: int) -> list[dict]:
    """``ranking`` for water."""
    return ranking(steps, jobs, WATER)


def points(steps: int, jobs: int) -> list[dict]:
    """Selected against uniform points at equal numbers and steps."""
    selectors = [
        member(f"uncertainty_selector{seed}_{steps}", seed, steps, points=POINTS[0])
        for seed in range(1, SELECTORS + 1)
    ]
    perform_each(selectors, jobs)
    chosen = ("--select-by", *map(str, map(model, selectors)))
    # the same trainings: the first selector on 1e3 uniform points, the first member on 1e5
    runs = {("uniform", POINTS[0]): selectors[0], ("uniform", POINTS[-1]): members(steps)[0]}
    for count in POINTS[1:-1]:
        name = f"uncertainty_uniform{count}_{steps}"
        runs["uniform", count] = member(name, 1, steps, points=count)
    for count in POINTS:
        # "weighted": the runs named "selected" took the largest deviations without weights
        runs["selected", count] = member(
            f"uncertainty_weighted{count}_{steps}", 1, steps, points=count, convert_options=chosen
        )
    perform_each(list(runs.values()), jobs)
    return [
        {**result(run)["tests"]["unseen"], "kind": kind, "training_points": count}
        for (kind, count), run in runs.items()
    ]


def structures(steps: int, jobs: int) -> list[dict]:
    """Seed 1 plus the most uncertain structures of the pool, against random ones."""
    selectors = [model(run) for run in members(steps)[:SELECTORS]]
    missing = [path for path in selectors if not path.exists()]
    if missing:
        raise RuntimeError(f"run the ranking experiment first: {missing[0]} is missing")
    folder = FOLDER / "structures"
    folder.mkdir(parents=True, exist_ok=True)
    candidates = folder / "pool.extxyz"
    if not candidates.exists():
        import ase.io

        ase.io.write(candidates, [read_structure(path) for path in POOL], format="extxyz")
    chosen_folder = folder / f"chosen_{steps}"
    if not chosen_folder.exists():
        command = [tool("dpcharge"), "select", *map(str, selectors), str(candidates)]
        command += ["-n", str(COUNT), "-o", str(chosen_folder), "--threads", "1"]
        execute(command, folder, 1, folder / "log.txt")
    record = json.loads((chosen_folder / "dpcharge.json").read_text())
    rng = np.random.default_rng(0)
    picks = {"ensemble": tuple(record["chosen"])} | {
        f"random{draw}": tuple(int(i) for i in rng.choice(len(POOL), COUNT, replace=False))
        for draw in range(1, DRAWS + 1)
    }
    runs = {
        kind: member(
            f"uncertainty_{kind}_{steps}",
            1,
            steps,
            points=10**5 * (1 + COUNT),
            files=(density_file("si64", 1), *(POOL[i] for i in chosen)),
        )
        for kind, chosen in picks.items()
    }
    perform_each(list(runs.values()), jobs)
    rows = []
    for kind, run in runs.items():
        rest = [path for i, path in enumerate(POOL) if i not in picks[kind]]
        report = test([model(run)], rest, f"structures_{kind}_{steps}")
        added = [POOL[i].name.removeprefix("CHGCAR_").removesuffix(".gz") for i in picks[kind]]
        each = {name: figures["mae"] for name, figures in report["files"].items()}
        rows.append({**report["overall"], "kind": kind, "added": added, "each": each})
    return rows


def result(run: Run) -> dict:
    """Return the result file of a finished run."""
    return json.loads((UNCERTAINTY_RESULTS / f"{run.name}.json").read_text())


EXPERIMENTS = {"ranking": ranking, "water": water, "points": points, "structures": structures}


def cost(runs: list[Run]) -> str:
    """Return the training CPU minutes and one-thread test seconds summed over ``runs``."""
    found = [result(run) for run in runs]
    train = sum(item["train_cpu_s"] for item in found) / 60
    predict = sum(item["tests"]["unseen"]["wall_s"] for item in found)
    return f"{train:.0f} | {predict:.0f}"


def table(steps: int) -> str:
    """Return the Markdown tables of the finished experiments, with what each cost.

    Costs are sums over the models involved: training CPU minutes, and the wall seconds of
    ``dpcharge test`` of each model alone on the unseen Si64 grid (373,248 points, one
    thread), which an ensemble's prediction repeats once per model.
    """
    lines = []
    path = UNCERTAINTY_RESULTS / f"experiments_{steps}.json"
    found = json.loads(path.read_text()) if path.exists() else {}
    rankings = [*found.get("ranking", []), *found.get("water", [])]
    if rankings:
        lines += [
            "| trained on | models | test | MAE of the mean (e/Å^3) | mean deviation (e/Å^3) "
            "| Spearman | training (CPU min) | prediction (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in rankings:
            system = SYSTEMS[row.get("system", SI64.name)]
            runs = members(steps, system)[: row["models"]]
            deviation = row["deviation"]
            lines.append(
                f"| {system.name} | {row['models']} | {row['test']} | {row['mae']:.3e} "
                f"| {deviation['mean_deviation']:.3e} | {deviation['spearman']:.3f} "
                f"| {cost(runs)} |"
            )
        lines.append("")
    if "points" in found:
        lines += ["| points | uniform MAE (e/Å^3) | selected MAE (e/Å^3) |", "|---|---|---|"]
        maes = {(row["kind"], row["training_points"]): row["mae"] for row in found["points"]}
        for count in POINTS:
            lines.append(
                f"| {count:,} | {maes[('uniform', count)]:.3e} | {maes[('selected', count)]:.3e} |"
            )
        lines.append("")
    if "structures" in found:
        lines += [
            "| added to seed 1 | structures | MAE on the rest (e/Å^3) | worst of the rest |",
            "|---|---|---|---|",
        ]
        for row in found["structures"]:
            name, worst = max(row["each"].items(), key=lambda item: item[1])
            lines.append(
                f"| {row['kind']} | {', '.join(row['added'])} | {row['mae']:.3e} "
                f"| {worst:.3e} ({name.removeprefix('CHGCAR_')}) |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", choices=list(EXPERIMENTS), nargs="*", default=[])
    parser.add_argument("--steps", type=int, default=10_000, help="training steps per model")
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once, one thread each")
    parser.add_argument("--table", action="store_true", help="print the results tables")
    args = parser.parse_args(argv)
    accuracy.RESULTS = UNCERTAINTY_RESULTS  # perform() writes its results here
    path = UNCERTAINTY_RESULTS / f"experiments_{args.steps}.json"
    found = json.loads(path.read_text()) if path.exists() else {}
    for name in args.experiments:
        found[name] = EXPERIMENTS[name](args.steps, args.jobs)
        accuracy.save(found, path)
    if args.table:
        print(table(args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
