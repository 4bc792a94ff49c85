"""Speed of whole-grid prediction: the whole command, its phases, DeePMD-kit's DeepPot.eval.

Trains ``input_templates/si.json`` (the paper's network and the angular baseline; or
``--template``) for a few steps (speed does not depend on accuracy) in float32 (and float64
with ``--precisions``) on the Si64 density of tests/data, compresses it with ``dp compress -s
0.1`` (tabulated embedding), then measures, each in its own process (for its peak memory):

- command: the whole ``dpcharge reassemble model.pb CHGCAR -o CHGCAR_predicted`` on the Si64
  structure (72^3 = 373,248 points), wall time of the process;
- phases: the same work in one process, each phase timed: importing dpcharge's engine and
  TensorFlow, loading the model, reading the structure, predicting (``predict_grid``, the
  engine), writing the CHGCAR;
- engine / engine-compressed: ``DeepDensity.predict_grid`` on the whole Si64 grid with the
  model and with its compressed twin (model loading not included);
- compression-error: both models on the whole Si64 grid, the largest and mean difference;
- deeppot-200 / deeppot-2000: DeePMD-kit's ``DeepPot.eval(atomic=True)`` on frames of the
  64 atoms plus 200 (how the original Deep Charge scripts predict) or 2,000 grid points, one
  frame per call, on a part of the grid, rate extrapolated;
- si216: ``dpcharge reassemble`` of a Si216 cell (3x3x3 Si8, rattled) on a 108^3 grid (the
  spacing of the Si64 grid), wall time of the whole command;
- frames: the whole ``dpcharge reassemble model.pb frames.extxyz --frames :`` on four
  rattled copies of the Si64 structure (72^3 each): the model loaded once, one CHGCAR per
  frame; its wall time against ``command``'s gives the cost per extra frame;
- chunk-profile: one 2,000-point chunk on one thread, TensorFlow's trace of the graph (the
  fourth of four runs) summed into the embedding net, the environment matrix, the fitting net
  and the rest (the baseline and the glue), and the time outside the graph.

Each figure is printed with the machine load (``uptime``) at its end.

Usage::

    python benchmarks/reassemble_speed.py --workdir /tmp/bench [--threads 2] [--steps 10]
    python benchmarks/reassemble_speed.py --workdir /tmp/bench --only command phases engine
    python benchmarks/reassemble_speed.py --workdir /tmp/bench --only command frames
    python benchmarks/reassemble_speed.py --workdir /tmp/bench --threads 1 --only chunk-profile \\
        --baseline '{"basis": 12, "rcut": 5.0, "lmax": 6, "sel": [40]}'

``--template`` trains another template than si.json (e.g. ``input_templates/si_fast.json``);
``--baseline`` replaces its baseline (si.json's: 1,240 features) by another, e.g. 558 features.
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
SI_TEMPLATE = REPO / "input_templates" / "si.json"
DEEPPOT_POINTS = {200: 4_000, 2000: 10_000}
"""Grid points evaluated by each DeepPot.eval path (chunk size: points)."""
KINDS = (
    "command",
    "phases",
    "engine",
    "engine-compressed",
    "compression-error",
    "deeppot-200",
    "deeppot-2000",
    "si216",
    "frames",
    "chunk-profile",
)
FRAMES = 4
"""Structures of the ``frames`` measurement: one call predicts them all."""
TRAINING_POINTS = 60_000
"""Grid points converted for the few training steps: si.json's baseline fit needs 12,400."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--precisions", nargs="+", default=["float32"])
    parser.add_argument(
        "--template", type=Path, default=SI_TEMPLATE, help="training input (default si.json)"
    )
    parser.add_argument("--baseline", type=json.loads, help="its baseline replaced (JSON)")
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="+", choices=KINDS, default=KINDS, help="kinds to run")
    args = parser.parse_args()
    if args.measure:
        result = measure(*args.measure, args.threads)
        # peak resident memory (Linux: kB) of this process, or of the dpcharge child
        children = args.measure[0] in ("si216", "command", "frames")
        who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
        result["peak_mb"] = resource.getrusage(who).ru_maxrss / 1024
        print(json.dumps(result))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    models = {
        precision: train(args.workdir, precision, args.steps, args.template, args.baseline)
        for precision in args.precisions
    }
    print(
        "| precision | path | points | seconds | points/s | peak RSS (MB) | load (1/5/15 min) "
        "| details |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for precision, model in models.items():
        for kind in args.only:
            result = run_measurement(kind, model, args.threads)
            details = ", ".join(
                f"{key} {value:.3g}" for key, value in result.get("details", {}).items()
            )
            print(
                f"| {precision} | {kind} | {result['points']:,} | {result['seconds']:.1f} | "
                f"{result['points'] / result['seconds']:,.0f} | {result['peak_mb']:.0f} | "
                f"{load()} | {details} |",
                flush=True,
            )


def train(
    workdir: Path, precision: str, steps: int, template: Path, baseline: dict | None = None
) -> Path:
    """Train a template in the given precision for a few steps; return the frozen model.

    Its compressed twin (``dp compress``) is ``compressed.pb`` beside it. ``baseline``
    replaces the template's; the folder is named after the template and the baseline.
    """
    label = "".join(f"_{key}{value}" for key, value in (baseline or {}).items())
    if template.resolve() != SI_TEMPLATE:
        label = f"_{template.stem}{label}"
    folder = workdir / (precision + label.replace(" ", ""))
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
            TRAINING_POINTS,
            "-q",
            "--force",
        ]
    )
    config = json.loads(template.read_text())
    for section in ("descriptor", "fitting_net"):
        config["model"][section]["precision"] = precision
    if baseline is not None:
        config["model"]["fitting_net"]["baseline"] = baseline
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
    # -s 0.1: a table step of 0.1 (default 0.01); grid points come within ~0.04 Å of a
    # nucleus, so the default table was 720 MB and 4x slower than the uncompressed model
    compress = ["compress", "-i", "model.pb", "-o", "compressed.pb", "-t", "input.json"]
    run([dp, "--tf", *compress, "-s", 0.1], cwd=folder)
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
    if kind == "phases":
        return phases(model, threads)
    import numpy as np

    from dpcharge.chgcar import read_density
    from dpcharge.conventions import MIN_DISTANCE
    from dpcharge.grid import PeriodicImages, grid_points
    from dpcharge.inference import DeepDensity

    atoms, density = read_density(SI64)
    compressed = Path(model).parent / "compressed.pb"
    if kind in ("engine", "engine-compressed"):
        engine = DeepDensity(model if kind == "engine" else compressed, workers=threads)
        start = time.perf_counter()
        engine.predict_grid(atoms, density.shape)
        return {"points": density.size, "seconds": time.perf_counter() - start}
    if kind == "compression-error":
        start = time.perf_counter()
        full, tabulated = (
            DeepDensity(path, workers=threads).predict_grid(atoms, density.shape)
            for path in (model, compressed)
        )
        difference = np.abs(full - tabulated)
        return {
            "points": 2 * density.size,
            "seconds": time.perf_counter() - start,
            "details": {
                "max |difference| e/Å^3": float(difference.max()),
                "mean |difference| e/Å^3": float(difference.mean()),
                "mean |density| e/Å^3": float(np.abs(full).mean()),
            },
        }
    if kind == "command":
        output = Path(model).parent / "CHGCAR_predicted"
        output.unlink(missing_ok=True)
        start = time.perf_counter()
        run(
            [sys.executable, "-m", "dpcharge", "reassemble", model, SI64, "-o", output,
             "--threads", threads]
        )  # fmt: skip
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
    if kind == "frames":
        from ase.io import write

        folder = Path(model).parent / "frames"
        folder.mkdir(exist_ok=True)
        frames = []
        for seed in range(FRAMES):
            frame = atoms.copy()
            frame.rattle(0.05, seed=seed)
            frames.append(frame)
        trajectory = folder / "frames.extxyz"
        write(trajectory, frames, format="extxyz")
        for old in folder.glob("CHGCAR_*"):
            old.unlink()
        start = time.perf_counter()
        run(
            [sys.executable, "-m", "dpcharge", "reassemble", model, trajectory, "--frames", ":",
             "-o", folder / "CHGCAR", "--grid", *density.shape, "--threads", threads]
        )  # fmt: skip
        return {"points": FRAMES * density.size, "seconds": time.perf_counter() - start}
    if kind == "chunk-profile":
        return chunk_profile(model, atoms, density.shape)
    raise ValueError(kind)


def chunk_profile(model: str, atoms: object, shape: tuple[int, int, int]) -> dict:
    """Time one chunk on one thread and split the graph's time by what its ops belong to."""
    import numpy as np
    import tensorflow as tf

    from dpcharge.conventions import CHUNK
    from dpcharge.grid import grid_points
    from dpcharge.inference import DeepDensity

    engine = DeepDensity(model, workers=1)
    points = grid_points(atoms.get_cell().array, shape, np.arange(CHUNK))
    graph = engine._graphs[0]  # the engine's own session, traced where it runs
    untraced, traces = graph._session.run, []
    options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)

    def traced(output: object, feed_dict: dict) -> object:
        metadata = tf.compat.v1.RunMetadata()
        result = untraced(output, feed_dict=feed_dict, options=options, run_metadata=metadata)
        traces.append(metadata.step_stats)
        return result

    graph._session.run = traced
    for _ in range(4):  # the first run builds TensorFlow's kernels
        start = time.perf_counter()
        engine.predict_points(atoms, points)
        seconds = time.perf_counter() - start
    prefixes = {
        "embedding": ("filter_type_",),
        "environment": ("ProdEnvMat",),
        "fitting": ("layer_", "final_layer_"),
    }
    parts = dict.fromkeys([*prefixes, "baseline and glue"], 0.0)
    for device in traces[-1].dev_stats:
        for node in device.node_stats:
            part = next(
                (part for part, names in prefixes.items() if node.node_name.startswith(names)),
                "baseline and glue",
            )
            parts[part] += node.all_end_rel_micros / 1e3
    details = {f"{part} ms": value for part, value in parts.items()}
    details["outside the graph ms"] = seconds * 1e3 - sum(parts.values())
    return {"points": len(points), "seconds": seconds, "details": details}


def phases(model: str, threads: int) -> dict:
    """Do what ``dpcharge reassemble model CHGCAR`` does, timing each phase (this process)."""
    start = time.perf_counter()
    from dpcharge.chgcar import read_structure, write_chgcar
    from dpcharge.inference import DeepDensity

    times = {"import dpcharge": time.perf_counter() - start}
    clock = time.perf_counter()
    DeepDensity(model, workers=threads)  # the first also imports TensorFlow and DeePMD-kit
    first = time.perf_counter() - clock
    clock = time.perf_counter()
    engine = DeepDensity(model, workers=threads)
    times["load model"] = time.perf_counter() - clock
    times["import TensorFlow, DeePMD-kit"] = first - times["load model"]
    clock = time.perf_counter()
    atoms = read_structure(SI64)
    times["read structure"] = time.perf_counter() - clock
    shape = (72, 72, 72)
    clock = time.perf_counter()
    density = engine.predict_grid(atoms, shape)
    times["predict"] = time.perf_counter() - clock
    output = Path(model).parent / "CHGCAR_phases"
    output.unlink(missing_ok=True)
    clock = time.perf_counter()
    write_chgcar(output, atoms, density)
    times["write CHGCAR"] = time.perf_counter() - clock
    total = sum(times.values()) - times["load model"]  # the command loads the model once
    return {"points": density.size, "seconds": total, "details": times}


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
