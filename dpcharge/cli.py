"""The ``dpcharge`` command line: argument parsing, messages, progress and exit status.

Each subcommand has a ``_add_<name>`` function that declares its options and a
``_run_<name>`` function that does the work through the library. The parser is
built without importing TensorFlow, DeePMD-kit or matplotlib, so ``--help``
answers at once. A user's mistake (`InputError`) ends in a one-line message that
names the flag at fault and exit status 2, with no output written; any other
failure is a bug and keeps its traceback (exit status 1).
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from dpcharge import __version__
from dpcharge.conventions import (
    CHUNK,
    COMPONENTS,
    GRID_TYPE,
    MALLOC_KEEP_BYTES,
    POINTS,
    POINTS_PER_FRAME,
    RANKING_SPACING,
    SPACING,
    THRESHOLDS,
    UNIFORM_SHARE,
)
from dpcharge.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    from ase import Atoms

    from dpcharge.espresso import PwInput
    from dpcharge.inference import DeepDensity

FLAGS = {
    "chunk": "--chunk",
    "component": "--component",
    "electrons": "--nelect",
    "frames": "--frames",
    "count": "-n",
    "models": "MODEL",
    "deviation": "--deviation",
    "json": "--json",
    "magnetization": "--magnetization",
    "moment": "--moment",
    "npy": "--npy",
    "output": "-o/--output",
    "plots": "--plots",
    "points": "--points",
    "points_per_frame": "--points-per-frame",
    "seed": "--seed",
    "shape": "--grid",
    "spacing": "--spacing",
    "species": "--species",
    "thresholds": "--thresholds",
    "type_map": "--type-map",
    "uniform_share": "--uniform-share",
    "validation": "--validation",
    "workers": "--threads",
}
"""The flag that sets each library parameter named in an `InputError`."""

HINTS = {
    "points": "choose fewer with --points, or every point once with --all-points",
    "species": "name the elements of VASP 4 files with --species, in the file's order",
    "frames": "choose frames with --frames (e.g. 0, -1, or : for all)",
}
"""What to do about a refused parameter, added to its message."""

BYTES_PER_POINT = 24
"""Memory per grid point of a prediction (float64 density, a copy to scale or write, slack)."""

TENSORFLOW_BYTES = 1 << 30
"""Memory of TensorFlow with a loaded model, roughly."""

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
"""Parameters of glibc's ``mallopt`` (malloc.h)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dpcharge`` command line; return the exit status."""
    args = _parser().parse_args(argv)
    _keep_freed_memory()
    try:
        args.run(args)
    except InputError as error:
        from dpcharge.parallel import launched_rank

        if launched_rank() == 0:  # under MPI every rank fails alike: one message
            print(f"dpcharge: error: {_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dpcharge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped (head, less)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


def _keep_freed_memory() -> None:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    Otherwise TensorFlow's buffers of every chunk are unmapped and faulted in again: a
    prediction spent a third of its time in the kernel. One arena for all threads: the
    others, at most 64 MB each, would map larger buffers apart anyway. Other C libraries
    are left alone.
    """
    import ctypes

    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(M_TRIM_THRESHOLD, MALLOC_KEEP_BYTES)
        mallopt(M_MMAP_THRESHOLD, MALLOC_KEEP_BYTES)
        mallopt(M_ARENA_MAX, 1)


def _message(error: InputError) -> str:
    """Speak of the flag that set the refused parameter, with a hint where one helps."""
    flag = FLAGS.get(error.parameter or "")
    if flag is None:
        return str(error)
    hint = HINTS.get(error.parameter or "")
    return f"{flag}: {error.message}" + (f" ({hint})" if hint else "")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpcharge",
        description="Learn and predict DFT electron charge densities with DeePMD-kit "
        "(Deep Charge): grid points become pseudo-atoms of a virtual type whose "
        "per-atom output is the density in e/Å^3.",
    )
    parser.add_argument("--version", action="version", version=f"dpcharge {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_convert(commands)
    _add_reassemble(commands)
    _add_test(commands)
    _add_select(commands)
    return parser


def _add_convert(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "convert",
        help="turn CHGCARs into DeePMD-kit training data (deepmd/npy)",
        description="Turn VASP volumetric files (CHGCAR, CHG, AECCAR*, PARCHG; plain or "
        "gzip) into deepmd/npy systems: every frame holds all real atoms plus grid "
        "points as atoms of a virtual type, labelled atom_ener = density in e/Å^3 "
        "(0 for real atoms). One system per file, in DIR/<name>, or DIR/train/<name> "
        "and DIR/valid/<name> with --validation. Train on it with "
        "`dp --tf train --skip-neighbor-stat input.json` (templates in input_templates/).",
    )
    parser.add_argument("files", nargs="+", metavar="CHGCAR", help="density files to convert")
    parser.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="output folder (must not exist)"
    )
    parser.add_argument(
        "--type-map",
        nargs="+",
        metavar="ELEMENT",
        help="real elements in the order of the model's type map (the grid-point type is "
        "appended last); default: the elements of all files in order of appearance",
    )
    parser.add_argument(
        "--species",
        nargs="+",
        metavar="ELEMENT",
        help="element names of VASP 4 files, which name none, in the order of the file's "
        "species counts (every VASP 4 file of the call must have these species)",
    )
    parser.add_argument(
        "--virtual-type",
        default=GRID_TYPE,
        metavar="NAME",
        help="name of the grid-point type, which must be no element of the structures "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--points",
        type=int,
        default=POINTS,
        help="random grid points per file, drawn without replacement (default: %(default)s, "
        "as in the paper)",
    )
    parser.add_argument(
        "--points-per-frame",
        type=int,
        default=POINTS_PER_FRAME,
        metavar="N",
        help="grid points per frame (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed, 0 or more: the same seed gives the same bytes; each file of the "
        "call draws its own points from (seed, its position in the call) (default: 0)",
    )
    parser.add_argument(
        "--all-points",
        action="store_true",
        help="take every grid point exactly once (for test sets); frames then hold the "
        "largest divisor of the grid size not above --points-per-frame",
    )
    parser.add_argument(
        "--validation",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="fraction of each file's frames written to DIR/valid/<name> instead of "
        "DIR/train/<name> (default: 0, everything in DIR/<name>)",
    )
    parser.add_argument(
        "--component",
        choices=COMPONENTS,
        default="total",
        help="density to learn: total (default), or the magnetisation of a spin-polarized "
        "(magnetization) or non-collinear (mx, my, mz) file",
    )
    parser.add_argument(
        "--select-by",
        nargs="+",
        metavar="MODEL",
        help="concurrent learning: draw the --points more often where these models (an "
        "ensemble, two or more) disagree, each with a weight (grid_weight.npy) that keeps "
        "training aimed at the error over the whole grid; costs one whole-grid prediction per "
        "model and file",
    )
    parser.add_argument(
        "--uniform-share",
        type=float,
        default=UNIFORM_SHARE,
        metavar="FRACTION",
        help="with --select-by: share of the drawing spread evenly over the grid, above 0 and "
        "at most 1; the rest follows the models' deviation (default: %(default)s)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace the output folder if dpcharge wrote it (it holds dpcharge.json); "
        "other folders are never replaced",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    parser.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> None:
    import json

    import dpdata

    from dpcharge.chgcar import read_structure
    from dpcharge.conventions import LABEL, TypeMap
    from dpcharge.output import MARKER, check_output_folder, staged_folder, write_atomically

    output = check_output_folder(args.output, replace=args.force)
    for path in args.files:
        if output.resolve() in Path(path).resolve().parents:
            raise InputError(f"{path} lies inside the output folder {output}", "output")
    if not 0 <= args.validation < 1:
        raise InputError(f"must be in [0, 1), got {args.validation}", "validation")
    if args.all_points and args.validation:
        raise InputError("--all-points writes whole grids for testing: drop --validation")
    if args.type_map is None:
        structures = [read_structure(path, args.species) for path in args.files]
        type_map = TypeMap.of_structures(
            [atoms.get_chemical_symbols() for atoms in structures], args.virtual_type
        )
    else:
        type_map = TypeMap(tuple(args.type_map), args.virtual_type)
    names = _system_names(args.files)
    ensemble = None
    if args.select_by is not None:
        if len(args.select_by) < 2:
            raise InputError("--select-by needs two models or more (an ensemble)")
        if args.all_points:
            raise InputError("--all-points takes every point: drop --select-by")
        from dpcharge.selection import check_uniform_share

        check_uniform_share(args.uniform_share)
        with _quiet_tensorflow():
            from dpcharge.inference import DeepDensity

            ensemble = DeepDensity(args.select_by)
    with staged_folder(output) as staging:
        for number, (path, name) in enumerate(zip(args.files, names, strict=True)):
            grid_index = grid_weight = None
            if ensemble is not None:
                grid_index, grid_weight = _select_points(ensemble, path, number, args)
            system = dpdata.System(
                path,
                fmt="vasp/chgcar",
                type_map=list(type_map.names),
                points=args.points,
                points_per_frame=args.points_per_frame,
                seed=(args.seed, number),
                all_points=args.all_points,
                component=args.component,
                species=args.species,
                grid_index=grid_index,
                grid_weight=grid_weight,
            )
            frames = system.get_nframes()
            valid = round(frames * args.validation)
            if args.validation and not 0 < valid < frames:
                raise InputError(
                    f"{path}: {frames} frames cannot be split with {args.validation}", "validation"
                )
            parts = {name: system}
            if args.validation:
                parts = {
                    f"train/{name}": system.sub_system(range(frames - valid)),
                    f"valid/{name}": system.sub_system(range(frames - valid, frames)),
                }
            for folder, part in parts.items():
                part.to("deepmd/npy", staging / folder)
                if not args.quiet:
                    _report_system(path, output / folder, part, args.component)
        record = {
            "dpcharge": __version__,
            "command": "convert",
            "files": [str(path) for path in args.files],
            "systems": names,
            "type_map": list(type_map.names),
            "component": args.component,
            "points": "all" if args.all_points else args.points,
            "points_per_frame": args.points_per_frame,
            "seed": args.seed,
            "validation": args.validation,
            "selected_by": args.select_by,
            "uniform_share": args.uniform_share if args.select_by else None,
            "units": {LABEL: "e/Å^3", "coord": "Å"},
        }
        write_atomically(staging / MARKER, lambda s: json.dump(record, s, indent=1))


def _select_points(
    ensemble: object, path: str, number: int, args: argparse.Namespace
) -> tuple[object, object]:
    """Draw the grid points of one file by the ensemble's deviation; return them and weights."""
    import numpy as np

    from dpcharge.chgcar import read_density
    from dpcharge.selection import select_points

    atoms, density = read_density(path, species=args.species, component=args.component)
    with _Progress(density.size) as progress:
        _, deviation = ensemble.predict_grid(  # type: ignore[attr-defined]
            atoms, density.shape, progress=progress, deviation=True
        )
    rng = np.random.default_rng((args.seed, number))
    index, weight = select_points(deviation, args.points, args.uniform_share, rng)
    if not args.quiet:
        print(
            f"{path}: mean deviation of the {len(index):,} chosen points "
            f"{deviation.ravel()[index].mean():.3g} e/Å^3, of the whole grid "
            f"{deviation.mean():.3g} e/Å^3; weights {weight.min():.3g} to {weight.max():.3g}",
            flush=True,
        )
    return index, weight


def _report_system(path: str, folder: Path, system: object, component: str) -> None:
    """Print one line on a written system: frames, atoms, grid points, label range."""
    from dpcharge.conventions import LABEL

    data = system.data  # type: ignore[attr-defined]
    real = sum(data["atom_numbs"][:-1])
    density = data[LABEL][:, real:]
    print(
        f"{path} -> {folder}: {len(density)} frames of {real} atoms + {density.shape[1]} "
        f"grid points, {'density' if component == 'total' else f'{component} (up minus down)'} "
        f"{density.min():.4g} to {density.max():.4g} e/Å^3",
        flush=True,
    )


def _system_names(files: Sequence[str]) -> list[str]:
    """Name each file's system after the file, made unique by its folder or position."""
    names = [Path(f).name.removesuffix(".gz") for f in files]
    if len(set(names)) < len(names):
        names = [
            f"{Path(f).parent.name}_{n}".lstrip("_") for f, n in zip(files, names, strict=True)
        ]
    if len(set(names)) < len(names):
        names = [f"{i:03d}_{n}" for i, n in enumerate(names)]
    return names


def _add_reassemble(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "reassemble",
        help="predict the density of a structure on a whole grid (CHGCAR or cube)",
        description="Predict the density (e/Å^3) of a structure at every point of a grid "
        "spanning its cell with a frozen density model, and write it as a CHGCAR "
        "(rho·V_cell, VASP layout, the structure as header) or a Gaussian cube file. "
        "Grid points are evaluated in chunks with a neighbour list of real atoms only, "
        "so the time grows linearly with the grid size.",
        epilog="Default grid: the input's own grid when STRUCTURE is a CHGCAR, otherwise "
        f"--spacing {SPACING} Å. The grid used, the memory it needs and the integral of the "
        "density (before and after any rescaling) are always printed. With several frames "
        "(--frames), each is written to its own file: OUTPUT with _<n> before its "
        "extension, n counting the chosen frames from 0. With --magnetization, a CHGCAR "
        "is spin-polarised (ISPIN=2: the total, then the magnetisation), and cube and npy "
        "outputs get a second file with _magnetization before the extension.",
    )
    parser.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="frozen density model (dp --tf freeze); several (an ensemble trained with other "
        "seeds) predict their mean, and --deviation writes their spread",
    )
    parser.add_argument(
        "structure",
        metavar="STRUCTURE",
        help="the structure: POSCAR/CONTCAR, CHGCAR (plain or gzip), extxyz, cif or any "
        "other file ase reads; needs a 3-d cell",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="output file (must not exist); required but for --format espresso",
    )
    parser.add_argument(
        "--format",
        choices=("chgcar", "cube", "espresso"),
        default="chgcar",
        help="output format: VASP CHGCAR (default; gzip-compressed when FILE ends in .gz), "
        "Gaussian cube (e/bohr^3), or espresso: STRUCTURE is a pw.x input, the density is "
        "predicted on Quantum ESPRESSO's dense grid for its cell and ecutrho, scaled to its "
        "valence electrons and written where pw.x reads it with startingpot = 'file' "
        "(<outdir>/<prefix>.save/charge-density.dat, outdir relative to this folder)",
    )
    parser.add_argument(
        "--previous",
        metavar="PW_INPUT",
        help="with --format espresso: the pw.x input of an earlier run of the same cell whose "
        "converged density pw.x left in its outdir (the previous MD, relaxation or "
        "displacement step); the start is that density plus the predicted change, "
        "rho_previous + rho_pred(STRUCTURE) - rho_pred(previous structure), instead of the "
        "prediction alone",
    )
    parser.add_argument(
        "--npy", metavar="FILE", help="also save the density as a numpy array (NX, NY, NZ) in e/Å^3"
    )
    parser.add_argument(
        "--deviation",
        metavar="FILE",
        help="with several models: write their standard deviation at each grid point (e/Å^3, "
        "an estimate of the error) in the --format of the output, or as a numpy array when "
        "FILE ends in .npy",
    )
    parser.add_argument(
        "--frames",
        metavar="INDEX",
        help="frames of a trajectory file to predict, in ase's index syntax: 0, -1, 10:20, "
        ": for all (required when STRUCTURE holds several)",
    )
    grid = parser.add_mutually_exclusive_group()
    grid.add_argument(
        "--grid", nargs=3, type=int, metavar=("NX", "NY", "NZ"), help="grid point counts"
    )
    grid.add_argument(
        "--spacing",
        type=float,
        metavar="Å",
        help="largest grid spacing along each cell vector, in Å; the counts are the "
        "smallest FFT-friendly ones (factors 2, 3, 5, 7), as VASP chooses them",
    )
    grid.add_argument(
        "--like",
        metavar="CHGCAR",
        help="use the grid of this reference file, whose cell must be the structure's",
    )
    electrons = parser.add_mutually_exclusive_group()
    electrons.add_argument(
        "--nelect",
        type=float,
        metavar="N",
        help="rescale the density to integrate to N (valence) electrons",
    )
    electrons.add_argument(
        "--normalize",
        action="store_true",
        help="rescale the density to the electron count of the reference density (the "
        "input CHGCAR or the --like file)",
    )
    parser.add_argument(
        "--magnetization",
        metavar="MODEL",
        help="also predict the magnetisation rho_up - rho_down (e/Å^3) with this model, "
        "trained on dpcharge convert --component magnetization data; the total moment (μB) "
        "and each atom's moment (its Voronoi cell) are printed",
    )
    parser.add_argument(
        "--moment",
        type=float,
        metavar="M",
        help="with --magnetization: rescale the magnetisation to a total moment of M Bohr "
        "magnetons per cell (same sign as predicted), as --nelect does for the electrons",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace existing output files (never an input), and predict grids larger "
        "than the free memory",
    )
    _add_prediction_options(parser)
    parser.set_defaults(run=_run_reassemble)


def _add_prediction_options(parser: argparse.ArgumentParser) -> None:
    """Declare the options of whole-grid prediction shared by reassemble and test."""
    parser.add_argument(
        "--chunk",
        type=int,
        default=CHUNK,
        metavar="N",
        help="grid points per model evaluation; bounds the memory. The same chunk gives the "
        "same bytes; another changes the density by float round-off (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="chunks evaluated at once, one thread each (default: 0, one per core); the "
        "density does not depend on it",
    )


def _run_reassemble(args: argparse.Namespace) -> None:
    import numpy as np

    from dpcharge import parallel
    from dpcharge.chgcar import read_density, write_chgcar, write_cube
    from dpcharge.grid import check_cell, choose_grid
    from dpcharge.inference import check_chunk, check_workers
    from dpcharge.metrics import electron_count, rescale_to_electrons, rescale_to_moment
    from dpcharge.output import check_output, write_npy
    from dpcharge.structures import read_structures

    check_chunk(args.chunk)
    check_workers(args.threads)
    if args.deviation is not None and len(args.models) < 2:
        raise InputError("--deviation needs two models or more (an ensemble)")
    if args.moment is not None and args.magnetization is None:
        raise InputError("--moment rescales a predicted magnetisation: give --magnetization")
    comm = parallel.world()
    root = parallel.is_root(comm)
    espresso = paw = previous = None
    if args.previous is not None and args.format != "espresso":
        raise InputError("--previous starts a pw.x run from an earlier one: use --format espresso")
    if args.format == "espresso":
        from dpcharge.espresso import PAW_OCCUPATIONS, atomic_paw_occupations

        espresso = _pw_start(args)
        paw = atomic_paw_occupations(espresso)
        structures, reference = [espresso.atoms], None
        if args.previous is not None:
            previous, previous_densities = _previous_run(args, espresso, paw is not None)
    elif args.output is None:
        raise InputError("the output file is missing", "output")
    else:
        structures, reference = read_structures(args.structure, args.frames)
    inputs = [*args.models, args.structure, *([args.like] if args.like else [])]
    inputs += [args.previous] if args.previous else []
    if args.magnetization is not None:
        inputs.append(args.magnetization)
    frames = len(structures)
    outputs = [
        {key: _frame_path(getattr(args, key), n, frames) for key in ("output", "npy", "deviation")}
        for n in range(frames)
    ]
    spin = args.magnetization is not None
    # the magnetisation's own files: beside the npy, and beside a cube (a CHGCAR holds both)
    second_files = ("npy", "output") if args.format == "cube" else ("npy",)
    for paths in outputs if spin and espresso is None else ():
        for key in second_files:
            if paths[key] is not None:
                paths[f"{key}_magnetization"] = _tagged_path(paths[key], "magnetization")
    if paw is not None:  # pw.x reads the PAW occupations beside the density
        outputs[0]["output_paw"] = str(Path(outputs[0]["output"]).parent / PAW_OCCUPATIONS)
    for paths in outputs:  # on every rank, so that all refuse alike
        for parameter, path in paths.items():
            if path is not None:
                flag = parameter.split("_")[0]
                check_output(path, inputs, args.force, flag, espresso is not None)
    if args.like is not None:
        like_atoms, reference = read_density(args.like)
    if args.normalize and reference is None:
        raise InputError(
            "--normalize needs a reference density (STRUCTURE a CHGCAR, or --like); "
            "give --nelect N instead"
        )
    if args.nelect is not None and not 0 < args.nelect < float("inf"):
        raise InputError(f"must be a positive number of electrons, got {args.nelect}", "electrons")
    grids = []
    for atoms in structures:
        cell = check_cell(atoms)
        if args.like is not None and not _same_cell(like_atoms.cell.array, cell):
            raise InputError(f"{args.like}: its cell differs from the structure's")
        grids.append(
            (espresso.dense_grid, "espresso")
            if espresso is not None
            else choose_grid(
                cell,
                shape=args.grid,
                spacing=args.spacing,
                reference_shape=None if reference is None else reference.shape,
            )
        )
    spread = args.deviation is not None
    _check_memory(max(_points(shape) for shape, _ in grids) * (1 + spread + spin), args.force)
    workers = args.threads or parallel.workers_per_rank(comm)
    with _quiet_tensorflow():
        from dpcharge.inference import DeepDensity

        model = DeepDensity(args.models, workers=workers)
        magnetization_model = None
        if spin:
            magnetization_model = DeepDensity([args.magnetization], workers=workers)
    sources = {
        "shape": "--grid",
        "spacing": f"--spacing {args.spacing} Å",
        "reference": f"--like {args.like}" if args.like else f"the grid of {args.structure}",
        "default": f"default spacing {SPACING} Å",
        "espresso": "Quantum ESPRESSO's dense grid",
    }
    write = write_cube if args.format == "cube" else write_chgcar
    units = "cube, e/bohr^3" if args.format == "cube" else "CHGCAR, rho·V_cell"
    for n, (atoms, (shape, source), paths) in enumerate(
        zip(structures, grids, outputs, strict=True)
    ):
        points = _points(shape)
        if root:
            spacings = " ".join(f"{s:.3f}" for s in atoms.cell.lengths() / shape)
            print(
                f"{'' if frames == 1 else f'frame {n}: '}grid {shape[0]} x {shape[1]} x "
                f"{shape[2]} = {points:,} points (spacing {spacings} Å) from {sources[source]}"
                + (f", {model.size} models" if model.size > 1 else "")
                + (f" on {comm.Get_size()} MPI ranks" if comm is not None else "")
                + f"; about {points * BYTES_PER_POINT * (1 + spread + spin) / 2**20:,.0f} MiB of "
                "memory for the grid",
                flush=True,
            )
        runs = 1 + (previous is not None)
        with _Progress(points * (1 + spin) * runs if root else 0) as progress:
            models = (model, magnetization_model)
            result, magnetization = _predict(
                models, atoms, shape, args.chunk, comm, progress, spread
            )
            if previous is not None:
                before = _predict(models, previous.atoms, shape, args.chunk, comm, progress)
        if not root:
            continue
        density, deviation = result if spread else (result, None)
        volume = atoms.get_volume()
        print(f"predicted density integrates to {electron_count(density, volume):.4f} e")
        target = electron_count(reference, volume) if args.normalize else args.nelect
        if espresso is not None and target is None:
            target = espresso.electrons
        if target is not None:
            density = rescale_to_electrons(density, volume, target)
            print(f"rescaled to {electron_count(density, volume):.4f} e")
        if previous is not None:  # the earlier run's density plus the predicted change
            change = density - rescale_to_electrons(before[0], volume, target)
            density = previous_densities[0] + change
            print(
                f"start: the converged density of {previous.path} plus the predicted change "
                f"(mean |change| {np.abs(change).mean():.3g} e/Å^3), "
                f"{electron_count(density, volume):.4f} e"
            )
        if spin:
            _report_magnetization(atoms, density, magnetization)
            if previous is not None:
                change = magnetization - before[1]
                magnetization = previous_densities[1] + change
                print(
                    f"start: the previous magnetisation plus the predicted change, "
                    f"{electron_count(magnetization, volume):.4f} μB"
                )
            if args.moment is not None:
                magnetization = rescale_to_moment(magnetization, volume, args.moment)
                print(f"rescaled to {electron_count(magnetization, volume):.4f} μB")
        if espresso is None and args.format == "chgcar":
            write_chgcar(paths["output"], atoms, density, magnetization if spin else None)
            what = "ISPIN=2 CHGCAR: total, then magnetisation, rho·V_cell" if spin else units
            print(f"wrote {paths['output']} ({what})", flush=True)
        elif espresso is None:
            write_cube(paths["output"], atoms, density)
            print(f"wrote {paths['output']} ({units})", flush=True)
            if spin:
                write_cube(paths["output_magnetization"], atoms, magnetization)
                print(f"wrote {paths['output_magnetization']} (magnetisation, {units})")
        else:
            _write_pw_start(paths, espresso, density, magnetization if spin else None, paw)
        if paths["npy"] is not None:
            write_npy(paths["npy"], density)
            print(f"wrote {paths['npy']} (numpy array {shape}, e/Å^3)", flush=True)
            if spin:
                write_npy(paths["npy_magnetization"], magnetization)
                print(f"wrote {paths['npy_magnetization']} (magnetisation, e/Å^3)", flush=True)
        if deviation is not None:
            if paths["deviation"].endswith(".npy"):
                write_npy(paths["deviation"], deviation)
            else:
                write(paths["deviation"], atoms, deviation)
            print(
                f"wrote {paths['deviation']} (standard deviation of {model.size} models; mean "
                f"{deviation.mean():.3g}, largest {deviation.max():.3g} e/Å^3)",
                flush=True,
            )


def _pw_start(args: argparse.Namespace) -> PwInput:
    """Read the pw.x input of ``--format espresso``; set the output to where pw.x reads."""
    from dpcharge.espresso import read_pw_input

    if args.grid is not None or args.spacing is not None or args.like is not None:
        raise InputError("--format espresso predicts on pw.x's own dense grid: drop the grid")
    if args.normalize or args.frames not in (None, "0", "-1", ":"):
        raise InputError("--format espresso takes the one structure and electrons of the input")
    pw = read_pw_input(args.structure)
    if pw.nspin == 2 and args.magnetization is None:
        raise InputError(
            f"{args.structure}: nspin = 2: a spin-polarised start needs a predicted "
            "magnetisation: give --magnetization MODEL"
        )
    if pw.nspin != 2 and args.magnetization is not None:
        raise InputError(
            f"{args.structure}: nspin = {pw.nspin}: pw.x reads a magnetisation only with "
            "nspin = 2; drop --magnetization or set nspin = 2"
        )
    if args.output is None:
        args.output = str(pw.charge_density_path)
    return pw


def _previous_run(
    args: argparse.Namespace, pw: PwInput, paw: bool
) -> tuple[PwInput, list[np.ndarray]]:
    """Read the pw.x input of ``--previous`` and its converged density on this run's grid.

    Returns the input and its density (e/Å^3), then its magnetisation with nspin = 2, on
    ``pw``'s dense grid; refuses a run whose density cannot start ``pw``.
    """
    from dpcharge.espresso import charge_density_to_grid, read_pw_input

    if paw:
        raise InputError(
            "--previous: a PAW run also carries on-site occupations, which dpcharge does not "
            "predict; start it from the prediction alone (drop --previous)"
        )
    if args.moment is not None:
        raise InputError(
            "--moment rescales a predicted magnetisation; with --previous the start is the "
            "previous run's magnetisation plus the predicted change: drop --moment"
        )
    previous = read_pw_input(args.previous)
    if not _same_cell(previous.atoms.cell.array, pw.atoms.cell.array):
        raise InputError(
            f"--previous: the cell of {previous.path} is not that of {pw.path}; the change "
            "is predicted within one cell"
        )
    if previous.nspin != pw.nspin:
        raise InputError(
            f"--previous: {previous.path} has nspin = {previous.nspin}, {pw.path} nspin = "
            f"{pw.nspin}"
        )
    if not previous.charge_density_path.is_file():
        raise InputError(
            f"--previous: no converged density of {previous.path} at "
            f"{previous.charge_density_path} (outdir relative to this folder): run pw.x on "
            "it first"
        )
    components = ("total", "magnetization")[: pw.nspin]
    path = previous.charge_density_path
    return previous, [charge_density_to_grid(path, pw.atoms, pw.dense_grid, c) for c in components]


def _predict(
    models: tuple[DeepDensity, DeepDensity | None],
    atoms: Atoms,
    shape: tuple[int, int, int],
    chunk: int,
    comm: object,
    progress: _Progress,
    spread: bool = False,
) -> tuple[object, np.ndarray | None]:
    """Predict the density (and its spread) and, with a second model, the magnetisation."""
    from dpcharge import parallel

    def grid(model: DeepDensity, spread: bool = False) -> object:
        if comm is None:
            return model.predict_grid(atoms, shape, chunk, progress, spread)
        return parallel.predict_grid(model, atoms, shape, chunk, comm, progress, spread)

    density_model, magnetization_model = models
    density = grid(density_model, spread)
    return density, None if magnetization_model is None else grid(magnetization_model)


def _write_pw_start(
    paths: dict[str, str | None],
    pw: PwInput,
    density: np.ndarray,
    magnetization: np.ndarray | None,
    paw: np.ndarray | None,
) -> None:
    """Write the density (magnetisation, PAW occupations) where pw.x reads it; say what to set."""
    from dpcharge.espresso import write_charge_density, write_paw_occupations

    path = paths["output"]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_charge_density(path, pw.atoms, density, pw.ecutrho, pw.gamma_only, magnetization)
    what = "rho(G), then the magnetisation," if magnetization is not None else "rho(G)"
    print(
        f"wrote {path} (Quantum ESPRESSO charge-density.dat: {what} in e/bohr^3 within "
        f"ecutrho {pw.ecutrho:g} Ry)",
        flush=True,
    )
    if paw is not None:
        write_paw_occupations(paths["output_paw"], paw)
        print(
            f"wrote {paths['output_paw']} (PAW on-site occupations of the atomic start: the "
            "model predicts the density only)",
            flush=True,
        )
    if pw.startingpot != "file":
        print(f"set startingpot = 'file' in &ELECTRONS of {pw.path} to start pw.x from it")


def _report_magnetization(atoms: object, density: np.ndarray, magnetization: np.ndarray) -> None:
    """Print the total and atomic moments (μB) of a magnetisation; warn when implausible."""
    import numpy as np

    from dpcharge.metrics import atomic_moments, electron_count

    moments = atomic_moments(atoms, magnetization)
    print(
        f"predicted magnetisation integrates to {moments.sum():.4f} μB; atomic moments "
        f"(Voronoi cells) from {moments.min():.3f} to {moments.max():.3f} μB, "
        f"mean |m| {np.abs(moments).mean():.3f} μB"
    )
    if np.abs(moments.sum()) > 0.5 * electron_count(density, atoms.get_volume()):
        print(
            "warning: the magnetisation holds more than half the electrons' count; is the "
            "--magnetization model one trained on --component magnetization data?"
        )


def _tagged_path(path: str, tag: object) -> str:
    """Return ``path`` with ``_<tag>`` before its extension (a frame number, a component)."""
    name = Path(path).name
    stem, dot, extension = name.partition(".")
    return str(Path(path).with_name(f"{stem}_{tag}{dot}{extension}"))


def _frame_path(path: str | None, number: int, frames: int) -> str | None:
    """Return the output file of one frame: ``_<number>`` before the extension when several."""
    if path is None or frames == 1:
        return path
    return _tagged_path(path, number)


def _same_cell(cell_a: object, cell_b: object) -> bool:
    """Whether two cells agree to 1e-4 Å."""
    import numpy as np

    return bool(np.allclose(cell_a, cell_b, atol=1e-4))


def _points(shape: Sequence[int]) -> int:
    """Return the number of points of a grid."""
    nx, ny, nz = shape
    return int(nx) * int(ny) * int(nz)


def _check_memory(points: int, force: bool) -> None:
    """Say how much memory the grid needs; refuse more than is free unless forced."""
    needed = points * BYTES_PER_POINT + TENSORFLOW_BYTES
    free = _available_memory()
    if free is not None and needed > free and not force:
        raise InputError(
            f"a grid of {points:,} points needs about {needed / 2**30:.1f} GiB of memory but "
            f"{free / 2**30:.1f} GiB are free: choose a coarser grid (--spacing, --grid) or "
            "--force"
        )


def _available_memory() -> int | None:
    """Return the memory available to new work in bytes (Linux), or None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class _Progress:
    """Progress of a prediction on standard error: a bar on a terminal, lines in a log.

    Outside a terminal (a batch job's log), a line every 10 % or 60 s gives the
    points done, the rate and the time left. Nothing is shown for fewer than
    `_Progress.QUIET_BELOW` points.
    """

    QUIET_BELOW = 200_000
    LOG_EVERY = 60.0

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.start = self.last_time = time.monotonic()
        self.last_tenth = 0
        self.bar = None
        self.enabled = total >= self.QUIET_BELOW
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="predict", unit="point", unit_scale=True)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def __call__(self, points: int) -> None:
        self.done += points
        if self.bar is not None:
            self.bar.update(points)
            return
        now = time.monotonic()
        tenth = 10 * self.done // self.total if self.total else 10
        if self.enabled and (tenth > self.last_tenth or now - self.last_time > self.LOG_EVERY):
            self.last_tenth, self.last_time = tenth, now
            rate = self.done / max(now - self.start, 1e-9)
            print(
                f"predict: {100 * self.done / self.total:.0f} % ({self.done:,} of "
                f"{self.total:,} points, {rate:,.0f} points/s, about "
                f"{(self.total - self.done) / rate:.0f} s left)",
                file=sys.stderr,
                flush=True,
            )


@contextmanager
def _quiet_tensorflow() -> Iterator[None]:
    """Hide TensorFlow's load-time notices on standard error, and its unload notices at exit.

    The CPU builds print oneDNN and missing-CUDA notices when loaded and again
    when unloaded at exit; harmless, they would bury dpcharge's own messages. A
    traceback of a crash is printed before the exit handler runs, so it stays.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    atexit.unregister(_silence_standard_error)
    atexit.register(_silence_standard_error)


def _silence_standard_error() -> None:
    """Send file descriptor 2 to /dev/null (at exit, for TensorFlow's unload notices)."""
    sys.stderr.flush()
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)


def _add_test(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "test",
        help="judge a model against DFT densities on their whole grids",
        description="Predict every grid point of each reference density (CHGCAR, plain or "
        "gzip) and print, per file and over all files: MAE and RMSE (e/Å^3), NMAE = "
        "sum|error| / sum|rho| (%), R², the largest absolute error (e/Å^3) and the "
        "electron counts (e) of prediction and reference.",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="MODEL.pb [...] CHGCAR",
        help="frozen density model(s), named *.pb, then the reference densities; with "
        "several models (an ensemble) the mean is judged, and how well the models' standard "
        "deviation ranks its error (Spearman correlation, calibration figure)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument(
        "--plots",
        metavar="DIR",
        help="write PNG figures per file into DIR (created if missing): parity plot, error "
        "histogram, slice, line",
    )
    parser.add_argument(
        "--thresholds",
        nargs="+",
        type=float,
        default=THRESHOLDS,
        metavar="E",
        help="absolute errors (e/Å^3, positive) whose fractions the error histogram reports "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--magnetization",
        metavar="MODEL.pb",
        help="also judge this magnetisation model against the magnetisation block of each "
        "(spin-polarised) reference: a second table, whose last columns are the total "
        "moments (μB) predicted and DFT, then the MAE of the atomic moments (Voronoi cells)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace existing --json and figure files"
    )
    _add_prediction_options(parser)
    parser.set_defaults(run=_run_test)


def _run_test(args: argparse.Namespace) -> None:
    import json

    from dpcharge.chgcar import read_density
    from dpcharge.inference import check_chunk, check_workers
    from dpcharge.metrics import TABLE_HEADER, density_errors, rank_errors
    from dpcharge.output import check_output, probe_folder, write_atomically

    check_chunk(args.chunk)
    check_workers(args.threads)
    models = [path for path in args.paths if path.endswith(".pb")]
    files = args.paths[len(models) :]
    if not models or not files or models != args.paths[: len(models)]:
        raise InputError(
            "give the frozen models (named *.pb) first, then the reference densities", "models"
        )
    if not all(0 < threshold < float("inf") for threshold in args.thresholds):
        raise InputError(f"must be positive e/Å^3, got {args.thresholds}", "thresholds")
    names = _system_names(files)
    inputs = [*models, *files, *([args.magnetization] if args.magnetization else [])]
    if args.magnetization is not None and not args.magnetization.endswith(".pb"):
        raise InputError("give a frozen model named *.pb", "magnetization")
    if args.json is not None:
        check_output(args.json, inputs, replace=args.force, parameter="json")
    if args.plots is not None:
        from dpcharge.plots import CALIBRATION, FIGURES

        plots = Path(args.plots)
        if plots.is_file():
            raise InputError(f"{plots} is a file, not a folder", "plots")
        if not plots.exists():
            probe_folder(plots.resolve().parent, "plots")
        kinds = (*FIGURES, CALIBRATION) if len(models) > 1 else FIGURES
        spin_names = [f"{name}_magnetization" for name in names] if args.magnetization else []
        for name in [*names, *spin_names] if plots.exists() else ():
            for kind in kinds if name in names else FIGURES:
                check_output(plots / f"{name}_{kind}.png", inputs, args.force, "plots")
    with _quiet_tensorflow():
        from dpcharge.inference import DeepDensity

        model = DeepDensity(models, workers=args.threads)
    ensemble = model.size > 1
    print(TABLE_HEADER + (f" {'Spearman':>8}" if ensemble else ""), flush=True)
    references, predictions, deviations, volumes, report = [], [], [], [], {}
    for path, name in zip(files, names, strict=True):
        atoms, reference = read_density(path)
        with _Progress(reference.size) as progress:
            result = model.predict_grid(atoms, reference.shape, args.chunk, progress, ensemble)
        prediction, deviation = result if ensemble else (result, None)
        errors = density_errors([reference], [prediction], [atoms.get_volume()])
        report[name] = {"path": str(path), **errors.as_dict()}
        row = errors.row(name)
        ranking = None
        if ensemble:
            ranking = rank_errors([deviation], [prediction - reference])
            report[name]["deviation"] = ranking.as_dict()
            deviations.append(deviation)
            row += f" {ranking.spearman:>8.3f}"
        print(row, flush=True)
        references.append(reference)
        predictions.append(prediction)
        volumes.append(atoms.get_volume())
        if args.plots is not None:
            from dpcharge.plots import write_figures

            write_figures(args.plots, name, atoms, reference, prediction, args.thresholds, ranking)
    overall = density_errors(references, predictions, volumes)
    row, document = overall.row("overall"), {"overall": overall.as_dict()}
    if ensemble:
        errors = [p - r for p, r in zip(predictions, references, strict=True)]
        ranking = rank_errors(deviations, errors)
        document["overall"]["deviation"] = ranking.as_dict()
        row += f" {ranking.spearman:>8.3f}"
    print(row)
    if ensemble:
        print(
            f"{model.size} models: mean deviation {ranking.mean_deviation:.3g} e/Å^3; Spearman "
            "is the rank correlation of their deviation with the error of their mean"
        )
    if args.magnetization is not None:
        document["magnetization"] = _test_magnetization(args, files, names)
    if args.plots is not None:
        kinds = "parity,errors,slice,line" + (",calibration" if ensemble else "")
        print(f"figures: {args.plots}/<name>_{{{kinds}}}.png")
        if args.magnetization is not None:
            print(f"figures: {args.plots}/<name>_magnetization_{{parity,errors,slice,line}}.png")
    if args.json is not None:
        document = {
            "models": [str(m) for m in models],
            "units": {
                "mae": "e/Å^3",
                "rmse": "e/Å^3",
                "max_error": "e/Å^3",
                "nmae": "%",
                "moments": "μB",
            },
            "files": report,
            **document,
        }
        write_atomically(args.json, lambda s: json.dump(document, s, indent=2, ensure_ascii=False))
        print(f"wrote {args.json}")


def _test_magnetization(
    args: argparse.Namespace, files: Sequence[str], names: Sequence[str]
) -> dict[str, object]:
    """Judge the ``--magnetization`` model on each file's magnetisation; print its table."""
    import numpy as np

    from dpcharge.chgcar import read_density
    from dpcharge.metrics import TABLE_HEADER, atomic_moments, density_errors

    with _quiet_tensorflow():
        from dpcharge.inference import DeepDensity

        model = DeepDensity([args.magnetization], workers=args.threads)
    header = TABLE_HEADER.replace("e predicted", " μB predict").replace(" e DFT", "μB DFT")
    print(f"\nmagnetisation (rho_up - rho_down), {args.magnetization}:")
    print(f"{header} {'atoms μB':>9}", flush=True)
    references, predictions, volumes, report = [], [], [], {}
    for path, name in zip(files, names, strict=True):
        atoms, reference = read_density(path, component="magnetization")
        with _Progress(reference.size) as progress:
            prediction = model.predict_grid(atoms, reference.shape, args.chunk, progress)
        errors = density_errors([reference], [prediction], [atoms.get_volume()])
        moments = atomic_moments(atoms, prediction), atomic_moments(atoms, reference)
        atoms_mae = float(np.abs(moments[0] - moments[1]).mean())
        report[name] = {
            **_as_moments(errors.as_dict()),
            "atomic_moments_predicted": moments[0].tolist(),
            "atomic_moments_reference": moments[1].tolist(),
            "atomic_moments_mae": atoms_mae,
        }
        print(f"{errors.row(name)} {atoms_mae:>9.4f}", flush=True)
        references.append(reference)
        predictions.append(prediction)
        volumes.append(atoms.get_volume())
        if args.plots is not None:
            from dpcharge.plots import write_figures

            write_figures(
                args.plots, f"{name}_magnetization", atoms, reference, prediction, args.thresholds
            )
    overall = density_errors(references, predictions, volumes)
    print(overall.row("overall"))
    print(
        "(the electron columns of this table are total moments in μB; 'atoms μB' is the mean "
        "absolute error of the atomic moments)"
    )
    overall_figures = _as_moments(overall.as_dict())
    return {"model": str(args.magnetization), "files": report, "overall": overall_figures}


def _as_moments(figures: dict[str, float]) -> dict[str, float]:
    """Rename the electron counts of a magnetisation's errors to the moments (μB) they are."""
    renamed = {"electrons_predicted": "moment_predicted", "electrons_reference": "moment_reference"}
    return {renamed.get(key, key): value for key, value in figures.items()}


def _add_select(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "select",
        help="choose the structures to compute with DFT next, where an ensemble disagrees",
        description="Concurrent learning: predict each candidate structure (an MD trajectory "
        "or any file ase reads, without DFT) with an ensemble of models (the same training "
        "input, other seeds), rank the structures by the largest standard deviation of the "
        "models on a coarse grid, and write the N most uncertain as POSCAR files into DIR, "
        "with the ranking of all (deviations in e/Å^3) in DIR/dpcharge.json.",
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help="two frozen models or more")
    parser.add_argument(
        "structures", metavar="STRUCTURES", help="the candidates: a trajectory or structure file"
    )
    parser.add_argument(
        "-n", type=int, default=5, dest="count", help="structures to choose (default: %(default)s)"
    )
    parser.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="output folder (must not exist)"
    )
    parser.add_argument(
        "--frames",
        default=":",
        metavar="INDEX",
        help="candidate frames, in ase's index syntax (default: all)",
    )
    parser.add_argument(
        "--spacing",
        type=float,
        default=RANKING_SPACING,
        metavar="Å",
        help="grid spacing in Å of the coarse grid the deviation is evaluated on "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace the output folder if dpcharge wrote it"
    )
    parser.add_argument(
        "--threads", type=int, default=0, metavar="N", help="chunks evaluated at once"
    )
    parser.set_defaults(run=_run_select)


def _run_select(args: argparse.Namespace) -> None:
    import json

    import ase.io

    from dpcharge.inference import check_workers
    from dpcharge.output import MARKER, check_output_folder, staged_folder, write_atomically
    from dpcharge.selection import rank_structures
    from dpcharge.structures import read_structures

    check_workers(args.threads)
    if len(args.models) < 2:
        raise InputError("choosing by deviation needs two models or more (an ensemble)")
    output = check_output_folder(args.output, replace=args.force)
    structures, _ = read_structures(args.structures, args.frames)
    if not 0 < args.count <= len(structures):
        raise InputError(
            f"must be between 1 and the {len(structures)} candidate structures, got {args.count}",
            "count",
        )
    with _quiet_tensorflow():
        from dpcharge.inference import DeepDensity

        ensemble = DeepDensity(args.models, workers=args.threads)
    ranking = rank_structures(ensemble, structures, args.spacing)
    width = len(str(len(structures) - 1))
    print(f"{'frame':>8} {'largest e/Å^3':>14} {'mean e/Å^3':>11}")
    with staged_folder(output) as staging:
        for place, found in enumerate(ranking):
            chosen = place < args.count
            print(
                f"{found.frame:>8} {found.largest:>14.4g} {found.mean:>11.4g}"
                + ("  chosen" if chosen else ""),
                flush=True,
            )
            if chosen:
                name = f"POSCAR_{found.frame:0{width}d}"
                ase.io.write(staging / name, structures[found.frame], format="vasp", direct=True)
        record = {
            "dpcharge": __version__,
            "command": "select",
            "models": list(args.models),
            "structures": str(args.structures),
            "frames": args.frames,
            "spacing": args.spacing,
            "chosen": [found.frame for found in ranking[: args.count]],
            "ranking": [vars(found) for found in ranking],
            "units": {"largest": "e/Å^3", "mean": "e/Å^3", "spacing": "Å"},
        }
        write_atomically(staging / MARKER, lambda s: json.dump(record, s, indent=1))
    print(f"wrote the {args.count} most uncertain structures to {output}/POSCAR_<frame>")
