"""Cost of a training step of the Si64 density model: allocator, real-atom work, network size.

Issue 15, lever 3: a cheaper step is more steps in the same CPU hour. Each variant trains
``input_templates/si.json`` (with the fixed baseline of ``docs/baseline.md``) for ``--steps``
steps on 1e5 random points of one Si64 structure, one thread, and reports DeePMD-kit's
average time per step (its log line "average training time", which leaves out the first
``disp_freq`` steps, so start-up is not in it), the user + system CPU seconds of the whole
``dp train`` (start-up included) and the time per grid point of a step. Variants change the
memory allocator (``LD_PRELOAD`` of jemalloc or tcmalloc, or glibc's malloc told to keep freed
memory), the grid points per frame of the conversion, the descriptor (``exclude_types`` of the
real-real pair, which skips the embedding of real atoms' neighbours, whose outputs the density
never uses; se_atten) or the network sizes.

Runs work in ``benchmarks/runs/step_cost/<variant>/`` (not committed) and append their figures
to ``benchmarks/runs/step_cost/results.jsonl``; ``--table`` prints the Markdown table of
``docs/benchmarks.md`` (section 5) from it (the mean of the repeats of each variant).

Usage::

    nice -n 10 python benchmarks/step_cost.py --variants template exclude_real \
        --allocators glibc jemalloc tcmalloc --repeats 2
    python benchmarks/step_cost.py --table
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from pathlib import Path

from accuracy import (
    ALLOCATORS,
    RUNS,
    SI64,
    Run,
    density_file,
    execute,
    tool,
    training_input,
)
from baseline_ablation import FAST, FIXED8, OLD_TEMPLATE, Variant
from budget import ANGULAR, STATISTICS_BATCHES

FOLDER = RUNS / "step_cost"

ANGULAR_SI = (
    ("model.fitting_net.baseline", ANGULAR[1]),
    ("model.data_stat_nbatch", STATISTICS_BATCHES),
)
"""The angular baseline of the budget runs (``budget.py``), one element."""

BASE = OLD_TEMPLATE + FIXED8
"""The runs of docs/baseline.md: the template at start_lr 3e-3 with the fixed baseline."""


SE_ATTEN = {
    "type": "se_atten",
    # one neighbour list for all types, cut to the nearest `sel` BEFORE the excluded pairs are
    # masked: the ~180 other grid points of a 200-point frame within 6.5 Å take slots too, so
    # `sel` must cover them and the ~58 Si atoms
    "sel": 280,
    "rcut": 6.5,
    "rcut_smth": 0.0,
    "neuron": [20, 40, 80],
    "axis_neuron": 16,
    "attn": 64,
    "attn_layer": 2,
    "exclude_types": [[0, 0], [1, 1]],
    "precision": "float32",
    "seed": 1,
}

VARIANTS = {  # the allocator is chosen apart (--allocators): Variant.allocator is not used
    "template": Variant(()),
    "exclude_real": Variant(FAST),
    "exclude_real_100": Variant(FAST, points_per_frame=100),
    "exclude_real_1000": Variant(FAST, points_per_frame=1000),
    "exclude_real_axis8": Variant((*FAST, ("model.descriptor.axis_neuron", 8))),
    "exclude_real_fit120": Variant((*FAST, ("model.fitting_net.neuron", [120] * 3))),
    "exclude_real_embed16": Variant((*FAST, ("model.descriptor.neuron", [16, 32, 64]))),
    # a descriptor with attention among the neighbours (lever 5), without the baseline, which
    # needs se_e2_a's neighbour list; se_e3 cannot describe grid points in the TF backend
    # (a sel of 0 for the grid type divides by zero, and it has no exclude_types)
    "se_atten": Variant((("model.fitting_net.baseline", None), ("model.descriptor", SE_ATTEN))),
    # the angular baseline of si.json with the descriptor's 72 neighbour slots, and with the
    # 40 nearest (at most 33 Si lie within its 5 Å of a Si64 grid point)
    "exclude_real_angular": Variant((*FAST, *ANGULAR_SI)),
    "exclude_real_angular_sel40": Variant(
        (*FAST, *ANGULAR_SI, ("model.fitting_net.baseline", {**ANGULAR[1], "sel": [40]}))
    ),
}


def measure(name: str, allocator: str, steps: int) -> dict:
    """Train one variant for ``steps`` steps with an allocator; return its costs."""
    variant = VARIANTS[name]
    folder = FOLDER / name
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "log.txt"
    log.unlink(missing_ok=True)
    if not (folder / "data").exists():
        convert = [tool("dpcharge"), "convert", str(density_file("si64", 1)), "-o", "data"]
        convert += ["--type-map", "Si", "--points", "100000", "-q"]
        convert += ["--points-per-frame", str(variant.points_per_frame)]
        execute(convert, folder, 1, log)
    run = Run(name, "step_cost", SI64, (1,), 10**5, BASE + variant.settings, steps)
    config = training_input(run, steps)
    config["training"]["disp_freq"] = steps // 4
    (folder / "input.json").write_text(json.dumps(config, indent=2))
    command = [tool("dp"), "--tf", "train", "input.json", "--skip-neighbor-stat"]
    wall, cpu = execute(command, folder, 1, log, allocator=allocator)
    average = re.search(r"average training time: ([0-9.]+) s/batch", log.read_text())
    step = float(average.group(1))
    return {
        "variant": name,
        "allocator": allocator,
        "steps": steps,
        "points_per_frame": variant.points_per_frame,
        "step_s": step,
        "point_us": 1e6 * step / variant.points_per_frame,
        "train_wall_s": round(wall, 1),
        "train_cpu_s": round(cpu, 1),
    }


def table(path: Path) -> str:
    """Return the Markdown table of the measured variants (means over repeats)."""
    rows: dict[tuple[str, str, int], list[dict]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        key = record["variant"], record["allocator"], record["steps"]
        rows.setdefault(key, []).append(record)
    lines = [
        "| variant | allocator | steps | points per frame | repeats | s per step "
        "| µs per point-step | CPU s of dp train | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, allocator, steps), records in rows.items():

        def mean(key: str, records: list[dict] = records) -> float:
            return sum(r[key] for r in records) / len(records)

        lines.append(
            f"| {name} | {allocator} | {steps:,} | {records[0]['points_per_frame']} "
            f"| {len(records)} "
            f"| {mean('step_s'):.4f} | {mean('point_us'):.0f} | {mean('train_cpu_s'):.0f} "
            f"| {mean('train_wall_s'):.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=[])
    parser.add_argument("--allocators", nargs="+", choices=sorted(ALLOCATORS), default=["glibc"])
    parser.add_argument("--steps", type=int, default=1500, help="training steps per variant")
    parser.add_argument("--repeats", type=int, default=1, help="measurements of each variant")
    parser.add_argument("--table", action="store_true", help="print the results table")
    args = parser.parse_args(argv)
    results = FOLDER / "results.jsonl"
    FOLDER.mkdir(parents=True, exist_ok=True)
    for _ in range(args.repeats):
        for name, allocator in itertools.product(args.variants, args.allocators):
            record = measure(name, allocator, args.steps)
            with results.open("a") as stream:
                stream.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)
    if args.table:
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
