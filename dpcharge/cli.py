"""The ``dpcharge`` command line: argument parsing and the user-facing messages.

Each subcommand has a ``_add_<name>`` function that declares its options and a
``_run_<name>`` function that does the work through the package's modules. A
user's mistake (`InputError`) ends in a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from dpcharge import __version__
from dpcharge.errors import InputError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dpcharge`` command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except InputError as error:
        from dpcharge.parallel import launched_rank

        if launched_rank() == 0:  # under MPI every rank fails alike: one message
            print(f"dpcharge: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dpcharge: interrupted", file=sys.stderr)
        return 130
    return 0


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
    return parser


def _add_convert(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "convert",
        help="turn CHGCARs into DeePMD-kit training data (deepmd/npy)",
        description="Turn VASP volumetric files (CHGCAR, CHG, AECCAR*, PARCHG; plain or "
        "gzip) into deepmd/npy systems: every frame holds all real atoms plus grid "
        "points as atoms of a virtual type, labelled atom_ener = density in e/Å^3 "
        "(0 for real atoms). One system per file, in DIR/<name>, or DIR/train/<name> "
        "and DIR/valid/<name> with --validation.",
    )
    parser.add_argument("files", nargs="+", metavar="CHGCAR", help="density files to convert")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="DIR",
        help="output folder (must not exist)",
    )
    parser.add_argument(
        "--type-map",
        nargs="+",
        metavar="ELEMENT",
        help="real elements in the order of the model's type map (the grid-point type is "
        "appended last); default: the elements of all files in order of appearance. "
        "For VASP 4 files, which name no elements, the file's species in order",
    )
    parser.add_argument(
        "--virtual-type",
        default="X",
        metavar="NAME",
        help="name of the grid-point type, which must be no element of the structures "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--points",
        type=int,
        default=100_000,
        help="random grid points per file, drawn without replacement (default: %(default)s, "
        "as in the paper)",
    )
    parser.add_argument(
        "--points-per-frame",
        type=int,
        default=200,
        metavar="N",
        help="grid points per frame (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed: same seed, same output (default: 0)",
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
        choices=("total", "magnetization", "mx", "my", "mz"),
        default="total",
        help="density to learn: total (default), or the magnetisation of a spin-polarized "
        "(magnetization) or non-collinear (mx, my, mz) file",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace the output folder if it exists"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    parser.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> None:
    import dpdata

    from dpcharge.chgcar import read_structure

    output = Path(args.output)
    if output.exists() and not args.force:
        raise InputError(f"{output}: already exists; use --force to replace it")
    if not 0 <= args.validation < 1:
        raise InputError(f"--validation must be in [0, 1), got {args.validation}")
    if args.all_points and args.validation:
        raise InputError("--all-points writes whole grids for testing: drop --validation")
    elements = args.type_map
    if elements is None:
        elements = []
        for path in args.files:
            symbols = read_structure(path).get_chemical_symbols()
            elements += [s for s in dict.fromkeys(symbols) if s not in elements]
    type_map = [*elements, args.virtual_type]
    names = _system_names(args.files)

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}."))
    staging.chmod(0o755)
    try:
        progress = tqdm(
            list(zip(args.files, names, strict=True)),
            desc="convert",
            unit="file",
            disable=args.quiet or not sys.stderr.isatty(),
        )
        for path, name in progress:
            system = dpdata.System(
                path,
                fmt="vasp/chgcar",
                type_map=type_map,
                points=args.points,
                points_per_frame=args.points_per_frame,
                seed=args.seed,
                all_points=args.all_points,
                virtual_type=args.virtual_type,
                component=args.component,
            )
            frames = system.get_nframes()
            valid = round(frames * args.validation)
            if args.validation and not 0 < valid < frames:
                raise InputError(
                    f"{path}: {frames} frames cannot be split with --validation {args.validation}"
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
                    _report_system(path, output / folder, part)
        _replace_folder(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _report_system(path: str, folder: Path, system: object) -> None:
    """Print one line on a written system: frames, atoms, grid points, density range."""
    data = system.data  # type: ignore[attr-defined]
    real = sum(data["atom_numbs"][:-1])
    density = data["atom_ener"][:, real:]
    tqdm.write(
        f"{path} -> {folder}: {len(density)} frames of {real} atoms + {density.shape[1]} "
        f"grid points, density {density.min():.4g} to {density.max():.4g} e/Å^3"
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


def _replace_folder(new: Path, target: Path) -> None:
    """Move a finished folder into place, replacing an old one only at the end."""
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old."))
        os.replace(target, old / target.name)
        os.replace(new, target)
        shutil.rmtree(old)
    else:
        os.replace(new, target)


def _add_reassemble(commands: argparse._SubParsersAction) -> None:
    from dpcharge.predict import DEFAULT_SPACING

    parser = commands.add_parser(
        "reassemble",
        help="predict the density of a structure on a whole grid (CHGCAR or cube)",
        description="Predict the density (e/Å^3) of a structure at every point of a grid "
        "spanning its cell with a frozen density model, and write it as a CHGCAR "
        "(rho·V_cell, VASP layout, the structure as header) or a Gaussian cube file. "
        "Grid points are evaluated in chunks with a neighbour list of real atoms only, "
        "so the time grows linearly with the grid size.",
    )
    parser.add_argument("model", metavar="MODEL", help="frozen density model (dp --tf freeze)")
    parser.add_argument(
        "structure",
        metavar="STRUCTURE",
        help="the structure: POSCAR/CONTCAR, CHGCAR (plain or gzip), extxyz, cif or any "
        "other file ase reads; needs a 3-d cell",
    )
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="output file")
    parser.add_argument(
        "--format",
        choices=("chgcar", "cube"),
        default="chgcar",
        help="output format: VASP CHGCAR (default) or Gaussian cube (e/bohr^3)",
    )
    parser.add_argument(
        "--npy",
        metavar="FILE",
        help="also save the density as a numpy array (NX, NY, NZ) in e/Å^3",
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
    _add_prediction_options(parser)
    parser.epilog = (
        "Default grid: the input's own grid when STRUCTURE is a CHGCAR, otherwise "
        f"--spacing {DEFAULT_SPACING} Å. The grid used and the integral of the density "
        "(before and after any rescaling) are always printed."
    )
    parser.set_defaults(run=_run_reassemble)


def _add_prediction_options(parser: argparse.ArgumentParser) -> None:
    """Declare the options of whole-grid prediction shared by reassemble and test."""
    from dpcharge.predict import DEFAULT_CHUNK

    parser.add_argument(
        "--chunk",
        type=int,
        default=DEFAULT_CHUNK,
        metavar="N",
        help="grid points per model evaluation; bounds the memory (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="TensorFlow intra- and inter-op threads (default: 0, TensorFlow's choice)",
    )


def _run_reassemble(args: argparse.Namespace) -> None:
    import numpy as np

    from dpcharge import parallel, predict
    from dpcharge.chgcar import read_density, write_chgcar, write_cube
    from dpcharge.metrics import electron_count

    _check_prediction_options(args)
    comm = parallel.world()
    for path in (args.output, args.npy):
        if path is not None and not Path(path).resolve().parent.is_dir():
            raise InputError(f"{path}: the folder does not exist")
    atoms, reference = predict.read_structure_or_density(args.structure)
    cell = predict.check_cell(atoms)
    if args.grid is not None:
        shape, source = predict.check_grid_shape(args.grid), "--grid"
    elif args.spacing is not None:
        shape, source = predict.grid_for_spacing(cell, args.spacing), f"--spacing {args.spacing} Å"
    elif args.like is not None:
        like_atoms, reference = read_density(args.like)
        if not np.allclose(like_atoms.get_cell().array, cell, atol=1e-4):
            raise InputError(f"{args.like}: its cell differs from the structure's")
        shape, source = reference.shape, f"--like {args.like}"
    elif reference is not None:
        shape, source = reference.shape, f"the grid of {args.structure}"
    else:
        spacing = predict.DEFAULT_SPACING
        shape, source = predict.grid_for_spacing(cell, spacing), f"default spacing {spacing} Å"
    if args.normalize and reference is None:
        raise InputError(
            "--normalize needs a reference density (STRUCTURE a CHGCAR, or --like); "
            "give --nelect N instead"
        )
    model = predict.DensityModel(args.model, threads=args.threads)
    spacings = np.linalg.norm(cell, axis=1) / shape
    if parallel.is_root(comm):
        print(
            f"grid {shape[0]} x {shape[1]} x {shape[2]} = {np.prod(shape):,} points "
            f"(spacing {spacings[0]:.3f} {spacings[1]:.3f} {spacings[2]:.3f} Å) from {source}"
            + (f" on {comm.Get_size()} MPI ranks" if comm is not None else "")
        )
    progress = sys.stderr.isatty()
    if comm is None:
        density = model.predict_grid(atoms, shape, args.chunk, progress=progress)
    else:
        density = parallel.predict_grid(model, atoms, shape, args.chunk, comm, progress=progress)
        if density is None:  # not rank 0: rank 0 prints and writes
            return
    volume = atoms.get_volume()
    print(f"predicted density integrates to {electron_count(density, volume):.4f} e")
    target = electron_count(reference, volume) if args.normalize else args.nelect
    if target is not None:
        density = predict.rescale_to_electrons(density, volume, target)
        print(f"rescaled to {electron_count(density, volume):.4f} e")
    write = write_cube if args.format == "cube" else write_chgcar
    write(args.output, atoms, density)
    units = "cube, e/bohr^3" if args.format == "cube" else "CHGCAR, rho·V_cell"
    print(f"wrote {args.output} ({units})")
    if args.npy is not None:
        predict.write_npy(args.npy, density)
        print(f"wrote {args.npy} (numpy array {shape}, e/Å^3)")


def _check_prediction_options(args: argparse.Namespace) -> None:
    """Refuse bad --chunk and --threads before any slow work."""
    if args.chunk < 1:
        raise InputError(f"--chunk must be positive, got {args.chunk}")
    if args.threads < 0:
        raise InputError(f"--threads must be 0 (TensorFlow's choice) or more, got {args.threads}")


def _add_test(commands: argparse._SubParsersAction) -> None:
    from dpcharge.plots import DEFAULT_THRESHOLDS

    parser = commands.add_parser(
        "test",
        help="judge a model against DFT densities on their whole grids",
        description="Predict every grid point of each reference density (CHGCAR, plain or "
        "gzip) and print, per file and over all files: MAE and RMSE (e/Å^3), NMAE = "
        "sum|error| / sum|rho| (%%), R², the largest absolute error (e/Å^3) and the "
        "electron counts (e) of prediction and reference.",
    )
    parser.add_argument("model", metavar="MODEL", help="frozen density model (dp --tf freeze)")
    parser.add_argument("files", nargs="+", metavar="CHGCAR", help="reference densities")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument(
        "--plots",
        metavar="DIR",
        help="write PNG figures per file: parity plot, error histogram, slice, line",
    )
    parser.add_argument(
        "--thresholds",
        nargs="+",
        type=float,
        default=DEFAULT_THRESHOLDS,
        metavar="E",
        help="absolute errors (e/Å^3) whose fractions the error histogram reports "
        "(default: %(default)s)",
    )
    _add_prediction_options(parser)
    parser.set_defaults(run=_run_test)


def _run_test(args: argparse.Namespace) -> None:
    import json

    from dpcharge import predict
    from dpcharge.chgcar import read_density, write_atomically
    from dpcharge.metrics import TABLE_HEADER, density_errors
    from dpcharge.plots import write_figures

    _check_prediction_options(args)
    for path in (args.json, args.plots):
        if path is not None and not Path(path).resolve().parent.is_dir():
            raise InputError(f"{path}: the folder does not exist")
    names = _system_names(args.files)
    model = predict.DensityModel(args.model, threads=args.threads)
    print(TABLE_HEADER)
    references, predictions, volumes, report = [], [], [], {}
    for path, name in zip(args.files, names, strict=True):
        atoms, reference = read_density(path)
        prediction = model.predict_grid(
            atoms, reference.shape, args.chunk, progress=sys.stderr.isatty()
        )
        errors = density_errors([reference], [prediction], [atoms.get_volume()])
        print(errors.row(name), flush=True)
        report[name] = {"path": path, **errors.as_dict()}
        references.append(reference)
        predictions.append(prediction)
        volumes.append(atoms.get_volume())
        if args.plots is not None:
            write_figures(args.plots, name, atoms, reference, prediction, args.thresholds)
    overall = density_errors(references, predictions, volumes)
    print(overall.row("overall"))
    if args.plots is not None:
        print(f"figures: {args.plots}/<name>_{{parity,errors,slice,line}}.png")
    if args.json is not None:
        document = {
            "model": args.model,
            "units": {"mae": "e/Å^3", "rmse": "e/Å^3", "max_error": "e/Å^3", "nmae": "%"},
            "files": report,
            "overall": overall.as_dict(),
        }
        write_atomically(args.json, lambda s: json.dump(document, s, indent=2, ensure_ascii=False))
        print(f"wrote {args.json}")
