"""Peak memory and time of reading a CHGCAR: dpcharge's `read_density` against ase.

Writes a 300^3 CHGCAR (`write_chgcar` of a smooth density on the real Si8 cell of
tests/data), then reads it, and the real 72^3 Si64 file of tests/data (plain and
gzip), each in a fresh subprocess, with `read_density` and with ase's
``VaspChargeDensity``. Peak memory is the process's peak resident set size during
the read (``VmHWM``, reset just before it through ``/proc/self/clear_refs``) less
its resident size before (``VmRSS``), so it counts everything the read allocates
(numpy arrays, Python objects, gzip buffers) and not the imports::

    python benchmarks/reader_memory.py            # about 3 minutes on 2 cores
    python benchmarks/reader_memory.py --size 100 # a quicker check
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from dpcharge.chgcar import read_density, write_chgcar

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"

MEASURE = """
import gc, json, sys, time
reader, path = sys.argv[1], sys.argv[2]

def status(key):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) for line in lines if line.startswith(key))

if reader == "ase":
    from ase.calculators.vasp import VaspChargeDensity
    read = lambda: VaspChargeDensity(path).chg[0]
else:
    from dpcharge.chgcar import read_density
    read = lambda: read_density(path)[1]
gc.collect()
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # reset VmHWM to the current resident size
before = status("VmRSS:")
start = time.perf_counter()
density = read()
seconds = time.perf_counter() - start
peak = status("VmHWM:") - before
print(json.dumps({"grid_mib": density.nbytes / 2**20, "peak_mib": peak / 1024, "s": seconds}))
"""
"""Run in a fresh interpreter per measurement (Linux: /proc/self/status, clear_refs)."""


def smooth_density(shape: tuple[int, int, int]) -> np.ndarray:
    """A smooth, positive periodic density in e/Å^3 on a grid."""
    x, y, z = (np.linspace(0, 2 * np.pi, n, endpoint=False) for n in shape)
    return 0.05 + 0.02 * (
        np.cos(x)[:, None, None] * np.cos(y)[None, :, None] + np.sin(z)[None, None, :]
    )


def measure(reader: str, path: Path) -> dict:
    """Peak RSS increase (MiB), time (s) and grid size (MiB) of one read."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, reader, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def main() -> None:
    """Write the files, measure each reader on each file, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=300, help="grid points per axis")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        atoms, _ = read_density(DATA / "CHGCAR_Si8_qe.gz")
        large = folder / f"CHGCAR_{args.size}"
        write_chgcar(large, atoms, smooth_density((args.size,) * 3))
        si64 = folder / "CHGCAR_Si64"
        with gzip.open(DATA / "CHGCAR_Si64_gamma_qe.gz", "rb") as source, open(si64, "wb") as out:
            shutil.copyfileobj(source, out)
        cases = [
            (f"{args.size}^3 plain", large, ("dpcharge", "ase")),
            ("Si64 72^3 plain", si64, ("dpcharge", "ase")),
            ("Si64 72^3 gzip", DATA / "CHGCAR_Si64_gamma_qe.gz", ("dpcharge",)),
        ]
        print(f"{'file':18} {'reader':9} {'grid MiB':>9} {'peak MiB':>9} {'peak/grid':>9} {'s':>7}")
        for name, path, readers in cases:
            for reader in readers:
                r = measure(reader, path)
                ratio = r["peak_mib"] / r["grid_mib"]
                print(
                    f"{name:18} {reader:9} {r['grid_mib']:9.1f} {r['peak_mib']:9.1f} "
                    f"{ratio:9.2f} {r['s']:7.2f}"
                )


if __name__ == "__main__":
    main()
