"""Scaling of ``dpcharge reassemble`` with cell size, and its MPI speed-up.

Builds diamond Si supercells (2x2x2, 4x4x4, 8x8x8, 16x16x16 conventional cells:
64, 512, 4,096, 32,768 atoms) at one grid spacing (``--per-cell`` points per
5.431 Å along each axis) and runs each through ``dpcharge reassemble`` as a
subprocess, recording wall time, points/s and peak resident memory (``ru_maxrss``
of the largest process, from ``/usr/bin/time -f %M``), and the machine load
(``/proc/loadavg``) before each run. Modes: ``serial`` (one process, ``--threads``
threads) and ``mpi`` (``mpirun -np 2``, one thread per rank). A run on a one-point
grid gives the fixed start-up time (TensorFlow import, model load), subtracted
for the net rate.

Usage::

    python benchmarks/scaling.py MODEL.pb --sizes 2 4 8 --per-cell 12 --modes serial1 mpi2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ase.build import bulk

LATTICE = 5.431
"""Si lattice constant in Å."""


def run(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run a command under ``/usr/bin/time``; return wall seconds, peak RSS in MB, load before."""
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    start = time.perf_counter()
    result = subprocess.run(
        ["/usr/bin/time", "-f", "MAXRSS %M", *command], capture_output=True, text=True, env=env
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stdout}\n{result.stderr}")
    rss = [line for line in result.stderr.splitlines() if line.startswith("MAXRSS")][-1]
    return wall, int(rss.split()[1]) / 1024, load


def command(mode: str, model: str, poscar: Path, grid: list[int], output: Path) -> list[str]:
    """Return the reassemble command line of a mode: ``serialT`` or ``mpiN`` (1 thread/rank)."""
    dpcharge = shutil.which("dpcharge") or str(Path(sys.executable).with_name("dpcharge"))
    base = [dpcharge, "reassemble", model, str(poscar), "-o", str(output)]
    base += ["--grid", *map(str, grid)]
    if mode.startswith("serial"):
        return [*base, "--threads", mode.removeprefix("serial")]
    ranks = mode.removeprefix("mpi")
    mpirun = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", ranks]
    return [*mpirun, *base, "--threads", "1"]


def main() -> None:
    """Run the benchmark and print one JSON line per run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--per-cell", type=int, default=12, help="grid points per 5.431 Å")
    parser.add_argument("--modes", nargs="+", default=["serial2", "serial1", "mpi2"])
    args = parser.parse_args()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for size in args.sizes:
            atoms = bulk("Si", "diamond", a=LATTICE, cubic=True).repeat(size)
            poscar = folder / f"POSCAR_{len(atoms)}"
            atoms.write(poscar, format="vasp")
            grid = [args.per_cell * size] * 3
            points = grid[0] * grid[1] * grid[2]
            for mode in args.modes:
                startup, _, _ = run(command(mode, args.model, poscar, [1, 1, 1], folder / "o"), env)
                wall, rss, load = run(command(mode, args.model, poscar, grid, folder / "o"), env)
                record = {
                    "atoms": len(atoms),
                    "grid": grid,
                    "points": points,
                    "spacing": round(LATTICE / args.per_cell, 4),
                    "mode": mode,
                    "wall_s": round(wall, 2),
                    "startup_s": round(startup, 2),
                    "points_per_s": round(points / wall),
                    "net_points_per_s": round(points / max(wall - startup, 1e-9)),
                    "peak_rss_mb": round(rss),
                    "load_before": load,
                }
                print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
