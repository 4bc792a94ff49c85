"""Speed of whole-grid prediction: dpcharge's engine against DeePMD-kit's DeepPot.eval.

Trains the paper-sized network of input_templates/si.json for a few steps (speed
does not depend on accuracy) in float32 and float64 on the Si64 density of
tests/data, then measures, each in its own process (for its peak memory):

- engine: dpcharge's DensityModel.predict_grid on the whole 72^3 grid of Si64;
- deeppot-200 / deeppot-2000: DeepPot.eval(atomic=True) on frames of the 64 atoms
  plus 200 or 2,000 grid points (the 200-point path is how the original Deep
  Charge scripts predict), on a part of the grid, rate extrapolated;
- si216: `dpcharge reassemble` of a Si216 cell (3x3x3 Si8, rattled) on a 108^3
  grid (the spacing of the Si64 grid), wall time of the whole command.

Each figure is printed with the machine load (`uptime`) at its end.

Usage::

    python benchmarks/reassemble_speed.py --workdir /tmp/bench [--threads 2] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SI64 = REPO / "tests" / "data" / "CHGCAR_Si64_gamma_qe.gz"
SI8 = REPO / "tests" / "data" / "CHGCAR_Si8_qe.gz"
DEEPPOT_POINTS = {200: 4_000, 2000: 10_000}
"""Grid points evaluated by each DeepPot.eval path (chunk size: points)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="kinds to run: engine deeppot-200 deeppot-2000 si216",
    )
    args = parser.parse_args()
    if args.measure:
        result = measure(*args.measure, args.threads)
        # peak resident memory (Linux: kB) of this process, or of the dpcharge child for si216
        who = resource.RUSAGE_CHILDREN if args.measure[0] == "si216" else resource.RUSAGE_SELF
        result["peak_mb"] = resource.getrusage(who).ru_maxrss / 1024
        print(json.dumps(result))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    models = {
        precision: train(args.workdir, precision, args.steps)
        for precision in ("float32", "float64")
    }
    kinds = args.only or ["engine", "deeppot-200", "deeppot-2000", "si216"]
    print("| precision | path | points | seconds | points/s | peak RSS (MB) | load (1/5/15 min) |")
    print("|---|---|---|---|---|---|---|")
    for precision, model in models.items():
        for kind in kinds:
            if kind == "si216" and precision == "float64":
                continue
            result = run_measurement(kind, model, args.threads)
            print(
                f"| {precision} | {kind} | {result['points']:,} | {result['seconds']:.1f} | "
                f"{result['points'] / result['seconds']:,.0f} | {result['peak_mb']:.0f} | "
                f"{load()} |",
                flush=True,
            )


def train(workdir: Path, precision: str, steps: int) -> Path:
    """Train si.json in the given precision for a few steps; return the frozen model."""
    folder = workdir / precision
    model = folder / "model.pb"
    if model.exists():
        return model
    folder.mkdir(parents=True, exist_ok=True)
    run(
        [
            sys.executable,
            "-m",
            "dpcharge",
            "convert",
            SI64,
            "-o",
            folder / "data",
            "--points",
            4000,
            "-q",
            "--force",
        ]
    )
    config = json.loads((REPO / "input_templates" / "si.json").read_text())
    for section in ("descriptor", "fitting_net"):
        config["model"][section]["precision"] = precision
    config["training"] = {
        "training_data": {"systems": "data", "batch_size": 1},
        "numb_steps": steps,
        "disp_freq": steps,
        "save_freq": steps,
        "seed": 1,
    }
    (folder / "input.json").write_text(json.dumps(config))
    dp = Path(sys.executable).parent / "dp"
    run([dp, "--tf", "train", "input.json"], cwd=folder)
    run([dp, "--tf", "freeze", "-o", "model.pb"], cwd=folder)
    return model


def run_measurement(kind: str, model: Path, threads: int) -> dict:
    """Run one measurement in a child process, which reports its own peak memory."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env["DP_INTRA_OP_PARALLELISM_THREADS"] = env["DP_INTER_OP_PARALLELISM_THREADS"] = str(threads)
    output = run(
        [
            sys.executable,
            __file__,
            "--workdir",
            ".",
            "--threads",
            threads,
            "--measure",
            kind,
            model,
        ],
        env=env,
    )
    return json.loads(output.strip().splitlines()[-1])


def measure(kind: str, model: str, threads: int) -> dict:
    """Time one prediction path in this process; return points and seconds."""
    import numpy as np

    from dpcharge.chgcar import read_density
    from dpcharge.conventions import MIN_DISTANCE
    from dpcharge.grid import PeriodicImages, grid_points
    from dpcharge.inference import DeepDensity

    atoms, density = read_density(SI64)
    if kind == "engine":
        engine = DeepDensity(model, workers=threads)
        start = time.perf_counter()
        engine.predict_grid(atoms, density.shape)
        return {"points": density.size, "seconds": time.perf_counter() - start}
    if kind.startswith("deeppot-"):
        from deepmd.infer import DeepPot

        chunk = int(kind.split("-")[1])
        deeppot = DeepPot(model)
        cell = atoms.get_cell().array
        index = np.arange(DEEPPOT_POINTS[chunk])
        points = PeriodicImages(atoms, MIN_DISTANCE).push_out_of_nuclei(
            grid_points(cell, density.shape, index)
        )
        types = np.r_[np.zeros(len(atoms), int), np.ones(chunk, int)]
        start = time.perf_counter()
        for first in range(0, len(points), chunk):
            coords = np.concatenate([atoms.positions, points[first : first + chunk]])
            deeppot.eval(coords[None], cell.reshape(1, 9), types, atomic=True)
        return {"points": len(points), "seconds": time.perf_counter() - start}
    if kind == "si216":
        from ase.io import write

        si216 = read_density(SI8)[0] * (3, 3, 3)
        si216.rattle(0.05, seed=1)
        poscar = Path(model).parent / "POSCAR_Si216"
        write(poscar, si216, format="vasp", direct=True)
        start = time.perf_counter()
        run(
            [sys.executable, "-m", "dpcharge", "reassemble", model, poscar, "-o",
             Path(model).parent / "CHGCAR_Si216", "--grid", 108, 108, 108, "--threads", threads]
        )  # fmt: skip
        return {"points": 108**3, "seconds": time.perf_counter() - start}
    raise ValueError(kind)


def run(command: list, cwd: Path | None = None, env: dict | None = None) -> str:
    """Run a command; stop with its output if it fails."""
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, cwd=cwd, env=env, check=False
    )
    if result.returncode != 0:
        sys.exit(f"{command[:4]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout


def load() -> str:
    """The machine's load averages over 1, 5 and 15 minutes."""
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
