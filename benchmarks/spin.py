"""Spin-polarised Fe: learn the density and the magnetisation, predict an unseen structure.

The workflow of a user with one spin-polarised DFT run (issue 18): two
models trained the same way on the same 1e5 random grid points of one ferromagnetic bcc Fe16
structure (``make_densities.py --systems fe16``: ultrasoft PBE, nspin 2), one on the total
density (``dpcharge convert --component total``), one on the magnetisation rho_up - rho_down
(``--component magnetization``); both with ``input_templates/si.json``'s network, type map
Fe X, ``sel`` 120 (up to 113 Fe atoms lie within 6.5 Å of 20,000 random points of Fe16), and
one of two settings (``--variant``): ``angular``, the budget runs' settings with si.json's
angular baseline, keeping the 68 nearest Fe (up to 59 lie within its 5 Å), 2,000 steps by
default; ``radial``, the radial baseline of ``docs/baseline.md`` at a start rate of 3e-3,
20,000 steps. Then
``dpcharge test TOTAL.pb CHGCAR --magnetization MAG.pb`` on every grid point of unseen
structures: MAE, RMSE, NMAE, R² of both components, the total moment (μB) predicted and DFT's,
and the error of each atom's moment (its Voronoi cell).

Each model trains in ``benchmarks/runs/spin_fe16_<variant>_<component>/`` (not committed;
finished steps are skipped); the figures go to ``benchmarks/results/spin/fe16_<variant>.json``
and ``--table`` prints them as a Markdown table.

Usage (one thread per training; ``--jobs 2`` trains both models at once)::

    nice -n 10 python benchmarks/spin.py --variant angular --jobs 2
    python benchmarks/spin.py --variant angular --table
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from accuracy import (
    RESULTS,
    RUNS,
    Run,
    System,
    density_file,
    execute,
    save,
    tool,
    training_curve,
    training_input,
)
from budget import ANGULAR, angular_run

COMPONENTS = ("total", "magnetization")
TRAIN_SEEDS = (1,)
TEST_SEEDS = (2,)
POINTS = 100_000
FE16 = System("fe16", "ferromagnetic bcc Fe, 16 atoms", "si.json", ("Fe",), (120,), 2, float("nan"))
"""si.json for Fe: up to 113 Fe atoms lie within 6.5 Å of a point of Fe16 (sel 120)."""
ANGULAR_FE = angular_run(
    FE16, 2_000, changes=(("model.fitting_net.baseline", {**ANGULAR[1], "sel": [68]}),)
)
VARIANTS = {
    "angular": (ANGULAR_FE.settings, 2_000, ANGULAR_FE.allocator),
    "radial": (
        (("learning_rate.start_lr", 3e-3), ("model.fitting_net.baseline", {"basis": 8})),
        20_000,
        "glibc",
    ),
}
"""Settings, default steps and memory allocator of each variant (see the module docstring)."""


def result_file(variant: str) -> Path:
    """Return where the figures of a variant go."""
    return RESULTS / "spin" / f"fe16_{variant}.json"


def train(variant: str, component: str, steps: int) -> dict[str, float]:
    """Convert, train and freeze the model of one component; return its training figures."""
    folder = RUNS / f"spin_fe16_{variant}_{component}"
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "training.json"
    if (folder / "model.pb").exists() and record.exists():
        figures = json.loads(record.read_text())
        if figures["steps"] == steps:
            return figures
    log = folder / "log.txt"
    settings, _, allocator = VARIANTS[variant]
    run = Run(folder.name, "spin", FE16, TRAIN_SEEDS, POINTS, settings, steps)
    files = [str(path) for path in run.train_files]
    convert = [tool("dpcharge"), "convert", *files, "-o", "data", "--component", component]
    convert += ["--type-map", "Fe", "--points", str(POINTS // len(files)), "--force", "-q"]
    execute(convert, folder, 1, log)
    (folder / "input.json").write_text(json.dumps(training_input(run, steps), indent=2))
    train = [tool("dp"), "--tf", "train", "input.json", "--skip-neighbor-stat"]
    wall, cpu = execute(train, folder, 1, log, allocator=allocator)
    execute([tool("dp"), "--tf", "freeze", "-o", "model.pb"], folder, 1, log)
    curve = training_curve(folder / "lcurve.out")
    figures = {"steps": steps, "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1)}
    figures["final_train_rmse"] = curve["rmse"][-1]
    save(figures, record)
    return figures


def test(variant: str, threads: int) -> dict[str, object]:
    """Run ``dpcharge test`` of both models on each unseen structure; return its JSON."""
    folder = RUNS / f"spin_fe16_{variant}_total"
    report = folder / "test_unseen.json"
    report.unlink(missing_ok=True)
    files = [str(density_file("fe16", seed)) for seed in TEST_SEEDS]
    magnetization = RUNS / f"spin_fe16_{variant}_magnetization" / "model.pb"
    command = [tool("dpcharge"), "test", "model.pb", *files, "--magnetization", str(magnetization)]
    command += ["--json", report.name, "--plots", "plots", "--threads", str(threads), "--force"]
    execute(command, folder, threads, folder / "log.txt")
    result = json.loads(report.read_text())
    # file names, not this machine's paths
    for figures in result["files"].values():
        figures["path"] = Path(figures["path"]).name
    result["magnetization"]["model"] = magnetization.relative_to(RUNS).as_posix()
    return result


def table(result: dict) -> str:
    """Return the Markdown table of both components on each unseen structure."""
    lines = [
        "| structure | component | MAE e/Å^3 | RMSE e/Å^3 | NMAE % | R² | integral: predicted "
        "/ DFT | atomic moments: MAE μB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    report = result["test"]
    for name, total in report["files"].items():
        spin = report["magnetization"]["files"][name]
        lines.append(
            f"| {name} | total | {total['mae']:.2e} | {total['rmse']:.2e} | {total['nmae']:.2f} "
            f"| {total['r2']:.5f} | {total['electrons_predicted']:.2f} / "
            f"{total['electrons_reference']:.2f} e | |"
        )
        lines.append(
            f"| {name} | magnetisation | {spin['mae']:.2e} | {spin['rmse']:.2e} | "
            f"{spin['nmae']:.2f} | {spin['r2']:.5f} | {spin['moment_predicted']:.3f} / "
            f"{spin['moment_reference']:.3f} μB | {spin['atomic_moments_mae']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="angular")
    parser.add_argument(
        "--steps", type=int, help="training steps per model (default: the variant's)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="models trained at once (1 or 2)")
    parser.add_argument("--table", action="store_true", help="print the table of the results")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(result_file(args.variant).read_text())))
        return 0
    steps = args.steps or VARIANTS[args.variant][1]
    missing = [
        density_file("fe16", seed)
        for seed in (*TRAIN_SEEDS, *TEST_SEEDS)
        if not density_file("fe16", seed).exists()
    ]
    if any(density_file("fe16", seed) in missing for seed in TRAIN_SEEDS):
        print(f"missing {', '.join(p.name for p in missing)}: run make_densities.py --systems fe16")
        return 1
    with ThreadPoolExecutor(args.jobs) as pool:
        trainings = dict(
            zip(
                COMPONENTS,
                pool.map(lambda c: train(args.variant, c, steps), COMPONENTS),
                strict=True,
            )
        )
    if missing:
        print(f"trained; to test, make {', '.join(p.name for p in missing)} and run again")
        return 1
    result = {"variant": args.variant, "train_seeds": TRAIN_SEEDS, "points": POINTS}
    result["training"] = trainings
    result["test"] = test(args.variant, threads=args.jobs)
    save(result, result_file(args.variant))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
