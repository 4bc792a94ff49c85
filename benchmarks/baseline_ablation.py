"""Ablation on crystalline Si64: the atomic-density baseline, the loss, the rate, the widths.

Each run is `accuracy.py`'s workflow (``dpcharge convert`` of 1e5 random points of one Si64
structure, ``dp --tf train`` of ``input_templates/si.json`` with start_lr 3e-3 decaying to 1e-5
over the run, ``dp --tf freeze``, ``dpcharge test`` on every grid point of the unseen structure
seed 6), with ``model.fitting_net.baseline`` absent, fixed at its least-squares fit, or trained
with the network, and (group ``loss``) with the baseline fixed and the loss ``mae`` or
``huber`` (delta 0.003 e/Å^3, about the MAE of such runs) in place of ``mse``; groups
``optimiser`` and ``width`` add to the fixed baseline and mae the real-real pairs excluded and
tcmalloc (``fast``), then a higher start rate or a narrower network. The run without
baseline at 10,000 steps is the same command as
``benchmarks/results/si64_1x_100000_lr3e-03.json`` (same data bytes, seeds and settings). One
thread per run; training CPU seconds are the user + system time of ``dp train``. Runs work in
``benchmarks/runs/<run>/`` and write ``benchmarks/runs/baseline_results/<run>.json`` (neither
is committed); ``--table`` prints the Markdown table of ``docs/baseline.md``. ``--alone`` fits
the baseline alone (no network) to 1e5 points of Si64 seed 1 (computed at Gamma, and with
2x2x2 k-points: ``si64k``) and of the PAW H2O8 density of ``tests/data`` and prints its errors
on every grid point of Si64 seed 6 and of H2O8 itself; ``si64_self1`` and ``si64_self6`` fit
and test each Si64 structure on itself, ``si64_gamma_to_k`` fits seed 1 at Gamma and tests
seed 6 with k-points, ``water32``, ``water32_2structures`` and ``water32_4structures`` fit one,
two or four water structures and test the unseen seed 3 (``--cases`` picks some).

Usage (one training at a time, niced, on a shared machine)::

    nice -n 10 python benchmarks/baseline_ablation.py --runs screen
    nice -n 10 python benchmarks/baseline_ablation.py --runs overhead budget
    nice -n 10 python benchmarks/baseline_ablation.py --runs loss --jobs 2
    python benchmarks/baseline_ablation.py --alone --table
    python benchmarks/baseline_ablation.py --alone --cases si64k
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import accuracy
import numpy as np
from accuracy import RUNS, SI64, Run, density_file, perform_each, tool

from dpcharge.fitting import Baseline, baseline_features, fit_baseline

RESULTS = RUNS / "baseline_results"
DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
SI64_TRAIN, SI64_TEST = density_file("si64", 1), density_file("si64", SI64.test_seed)

OLD_TEMPLATE = (("learning_rate.start_lr", 3e-3),)
"""The templates before issue 15's levers: ``accuracy.py``'s paper protocol (mse, no baseline,
no excluded pairs) with the start rate 3e-3 instead of 1e-3."""

FIXED8 = (("model.fitting_net.baseline", {"basis": 8}),)
MAE = (("loss", {"type": "density", "function": "mae"}),)
FAST = (("model.descriptor.exclude_types", [[0, 0]]),)
"""No embedding of real atoms' neighbours (step_cost.py): same model at grid points, cheaper."""


RATE = {"start_lr": 1e-2, "stop_lr": 1e-5}
"""The rate range of ``fast_mae_lr1e-2``, for the schedules that replace its exponential decay."""


@dataclass(frozen=True)
class Variant:
    """Changes to the template: settings, grid points per frame, allocator of ``dp train``."""

    settings: tuple[tuple[str, object], ...]
    points_per_frame: int = 200
    allocator: str = "glibc"


VARIANTS = {
    "none": Variant(()),
    "fixed8": Variant(FIXED8),
    "trained8": Variant((("model.fitting_net.baseline", {"basis": 8, "trainable": True}),)),
    "fixed8_mae": Variant(FIXED8 + MAE),
    "fixed8_huber": Variant(
        (
            *FIXED8,
            ("loss", {"type": "density", "function": "huber", "huber_delta": 0.003}),
        )
    ),
    "fast_mae": Variant(FIXED8 + FAST + MAE, allocator="tcmalloc"),
    "fast_mae_lr1e-2": Variant(
        (*FIXED8, *FAST, *MAE, ("learning_rate.start_lr", 1e-2)), allocator="tcmalloc"
    ),
    "fast_mae_lr3e-2": Variant(
        (*FIXED8, *FAST, *MAE, ("learning_rate.start_lr", 3e-2)), allocator="tcmalloc"
    ),
    "fast_mae_axis8": Variant(
        (*FIXED8, *FAST, *MAE, ("model.descriptor.axis_neuron", 8)), allocator="tcmalloc"
    ),
    "fast_mae_fit120": Variant(
        (*FIXED8, *FAST, *MAE, ("model.fitting_net.neuron", [120, 120, 120])), allocator="tcmalloc"
    ),
    # the whole schedule replaced: no decay_steps, the rate follows a curve over the run
    "fast_mae_cosine": Variant(
        (*FIXED8, *FAST, *MAE, ("learning_rate", {"type": "cosine", **RATE})),
        allocator="tcmalloc",
    ),
    "fast_mae_wsd": Variant(
        (
            *FIXED8,
            *FAST,
            *MAE,
            ("learning_rate", {"type": "wsd", **RATE, "decay_phase_ratio": 0.3}),
        ),
        allocator="tcmalloc",
    ),
}
"""Variants: baseline (absent: none), loss (default mse), descriptor, rate, batch, allocator."""

GROUPS = {
    "screen": [("fixed8", 10_000), ("trained8", 10_000)],
    "budget": [("fixed8", 20_000)],
    "overhead": [("none", 2_000), ("fixed8", 2_000)],
    "loss": [("fixed8_mae", 10_000), ("fixed8_huber", 10_000)],
    "optimiser": [("fast_mae", 20_000), ("fast_mae_lr1e-2", 20_000), ("fast_mae_lr3e-2", 20_000)],
    # axis_neuron 8 and a 120-wide fitting net: 21 % and 16 % cheaper steps (step_cost.py),
    # so 25,000 steps cost what 20,000 do
    "width": [("fast_mae_axis8", 25_000), ("fast_mae_fit120", 25_000)],
    # against fast_mae_lr1e-2 (exponential decay from the same start rate)
    "schedule": [("fast_mae_cosine", 20_000), ("fast_mae_wsd", 20_000)],
}
"""Runs of each group: (variant, steps)."""


def ablation_run(name: str, steps: int) -> Run:
    """Return the one-structure Si64 run of a variant."""
    variant = VARIANTS[name]
    return Run(
        f"si64_baseline_{name}_{steps}",
        "baseline",
        SI64,
        (1,),
        10**5,
        OLD_TEMPLATE + variant.settings,
        steps,
        variant.points_per_frame,
        variant.allocator,
    )


@dataclass(frozen=True)
class Alone:
    """A least-squares fit of the baseline alone: training and test densities, descriptor.

    Attributes
    ----------
    name
        Folder name.
    train, test
        Densities: 1e5 random points of each of ``train`` are fitted, every grid point of
        ``test`` is predicted.
    elements
        Real elements in model order.
    sel
        The template's se_e2_a ``sel``, the grid type last.
    angular
        Baselines with the power spectrum (``lmax``) fitted besides the radial ones.
    """

    name: str
    train: tuple[Path, ...]
    test: Path
    elements: tuple[str, ...]
    sel: tuple[int, ...]
    angular: tuple[dict, ...] = ()


RIDGES = (0.0, 1e-8, 1e-7)
"""Ridge penalties tried on Al-Mg (`fit_baseline`)."""
RADIAL = ({"basis": 8}, {"basis": 16, "rcut": 5.0})
"""The radial baselines fitted alone for every case."""

ALONE = (
    Alone(
        "si64",
        (SI64_TRAIN,),
        SI64_TEST,
        ("Si",),
        (72, 0),
        # 1,240, 558 and 2,330 features
        (
            {"basis": 16, "rcut": 5.0, "lmax": 8},
            {"basis": 12, "rcut": 5.0, "lmax": 6},
            {"basis": 20, "rcut": 5.0, "lmax": 10},
        ),
    ),
    # each structure fitted and tested on itself: how much of the unseen error is transfer,
    # and (6 Å) whether what the 5 Å baseline leaves lies farther out
    *(
        Alone(
            f"si64_self{seed}",
            (path,),
            path,
            ("Si",),
            (72, 0),
            ({"basis": 16, "rcut": 5.0, "lmax": 8}, {"basis": 16, "rcut": 6.0, "lmax": 8}),
        )
        for seed, path in ((1, SI64_TRAIN), (SI64.test_seed, SI64_TEST))
    ),
    # the same two structures with 2x2x2 shifted k-points instead of Gamma only: is the
    # error floor of a local model near 6e-4 the reference's Brillouin-zone sampling?
    Alone(
        "si64k",
        (density_file("si64k", 1),),
        density_file("si64k", SI64.test_seed),
        ("Si",),
        (72, 0),
        ({"basis": 16, "rcut": 5.0, "lmax": 8}, {"basis": 16, "rcut": 6.0, "lmax": 8}),
    ),
    # fitted at Gamma, tested against the k-point density: how far from the converged one
    Alone(
        "si64_gamma_to_k",
        (SI64_TRAIN,),
        density_file("si64k", SI64.test_seed),
        ("Si",),
        (72, 0),
        ({"basis": 16, "rcut": 5.0, "lmax": 8},),
    ),
    # PAW (Quantum ESPRESSO), one structure: the test is every grid point of the same one
    Alone(
        "h2o8_paw",
        (DATA / "CHGCAR_H2O8_qe.gz",),
        DATA / "CHGCAR_H2O8_qe.gz",
        ("O", "H"),
        (48, 96, 0),
        # two elements: 16 channels, 968 features
        ({"basis": 8, "rcut": 5.0, "lmax": 6},),
    ),
    # water32 (PAW): one, two or four structures fitted, the unseen seed 3 tested; water.json's
    # baseline, then narrower Gaussians for the augmentation peaks at the nuclei, and more of
    # them (12 Gaussians, 2,124 features, on four structures ran out of 24 GB in the fit)
    *(
        Alone(
            name,
            tuple(density_file("water32", seed) for seed in seeds),
            density_file("water32", 3),
            ("O", "H"),
            (48, 96, 0),
            (
                {"basis": 8, "rcut": 5.0, "lmax": 6},
                {"basis": 8, "rcut": 5.0, "lmax": 6, "width_min": 0.1},
                {"basis": 10, "rcut": 5.0, "lmax": 6, "width_min": 0.1},
            ),
        )
        for name, seeds in (
            ("water32", (1,)),
            ("water32_2structures", (1, 2)),
            ("water32_4structures", (1, 2, 4, 5)),
        )
    ),
    # four water structures, no longer overfitting: higher angular order, a longer reach
    Alone(
        "water32_4structures_shape",
        tuple(density_file("water32", seed) for seed in (1, 2, 4, 5)),
        density_file("water32", 3),
        ("O", "H"),
        (48, 96, 0),
        ({"basis": 8, "rcut": 5.0, "lmax": 8}, {"basis": 8, "rcut": 6.0, "lmax": 6}),
    ),
    # Al26Mg6 from one structure overfits: a ridge penalty on a larger basis (2,724
    # features), the penalty chosen on seed 2, then tested on the unseen seed 3
    *(
        Alone(
            f"almg32_seed{seed}",
            (density_file("almg32", 1),),
            density_file("almg32", seed),
            ("Al", "Mg"),
            (80, 32, 0),
            (
                {"basis": 8, "rcut": 5.0, "lmax": 6},
                {"basis": 12, "rcut": 5.0, "lmax": 8, "ridge": RIDGES},
            ),
        )
        for seed in (2, 3)
    ),
    # the same penalties on si.json's baseline
    Alone(
        "si64_ridge",
        (SI64_TRAIN,),
        SI64_TEST,
        ("Si",),
        (72, 0),
        ({"basis": 16, "rcut": 5.0, "lmax": 8, "ridge": RIDGES},),
    ),
)


def baseline_alone(case: Alone, options: dict) -> list[dict[str, float]]:
    """Fit the baseline alone to 1e5 points of a density; its errors on every test point.

    The model's own fit uses only its statistics batches (2000 points by default).
    ``options["ridge"]`` may list several penalties: each is fitted to the same features.

    Returns
    -------
    list of dict
        For each ridge penalty: density and remainder standard deviations on the training
        points, and the MAE of the baseline plus the mean remainder over every grid point
        of the test density, e/Å^3.
    """
    ridges = np.atleast_1d(options.get("ridge", 0.0)).tolist()
    baseline = Baseline(**{**options, "ridge": 0.0})
    sets = alone_sets(case)
    features, density = stacked_features(sets["train"], case, baseline)
    coefficients = np.stack([fit_baseline(features, density, ridge=r) for r in ridges], 1)
    remainder = density[:, None] - features @ coefficients
    offset = remainder.mean(axis=0)
    # the whole test grid frame by frame: its features would not fit in memory at once
    absolute_error, test_density = [], []
    for test_features, density_at_points in frame_features(sets["test"], case, baseline):
        error = test_features @ coefficients + offset - density_at_points[:, None]
        absolute_error.append(np.abs(error))
        test_density.append(density_at_points)
    absolute_error, test_density = np.concatenate(absolute_error), np.concatenate(test_density)
    return [
        {
            "ridge": ridge,
            "features": len(coefficients),
            "train_density_std": float(density.std()),
            "train_remainder_std": float(remainder[:, i].std()),
            "test_mae": float(absolute_error[:, i].mean()),
            "test_density_mean": float(test_density.mean()),
            "test_points": int(test_density.size),
        }
        for i, ridge in enumerate(ridges)
    ]


def alone_sets(case: Alone) -> dict[str, Path]:
    """Convert (once) 1e5 random points of the training density and every test grid point.

    Returns
    -------
    dict
        The deepmd/npy folders of ``train`` and ``test``.
    """
    folder = RUNS / "baseline_alone" / case.name
    folder.mkdir(parents=True, exist_ok=True)
    sets = {}
    for role, paths, extra in (
        ("train", case.train, ["--points", "100000"]),
        ("test", (case.test,), ["--all-points"]),
    ):
        output = folder / role
        if not output.exists():
            command = [tool("dpcharge"), "convert", *map(str, paths), "-o", str(output), "-q"]
            command += [*extra, "--type-map", *case.elements]
            subprocess.run(command, check=True)
        sets[role] = output
    return sets


def frame_features(data: Path, case: Alone, baseline: Baseline) -> Iterator[tuple[np.ndarray, ...]]:
    """Yield the baseline features and the density (e/Å^3) at the grid points of each frame."""
    for system in sorted(path.parent for path in data.glob("*/type.raw")):
        types = np.loadtxt(system / "type.raw", dtype=int)
        grid = types == len(case.elements)
        for frames in sorted(system.glob("set.*")):
            coords, boxes = np.load(frames / "coord.npy"), np.load(frames / "box.npy")
            labels = np.load(frames / "atom_ener.npy")
            for coord, box, label in zip(coords, boxes, labels, strict=True):
                yield baseline_features(coord, box, types, list(case.sel), baseline), label[grid]


def stacked_features(data: Path, case: Alone, baseline: Baseline) -> tuple[np.ndarray, ...]:
    """Return the features and densities (e/Å^3) of every grid point of a converted set."""
    features, density = zip(*frame_features(data, case, baseline), strict=True)
    return np.concatenate(features), np.concatenate(density)


def fitted(data: Path, case: Alone, baseline: Baseline) -> tuple[np.ndarray, ...]:
    """Fit the baseline alone by least squares to every grid point of a converted set.

    Returns
    -------
    tuple
        The features, the densities (e/Å^3), the coefficients and the remainder (e/Å^3).
    """
    features, density = stacked_features(data, case, baseline)
    coefficients = fit_baseline(features, density, ridge=baseline.ridge)
    return features, density, coefficients, density - features @ coefficients


def table() -> str:
    """Return the Markdown table of every finished run."""
    lines = [
        "| variant | baseline | loss | points/frame | allocator | steps | CPU min "
        "| unseen MAE (e/Å^3) | NMAE % | R² | electrons (256) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(RESULTS.glob("*.json"), key=lambda p: (len(p.name), p.name)):
        result = json.loads(path.read_text())
        test = result["tests"].get("unseen")
        if test is None:
            continue
        settings = result["settings"]
        baseline = settings.get("model.fitting_net.baseline", "none")
        loss = settings.get("loss", {})
        function = loss.get("function", "mse") + (
            f" {loss['huber_delta']}" if "huber_delta" in loss else ""
        )
        variant = result["run"].removeprefix("si64_baseline_").rsplit("_", 1)[0]
        lines.append(
            f"| {variant} | {json.dumps(baseline)} | {function} "
            f"| {result.get('points_per_frame', 200)} | {result.get('allocator', 'glibc')} "
            f"| {result['steps']:,} | {result['train_cpu_s'] / 60:.1f} "
            f"| {test['mae']:.3e} | {test['nmae']:.3f} | {test['r2']:.6f} "
            f"| {test['electrons_predicted']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", choices=sorted(GROUPS), nargs="+", default=[])
    parser.add_argument("--table", action="store_true", help="print the results table")
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once, one thread each")
    parser.add_argument(
        "--alone", action="store_true", help="errors of the least-squares baseline alone"
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=[case.name for case in ALONE],
        default=[case.name for case in ALONE],
        help="with --alone: the densities to fit (default: all)",
    )
    args = parser.parse_args(argv)
    accuracy.RESULTS = RESULTS  # perform() writes its results here, not in benchmarks/results
    runs = [(variant, steps) for group in args.runs for variant, steps in GROUPS[group]]
    perform_each([ablation_run(*run) for run in runs], args.jobs)
    if args.alone:
        for case in (case for case in ALONE if case.name in args.cases):
            for options in (*RADIAL, *case.angular):
                for result in baseline_alone(case, options):
                    print(case.name, options, result, flush=True)
    if args.table:
        print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
