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
