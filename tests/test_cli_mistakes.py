"""A corpus of user mistakes, built from the real files: each ends in one line, exit 2, no harm.

Every case runs the real command line (`dpcharge.cli.main`, in this process so
that TensorFlow loads once) in a fresh folder holding copies of real densities,
and checks: exit status 2, one line on standard error that starts with
``dpcharge: error:`` and says what is wrong, no traceback, nothing written,
and every input file unchanged.
"""

import gzip
import hashlib
import shutil
from pathlib import Path
from types import SimpleNamespace

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from dpcharge.cli import main

DATA = Path(__file__).parent / "data"
SI8 = DATA / "CHGCAR_Si8_qe.gz"
SI64 = DATA / "CHGCAR_Si64_gamma_qe.gz"
AL4 = DATA / "CHGCAR_Al4_lda_qe.gz"
SPIN = DATA / "vaspy_CoMonolayer_CHGCAR_spin_2"


def si8_lines():
    return gzip.decompress(SI8.read_bytes()).decode().splitlines()


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def edited(folder, name, edit):
    """A copy of the Si8 CHGCAR with its lines changed by ``edit(lines)``."""
    lines = si8_lines()
    edit(lines)
    return write_lines(folder / name, lines)


def set_line(index, text):
    def edit(lines):
        lines[index] = text

    return edit


def vasp4(folder):
    """The Si8 CHGCAR with a VASP 4 header: no species line."""
    return edited(folder, "CHGCAR_vasp4", lambda lines: lines.pop(5))


def poscar(folder, atoms=None, name="POSCAR"):
    path = folder / name
    ase.io.write(path, atoms if atoms is not None else bulk("Si", "diamond", a=5.43), "vasp")
    return path


def trajectory(folder):
    frames = [bulk("Si", "diamond", a=5.43, cubic=True) for _ in range(3)]
    for number, atoms in enumerate(frames):
        atoms.rattle(0.05, seed=number)
    path = folder / "md.extxyz"
    ase.io.write(path, frames)
    return path


def copy(folder, source, name=None):
    path = folder / (name or source.name)
    shutil.copy(source, path)
    return path


def dpcharge_folder(folder):
    """A folder that an earlier ``dpcharge convert`` wrote, with a CHGCAR put inside."""
    out = folder / "data"
    out.mkdir()
    (out / "dpcharge.json").write_text("{}")
    return copy(out, SI8), out


# Each case: the arguments as a function of the work folder and the models (`pb`, the
# shared model; `dipole` and `flipped`, foreign ones), and a part of the expected message.
CONVERT = {
    "missing file": (lambda f, m: ["convert", "nothere", "-o", "out"], "nothere: no such file"),
    "folder as input": (
        lambda f, m: ["convert", str(f), "-o", f / "out"],
        "is a directory",
    ),
    "empty file": (
        lambda f, m: ["convert", write_lines(f / "CHGCAR", [""]), "-o", f / "out"],
        "the file is empty",
    ),
    "binary file": (
        lambda f, m: ["convert", copy(f, m.pb, "CHGCAR"), "-o", f / "out"],
        "CHGCAR: not a text file (binary content on line 2)",
    ),
    "corrupt gzip": (
        lambda f, m: ["convert", corrupt_gzip(f), "-o", f / "out"],
        "broken gzip file",
    ),
    "truncated file": (
        lambda f, m: ["convert", write_lines(f / "CHGCAR", si8_lines()[:5000]), "-o", f / "out"],
        "truncated",
    ),
    "cut inside the last number": (
        lambda f, m: ["convert", cut_last_number(f), "-o", f / "out"],
        "grid value '1.6969212328' is not written like the grid's first, '7.3157984539E+00': "
        "a cut or broken number",
    ),
    "atom count too low": (
        lambda f, m: ["convert", edited(f, "CHGCAR", set_line(6, "   7")), "-o", f / "out"],
        "CHGCAR",
    ),
    "grid line smaller than the data": (
        lambda f, m: ["convert", edited(f, "CHGCAR", set_line(17, "   36   36   35")), "-o", "o"],
        "CHGCAR",
    ),
    "superscript digit in the grid line": (
        lambda f, m: ["convert", edited(f, "CHGCAR", set_line(17, "   36   36   ²")), "-o", "o"],
        "CHGCAR",
    ),
    "NaN in an atom line": (
        lambda f, m: [
            "convert",
            edited(f, "CHGCAR", set_line(9, "  nan 0.0 0.0")),
            "-o",
            f / "out",
        ],
        "CHGCAR",
    ),
    "NaN in the density": (
        lambda f, m: ["convert", edited(f, "CHGCAR", set_line(20, "nan " * 5)), "-o", f / "out"],
        "NaN or infinite",
    ),
    "text in the density": (
        lambda f, m: ["convert", edited(f, "CHGCAR", set_line(20, "1.0 x 2 3 4")), "-o", "o"],
        "non-numeric value 'x'",
    ),
    "zero-volume cell": (
        lambda f, m: ["convert", edited(f, "CHGCAR", set_line(4, " 0 0 0")), "-o", f / "out"],
        "zero volume",
    ),
    "VASP 4 without species": (
        lambda f, m: ["convert", vasp4(f), "-o", f / "out"],
        "--species: ",
    ),
    "VASP 4 with too many species": (
        lambda f, m: ["convert", vasp4(f), "-o", f / "out", "--species", "Si", "O"],
        "--species: ",
    ),
    "more points than the grid": (
        lambda f, m: ["convert", copy(f, SPIN), "-o", f / "out"],
        "--points: 100,000 requested but the grid has only 96 points (choose fewer with "
        "--points, or every point once with --all-points)",
    ),
    "points not a multiple of the frame": (
        lambda f, m: ["convert", SI8, "-o", f / "out", "--points", 1000, "--points-per-frame", 300],
        "--points: 1000 points do not split into frames of 300",
    ),
    "zero points": (
        lambda f, m: ["convert", SI8, "-o", f / "out", "--points", 0],
        "--points",
    ),
    "one model to select points by": (
        lambda f, m: ["convert", SI8, "-o", f / "out", "--select-by", m.pb],
        "--select-by needs two models or more",
    ),
    "no uniform share in the selection": (
        lambda f, m: [
            "convert",
            SI8,
            "-o",
            f / "out",
            "--uniform-share",
            0,
            "--select-by",
            *[m.pb] * 2,
        ],
        "--uniform-share: must be above 0 and at most 1, got 0.0",
    ),
    "zero points per frame": (
        lambda f, m: ["convert", SI8, "-o", f / "out", "--all-points", "--points-per-frame", 0],
        "--points-per-frame: must be positive",
    ),
    "negative seed": (
        lambda f, m: ["convert", SI8, "-o", f / "out", "--seed", -1],
        "--seed: must be 0 or more, got (-1, 0)",
    ),
    "validation above 1": (
        lambda f, m: ["convert", SI8, "-o", f / "out", "--validation", 1.5],
        "--validation: must be in [0, 1), got 1.5",
    ),
    "validation with all points": (
        lambda f, m: ["convert", SI8, "-o", f / "out", "--validation", 0.1, "--all-points"],
        "drop --validation",
    ),
    "validation too small to split": (
        lambda f, m: ["convert", SI8, "-o", f / "out", "--points", 400, "--validation", 0.01],
        "--validation: ",
    ),
    "magnetisation of an unpolarised file": (
        lambda f, m: ["convert", SI8, "-o", f / "out", "--points", 400, "--component", "mx"],
        "not spin-polarized",
    ),
    "non-collinear component of a collinear file": (
        lambda f, m: ["convert", copy(f, SPIN), "-o", "out", "--points", 40, "--component", "mx"],
        "collinear spin file",
    ),
    "type map without the element": (
        lambda f, m: ["convert", SI8, "-o", f / "out", "--type-map", "Al"],
        "--type-map: ",
    ),
    "type map naming a type twice": (
        lambda f, m: ["convert", SI8, "-o", f / "out", "--type-map", "Si", "Si"],
        "names a type twice",
    ),
    "grid type named like an element": (
        lambda f, m: ["convert", SI8, "-o", f / "out", "--virtual-type", "Si"],
        "the grid-point type 'Si' is also an element",
    ),
    "existing output": (
        lambda f, m: ["convert", SI8, "-o", f],
        "already exists",
    ),
    "forced over a folder dpcharge did not write": (
        lambda f, m: ["convert", SI8, "-o", f, "--force"],
        "was not written by dpcharge",
    ),
    "forced over the working folder": (
        lambda f, m: ["convert", SI8, "-o", ".", "--force", "--points", 400],
        "never replaced",
    ),
    "forced over a folder holding the input": (
        lambda f, m: ["convert", *reversed_pair(dpcharge_folder(f)), "--force", "--points", 400],
        "lies inside the output folder",
    ),
    "output in a missing folder": (
        lambda f, m: ["convert", SI8, "-o", f / "no" / "out"],
        "the folder does not exist",
    ),
    "output where nothing can be written": (
        lambda f, m: ["convert", SI8, "-o", "/proc/dpcharge_out"],
        "cannot write there",
    ),
}


def corrupt_gzip(folder):
    raw = bytearray(SI8.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
    path = folder / "CHGCAR.gz"
    path.write_bytes(bytes(raw))
    return path


def cut_last_number(folder):
    text = gzip.decompress(SI8.read_bytes()).decode().rstrip()
    last = text.split()[-1]
    assert "E" in last
    path = folder / "CHGCAR"
    path.write_text(text[: len(text) - len(last)] + last.split("E")[0] + "\n")
    return path


def reversed_pair(pair):
    chgcar, out = pair
    return [chgcar, "-o", out]


REASSEMBLE = {
    "missing model": (lambda f, m: ["reassemble", f / "no.pb", SI8, "-o", "out"], "no such file"),
    "text file as model": (
        lambda f, m: ["reassemble", write_lines(f / "m.pb", ["x"]), SI8, "-o", "out"],
        "not a frozen DeePMD-kit TensorFlow model",
    ),
    "model with flipped bytes": (
        lambda f, m: ["reassemble", m.flipped, SI8, "-o", "out"],
        "not a frozen DeePMD-kit TensorFlow model",
    ),
    "model of another kind": (
        lambda f, m: ["reassemble", m.dipole, SI8, "-o", "out"],
        "not a density model (a DeePMD-kit 'dipole' model)",
    ),
    "element the model does not know": (
        lambda f, m: ["reassemble", m.pb, AL4, "-o", "out"],
        "holds Al, which the type map does not know",
    ),
    "moment without a magnetisation model": (
        lambda f, m: ["reassemble", m.pb, SI8, "-o", "out", "--moment", 2],
        "--moment rescales a predicted magnetisation: give --magnetization",
    ),
    "moment of the wrong sign": (
        lambda f, m: [
            "reassemble",
            m.pb,
            SI8,
            "-o",
            "out",
            "--magnetization",
            m.pb,
            "--moment",
            -2,
        ],
        "--moment: cannot rescale",
    ),
    "magnetisation model of another element": (
        lambda f, m: ["reassemble", m.pb, SI8, "-o", "out", "--magnetization", m.germanium],
        "which the type map does not know",
    ),
    "missing structure": (
        lambda f, m: ["reassemble", m.pb, f / "POSCAR", "-o", "out"],
        "POSCAR: no such file",
    ),
    "folder as structure": (
        lambda f, m: ["reassemble", m.pb, f, "-o", "out"],
        "is a folder, not a structure file",
    ),
    "garbage as structure": (
        lambda f, m: [
            "reassemble",
            m.pb,
            write_lines(f / "x.txt", ["no structure"]),
            "-o",
            "out",
        ],
        "x.txt: unreadable structure (read as a POSCAR or CHGCAR: the file ends at line 1",
    ),
    "NaN in a POSCAR": (
        lambda f, m: ["reassemble", m.pb, nan_poscar(f), "-o", "out"],
        "POSCAR",
    ),
    "trajectory without frames": (
        lambda f, m: ["reassemble", m.pb, trajectory(f), "-o", "out"],
        "--frames: ",
    ),
    "frame beyond the trajectory": (
        lambda f, m: ["reassemble", m.pb, trajectory(f), "-o", "out", "--frames", "7"],
        "md.extxyz",
    ),
    "zero grid": (
        lambda f, m: ["reassemble", m.pb, SI8, "-o", "out", "--grid", 0, 4, 4],
        "--grid: a grid needs three positive counts NX NY NZ, got (0, 4, 4)",
    ),
    "zero spacing": (
        lambda f, m: ["reassemble", m.pb, SI8, "-o", "out", "--spacing", 0],
        "--spacing: must be a positive number of Å, got 0.0",
    ),
    "infinite spacing": (
        lambda f, m: ["reassemble", m.pb, SI8, "-o", "out", "--spacing", "inf"],
        "--spacing: must be a positive number of Å, got inf",
    ),
    "grid beyond the memory": (
        lambda f, m: ["reassemble", m.pb, SI64, "-o", "out", "--spacing", 0.001],
        "GiB are free",
    ),
    "structure denser than the model's sel": (
        # silicon squeezed to 0.8 of its lattice constant: ~60 Si within 5 Å, the model lists 48
        lambda f, m: ["reassemble", m.pb, poscar(f, bulk("Si", "diamond", a=4.34)), "-o", "out"],
        "more than 48 atoms within 5 Å, and the model lists only the nearest 48 (its sel)",
    ),
    "normalize without reference": (
        lambda f, m: ["reassemble", m.pb, poscar(f), "-o", "out", "--normalize"],
        "--normalize needs a reference density",
    ),
    "infinite electrons": (
        lambda f, m: ["reassemble", m.pb, SI8, "-o", "out", "--nelect", "inf"],
        "--nelect: must be a positive number of electrons, got inf",
    ),
    "negative electrons": (
        lambda f, m: ["reassemble", m.pb, SI8, "-o", "out", "--nelect", -5],
        "--nelect: must be a positive number of electrons, got -5.0",
    ),
    "zero chunk": (
        lambda f, m: ["reassemble", m.pb, SI8, "-o", "out", "--chunk", 0],
        "--chunk: must be positive, got 0",
    ),
    "negative threads": (
        lambda f, m: ["reassemble", m.pb, SI8, "-o", "out", "--threads", -1],
        "--threads: must be 0 (one per core) or more, got -1",
    ),
    "output is the input": (
        lambda f, m: [
            "reassemble",
            m.pb,
            copy(f, SI8, "CHGCAR"),
            "-o",
            f / "CHGCAR",
            "--force",
        ],
        "is also an input: it is never overwritten",
    ),
    "existing output": (
        lambda f, m: ["reassemble", m.pb, SI8, "-o", write_lines(f / "CHGCAR_old", ["keep"])],
        "-o/--output: ",
    ),
    "output is a folder": (
        lambda f, m: ["reassemble", m.pb, SI8, "-o", f],
        "is a folder; name a file",
    ),
    "output in a missing folder": (
        lambda f, m: ["reassemble", m.pb, SI8, "-o", f / "no" / "CHGCAR"],
        "the folder does not exist",
    ),
    "output where nothing can be written": (
        lambda f, m: ["reassemble", m.pb, SI8, "-o", "/proc/dpcharge_CHGCAR"],
        "cannot write there",
    ),
    "existing npy": (
        lambda f, m: [
            "reassemble",
            m.pb,
            SI8,
            "-o",
            "out",
            "--npy",
            write_lines(f / "r.npy", [""]),
        ],
        "--npy: ",
    ),
    "previous run without --format espresso": (
        lambda f, m: ["reassemble", m.pb, SI8, "-o", "out", "--previous", SI8],
        "--previous starts a pw.x run from an earlier one: use --format espresso",
    ),
    "like a file of another cell": (
        lambda f, m: ["reassemble", m.pb, SI8, "-o", "out", "--like", SI64],
        "CHGCAR_Si64_gamma_qe.gz: its cell differs",
    ),
}

TEST = {
    "negative threshold": (
        lambda f, m: ["test", m.pb, SI8, "--thresholds", -0.1],
        "--thresholds: must be positive",
    ),
    "existing json": (
        lambda f, m: ["test", m.pb, SI8, "--json", write_lines(f / "m.json", ["{}"])],
        "--json: ",
    ),
    "plots is a file": (
        lambda f, m: ["test", m.pb, SI8, "--plots", write_lines(f / "figures", [""])],
        "--plots: ",
    ),
    "truncated reference": (
        lambda f, m: ["test", m.pb, write_lines(f / "CHGCAR", si8_lines()[:5000])],
        "truncated",
    ),
    "missing reference": (lambda f, m: ["test", m.pb, f / "CHGCAR_none"], "no such file"),
    "zero chunk": (
        lambda f, m: ["test", m.pb, SI8, "--chunk", 0],
        "--chunk: must be positive",
    ),
    "magnetisation model against an unpolarised reference": (
        lambda f, m: ["test", m.pb, SI8, "--magnetization", m.pb],
        "not spin-polarized",
    ),
    "magnetisation model not a .pb": (
        lambda f, m: ["test", m.pb, SI8, "--magnetization", SI8],
        "--magnetization: give a frozen model named *.pb",
    ),
}


def nan_poscar(folder):
    path = poscar(folder)
    lines = path.read_text().splitlines()
    lines[-1] = "  nan  0.5 0.5"
    return write_lines(path, lines)


CASES = [
    pytest.param(builder, message, id=f"{command} {name}")
    for command, cases in (("convert", CONVERT), ("reassemble", REASSEMBLE), ("test", TEST))
    for name, (builder, message) in cases.items()
]


def snapshot(folder):
    """Every file below a folder with the hash of its bytes."""
    return {
        p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_the_corpus_covers_every_class_of_the_issue():
    assert len(CASES) >= 60


@pytest.mark.parametrize(("builder", "message"), CASES)
def test_mistake_ends_in_one_line_and_harms_nothing(
    builder, message, density_model, foreign_models, tmp_path, monkeypatch, capsys
):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    models = SimpleNamespace(pb=density_model.model, **vars(foreign_models))
    argv = [str(a) for a in builder(work, models)]
    before = snapshot(work)
    shared = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (SI8, SI64, AL4, SPIN)}
    status = main(argv)
    captured = capsys.readouterr()
    assert status == 2, captured.err
    assert captured.err.startswith("dpcharge: error: "), captured.err
    assert captured.err.count("\n") == 1, captured.err
    assert message in captured.err
    assert "Traceback" not in captured.err
    assert snapshot(work) == before  # nothing written, nothing changed, no staging left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in shared} == shared
    assert not np.any([p.name.startswith(".") for p in work.rglob("*")])
