"""Accuracy of Deep Charge on the Quantum ESPRESSO benchmark densities (the paper's experiments).

Every run is the user's workflow, each step a subprocess: ``dpcharge convert`` of the training
densities, ``dp --tf train`` on a template of ``input_templates/`` (steps, the paper's learning
rate 1e-3 decaying to 1e-5 over the run, its mse loss without baseline and, where the system
needs it, ``sel`` overridden),
``dp --tf freeze``, then ``dpcharge test --json --plots`` on the
whole grid of an unseen structure and, for size transfer, of a larger cell. Experiments:

``si``
    One-shot crystalline Si: test MAE against the number of training grid points (1e3, 1e4,
    1e5), from one Si64 structure and from five (the paper's FIG. 2a).
``structures``
    Al(111) slab, Al26Mg6 alloy, amorphous Si64, 32 H2O: test MAE against the number of
    training structures, 1e5 points from each (FIG. 3a, 5a/d/g).
``tuning``
    The one-structure Si training with other settings, to see what limits the accuracy: a
    higher starting learning rate, ``rcut_smth`` 0.5 Å, a 5 Å cutoff, and 100,000 steps whatever
    ``--steps`` says, with and without the higher rate, then 200,000 with it; Al-Mg and amorphous
    Si with the higher rate and 100,000 steps; water with it and 40,000 and 100,000 steps.
``transfer``
    Not a training: the one-structure Si, Al-Mg and water models above also predict Si216,
    Al88Mg20 and 64 H2O (FIG. 5c/f/i), once those densities exist.

The densities come from ``benchmarks/data/make_densities.py``; a run whose files are missing is
skipped with the command that makes them. Each run works in ``benchmarks/runs/<run>/`` (not
committed) and writes ``benchmarks/results/<run>.json``: metrics in e/Å^3 (NMAE in %, electrons
in e), training wall and CPU seconds, steps, threads. Finished steps are not repeated, so an
interrupted benchmark resumes. ``--report`` turns the results into ``docs/benchmarks/results.md``
and the figures beside it.

Usage::

    python benchmarks/accuracy.py                     # everything, 100,000 steps per training
    python benchmarks/accuracy.py --steps 10000 --jobs 2 --experiments si
    python benchmarks/accuracy.py --report
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpcharge.conventions import MALLOC_KEEP_BYTES

ROOT = Path(__file__).resolve().parents[1]
DENSITIES = ROOT / "benchmarks" / "data" / "densities"
RUNS = ROOT / "benchmarks" / "runs"
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "benchmarks"


@dataclass(frozen=True)
class System:
    """A benchmark system: its densities, training template and the paper's test MAE.

    Attributes
    ----------
    name
        Name in ``make_densities.py`` (files ``CHGCAR_<name>_seed<seed>.gz``).
    label
        Human-readable description for tables.
    template
        File in ``input_templates/``.
    type_map
        Real elements in model order (the grid type ``X`` is appended).
    sel
        Neighbours per real element for se_e2_a (the grid type gets 0); None keeps the
        template's.
    test_seed
        Seed of the unseen test structure.
    paper_mae
        The paper's test MAE for this kind of system, e/Å^3.
    large
        ``make_densities.py`` name of the larger cell for size transfer, if any.
    """

    name: str
    label: str
    template: str
    type_map: tuple[str, ...]
    sel: tuple[int, ...] | None
    test_seed: int
    paper_mae: float
    large: str | None = None


SI64 = System("si64", "crystalline Si, 64 atoms", "si.json", ("Si",), None, 6, 6.7e-4, "si216")
SYSTEMS = {
    system.name: system
    for system in (
        SI64,
        System("alslab", "Al(111) slab, 16 atoms", "al_slab.json", ("Al",), None, 4, 6e-4),
        System(
            "almg32", "Al26Mg6 alloy", "almg_slab.json", ("Al", "Mg"), (80, 32), 3, 8e-4, "almg108"
        ),
        System("asi64", "amorphous Si, 64 atoms", "si.json", ("Si",), (80,), 3, 4e-3),
        System(
            "water32", "water, 32 H2O", "water.json", ("O", "H"), (56, 112), 3, 2.3e-3, "water64"
        ),
        System(
            "si64us", "crystalline Si, 64 atoms, ultrasoft", "si.json", ("Si",), None, 3, 6.7e-4
        ),
        # the si64 structures with 2x2x2 shifted k-points instead of Gamma only; the larger
        # cell is the Gamma-only Si216 (no k-point Si216 is computed)
        System(
            "si64k",
            "crystalline Si, 64 atoms, k 2x2x2",
            "si.json",
            ("Si",),
            None,
            6,
            6.7e-4,
            "si216",
        ),
    )
}
GLIBC_KEEPS_MEMORY = ":".join(
    [f"glibc.malloc.{name}_threshold={MALLOC_KEEP_BYTES}" for name in ("trim", "mmap")]
    + ["glibc.malloc.arena_max=1"]
)
"""glibc's malloc told what ``dpcharge`` tells it (``conventions.MALLOC_KEEP_BYTES``): keep freed
memory instead of returning TensorFlow's buffers to the kernel at every step."""
ALLOCATORS = {
    "glibc": {},
    "glibc_tuned": {"GLIBC_TUNABLES": GLIBC_KEEPS_MEMORY},
    "jemalloc": {"LD_PRELOAD": "libjemalloc.so.2"},
    "tcmalloc": {"LD_PRELOAD": "libtcmalloc_minimal.so.4"},
}
"""Memory allocators for ``dp train``, as environment variables: glibc's malloc (tuned or not),
or a library preloaded, which the dynamic linker finds in the system's library path (Debian:
libjemalloc2, libtcmalloc-minimal4)."""
LARGE_SEED = 1001
"""Seed of the larger cells in ``make_densities.py``."""


@dataclass(frozen=True)
class Run:
    """One training and its tests.

    Attributes
    ----------
    name
        Folder and result name.
    experiment
        ``si`` or ``structures``.
    system
        The system trained on and tested.
    train_seeds
        Seeds of the training structures.
    points
        Training grid points in total, split evenly over the structures.
    settings
        Changes to the template, as (dotted key, value), e.g. ``("learning_rate.start_lr", 3e-3)``.
    steps
        Training steps of this run; None = the benchmark's ``--steps``.
    points_per_frame
        Grid points per training frame (``dpcharge convert --points-per-frame``).
    allocator
        Memory allocator of ``dp train``, a key of ``ALLOCATORS``.
    files
        Training densities in place of the system's ``train_seeds`` (other systems too).
    convert_options
        More options of ``dpcharge convert`` (``--select-by`` models, for example).
    """

    name: str
    experiment: str
    system: System
    train_seeds: tuple[int, ...]
    points: int
    settings: tuple[tuple[str, object], ...] = ()
    steps: int | None = None
    points_per_frame: int = 200
    allocator: str = "glibc"
    files: tuple[Path, ...] = ()
    convert_options: tuple[str, ...] = ()

    @property
    def train_files(self) -> list[Path]:
        if self.files:
            return list(self.files)
        return [density_file(self.system.name, seed) for seed in self.train_seeds]

    @property
    def tests(self) -> dict[str, Path]:
        """Test files by role: ``unseen`` (same cell size) and ``large`` (size transfer)."""
        tests = {"unseen": density_file(self.system.name, self.system.test_seed)}
        one_shot = len(self.train_seeds) == 1 and self.points >= 10**5
        if self.system.large is not None and one_shot:
            tests["large"] = density_file(self.system.large, LARGE_SEED)
        return tests


def density_file(name: str, seed: int) -> Path:
    """Return the path of a benchmark density made by ``make_densities.py``."""
    return DENSITIES / f"CHGCAR_{name}_seed{seed}.gz"


def all_runs() -> list[Run]:
    """Return every run of the experiments, the ``si`` learning curve first."""
    runs = [
        Run(f"si64_{len(seeds)}x_{points}", "si", SI64, seeds, points)
        for seeds in ((1,), (1, 2, 3, 4, 5))
        for points in (1000, 10_000, 100_000)
    ]
    for name, counts in (
        ("alslab", (1, 3)),
        ("almg32", (1, 2)),
        ("asi64", (1, 2)),
        ("water32", (1, 2)),
    ):
        for count in counts:
            seeds = tuple(range(1, count + 1))
            runs.append(
                Run(f"{name}_{count}x", "structures", SYSTEMS[name], seeds, 100_000 * count)
            )
    faster = (("learning_rate.start_lr", 3e-3),)
    smoother = (("model.descriptor.rcut_smth", 0.5),)
    shorter = (("model.descriptor.rcut", 5.0),)
    alloy, amorphous, water = SYSTEMS["almg32"], SYSTEMS["asi64"], SYSTEMS["water32"]
    runs += [
        Run("si64_1x_100000_lr3e-03", "tuning", SI64, (1,), 10**5, faster),
        Run("si64_1x_100000_smth0.5", "tuning", SI64, (1,), 10**5, smoother),
        Run("si64_1x_100000_rcut5", "tuning", SI64, (1,), 10**5, shorter),
        Run("si64_1x_100000_steps1e5", "tuning", SI64, (1,), 10**5, steps=100_000),
        Run("si64_1x_100000_lr3e-03_steps1e5", "tuning", SI64, (1,), 10**5, faster, 100_000),
        Run("si64_1x_100000_lr3e-03_steps2e5", "tuning", SI64, (1,), 10**5, faster, 200_000),
        Run("almg32_1x_lr3e-03_steps1e5", "tuning", alloy, (1,), 10**5, faster, 100_000),
        Run("asi64_1x_lr3e-03_steps1e5", "tuning", amorphous, (1,), 10**5, faster, 100_000),
        Run("water32_1x_lr3e-03_steps4e4", "tuning", water, (1,), 10**5, faster, 40_000),
        Run("water32_1x_lr3e-03_steps1e5", "tuning", water, (1,), 10**5, faster, 100_000),
    ]
    return runs


def training_input(run: Run, steps: int) -> dict:
    """Return the ``dp train`` input: the system's template with the benchmark's budget."""
    config = json.loads((ROOT / "input_templates" / run.system.template).read_text())
    config.pop("_comment", None)
    model = config["model"]
    model["type_map"] = [*run.system.type_map, "X"]
    if run.system.sel is not None:
        model["descriptor"]["sel"] = [*run.system.sel, 0]
    # every run starts from the paper's protocol, whatever the templates say: its rate and loss,
    # no baseline, the embedding of every pair computed; a run's settings change these
    config["learning_rate"] = {
        "type": "exp",
        "start_lr": 1e-3,
        "stop_lr": 1e-5,
        "decay_steps": max(steps // 20, 1),
    }
    config["loss"] = {"type": "density"}
    model["fitting_net"].pop("baseline", None)
    model.pop("data_stat_nbatch", None)
    model["descriptor"].pop("exclude_types", None)
    training = config["training"]
    training.pop("validation_data", None)
    training["training_data"]["systems"] = "data"
    # DeePMD-kit's TF trainer saves only on steps that are multiples of disp_freq and save_freq:
    # the curve's step must divide the run, or `dp freeze` finds no checkpoint
    disp_freq = max(d for d in range(1, max(steps // 50, 1) + 1) if steps % d == 0)
    training.update(numb_steps=steps, disp_freq=disp_freq, save_freq=steps)
    for key, value in run.settings:
        *parents, leaf = key.split(".")
        section = config
        for parent in parents:
            section = section[parent]
        if value is None:  # a setting of None removes the key
            section.pop(leaf, None)
        else:
            section[leaf] = value
    return config


def execute(
    command: list[str], cwd: Path, threads: int, log: Path, allocator: str = "glibc"
) -> tuple[float, float]:
    """Run a command, appending its output to ``log``; return wall and CPU seconds.

    ``allocator`` (a key of ``ALLOCATORS``) sets the command's memory allocator.
    """
    env = dict(os.environ) | ALLOCATORS[allocator]
    library = ALLOCATORS[allocator].get("LD_PRELOAD")
    # the dynamic linker ignores a missing preload with a warning: refuse it here instead
    if library and ctypes.util.find_library(library.removeprefix("lib").split(".so")[0]) is None:
        raise RuntimeError(f"{library} is not installed (allocator {allocator})")
    env.update(
        OMP_NUM_THREADS=str(threads),
        DP_INTRA_OP_PARALLELISM_THREADS=str(threads),
        DP_INTER_OP_PARALLELISM_THREADS="1",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    start = time.perf_counter()
    with log.open("a") as stream:
        stream.write(f"$ {' '.join(command)}\n")
        stream.flush()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=stream, stderr=stream)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed; see {log}")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def tool(name: str) -> str:
    """Return the path of a console script of this Python environment."""
    return shutil.which(name) or str(Path(sys.executable).with_name(name))


def perform(run: Run, steps: int, threads: int) -> str:
    """Convert, train, freeze and test one run (skipping finished steps); return a status line."""
    steps = run.steps or steps
    missing = [path for path in [*run.train_files, run.tests["unseen"]] if not path.exists()]
    if missing:
        return (
            f"{run.name}: skipped, missing {', '.join(p.name for p in missing)} (make_densities.py)"
        )
    folder = RUNS / run.name
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "log.txt"
    result_path = RESULTS / f"{run.name}.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    # a finished run counts only for the same steps and settings (results written before
    # settings were recorded had none)
    settings = json.loads(json.dumps(dict(run.settings)))
    if result.get("steps") != steps or result.get("settings", {}) != settings:
        result = {}
        shutil.rmtree(folder / "data", ignore_errors=True)
        (folder / "model.pb").unlink(missing_ok=True)
    if not (folder / "model.pb").exists():
        per_file = run.points // len(run.train_files)
        convert = [tool("dpcharge"), "convert", *map(str, run.train_files), "-o", "data"]
        convert += ["--type-map", *run.system.type_map, "--points", str(per_file), "--force", "-q"]
        convert += ["--points-per-frame", str(run.points_per_frame), *run.convert_options]
        execute(convert, folder, threads, log)
        (folder / "input.json").write_text(json.dumps(training_input(run, steps), indent=2))
        wall, cpu = execute(
            [tool("dp"), "--tf", "train", "input.json", "--skip-neighbor-stat"],
            folder,
            threads,
            log,
            allocator=run.allocator,
        )
        execute([tool("dp"), "--tf", "freeze", "-o", "model.pb"], folder, threads, log)
        curve = training_curve(folder / "lcurve.out")
        result = {
            "run": run.name,
            "experiment": run.experiment,
            "settings": settings,
            "system": run.system.name,
            "label": run.system.label,
            "paper_mae": run.system.paper_mae,
            "train_files": [path.name for path in run.train_files],
            "points": run.points,
            "points_per_frame": run.points_per_frame,
            "allocator": run.allocator,
            "steps": steps,
            "threads": threads,
            "train_wall_s": round(wall, 1),
            "train_cpu_s": round(cpu, 1),
            "final_train_rmse": curve["rmse"][-1],
            "training_curve": curve,
            "tests": {},
        }
        save(result, result_path)
    for role, path in run.tests.items():
        if role in result["tests"] or not path.exists():
            continue
        report = folder / f"test_{role}.json"
        test = [tool("dpcharge"), "test", "model.pb", str(path), "--json", report.name]
        test += ["--plots", "plots", "--threads", str(threads)]
        wall, _ = execute(test, folder, threads, log)
        metrics = next(iter(json.loads(report.read_text())["files"].values()))
        metrics.update(path=path.name, wall_s=round(wall, 1))
        result["tests"][role] = metrics
        save(result, result_path)
    tests = ", ".join(f"{role} MAE {m['mae']:.2e}" for role, m in result["tests"].items())
    return f"{run.name}: {result['steps']} steps, {result['train_wall_s']:.0f} s; {tests}"


def perform_each(runs: list[Run], jobs: int) -> None:
    """Perform runs that set their own steps, ``jobs`` at once on one thread each.

    Each status line is printed as its run ends; finished runs are kept.
    """
    with ThreadPoolExecutor(jobs) as pool:
        for line in pool.map(lambda run: perform(run, run.steps, threads=1), runs):
            print(line, flush=True)


def training_curve(lcurve: Path) -> dict[str, list[float]]:
    """Read ``lcurve.out``: step, RMSE and MAE (e/Å^3) of the 200-point training batches."""
    step, rmse, mae, _ = np.loadtxt(lcurve, unpack=True, ndmin=2)
    return {"step": step.astype(int).tolist(), "rmse": rmse.tolist(), "mae": mae.tolist()}


def save(result: dict, path: Path) -> None:
    """Write a result file (whole, so an interruption leaves the previous one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    temporary.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--experiments",
        nargs="+",
        choices=("si", "structures", "tuning"),
        default=["si", "structures", "tuning"],
        help="which trainings to run (size transfer is tested within them)",
    )
    parser.add_argument("--runs", nargs="+", help="only these runs (names as in results/)")
    parser.add_argument("--steps", type=int, default=100_000, help="training steps per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument(
        "--threads", type=int, help="threads per run (default: CPU cores / jobs, at least 1)"
    )
    parser.add_argument("--report", action="store_true", help="only write the report from results")
    args = parser.parse_args(argv)
    if args.report:
        from report_accuracy import write_report

        write_report(RESULTS, DOCS, list(SYSTEMS))
        return 0
    runs = [run for run in all_runs() if run.experiment in args.experiments]
    if args.runs:
        runs = [run for run in runs if run.name in args.runs]
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)

    def attempt(run: Run) -> str:
        try:
            return perform(run, args.steps, threads)
        except RuntimeError as error:
            return f"{run.name}: FAILED, {error}"

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        lines = list(pool.map(attempt, runs))
    print("\n".join(lines))
    return int(any("FAILED" in line for line in lines))


if __name__ == "__main__":
    sys.exit(main())
