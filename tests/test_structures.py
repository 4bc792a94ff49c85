"""Reading structures to predict: VASP volumetric files, POSCARs, ase formats, broken files."""

import gzip
from pathlib import Path

import numpy as np
import pytest
from ase import io as ase_io

from dpcharge.chgcar import read_density
from dpcharge.errors import InputError
from dpcharge.structures import read_structures

DATA = Path(__file__).parent / "data"
SI8 = DATA / "CHGCAR_Si8_qe.gz"


@pytest.fixture(scope="module")
def si8():
    return read_density(SI8)


def test_volumetric_file_gives_its_structure_and_density(si8):
    structures, density = read_structures(SI8)
    assert len(structures) == 1
    assert np.allclose(structures[0].positions, si8[0].positions)
    assert np.array_equal(density, si8[1])
    with pytest.raises(InputError, match="holds one structure, not frames 3") as error:
        read_structures(SI8, "3")
    assert error.value.parameter == "frames"


def test_poscar_contcar_with_velocities_and_unnamed_poscar_read(tmp_path, si8):
    atoms = si8[0].copy()
    atoms.set_momenta(np.full((len(atoms), 3), 0.02))
    ase_io.write(tmp_path / "CONTCAR", atoms, format="vasp", direct=True)
    (tmp_path / "structure").write_text((tmp_path / "CONTCAR").read_text())
    for name in ("CONTCAR", "structure"):
        structures, density = read_structures(tmp_path / name)
        assert density is None
        assert np.allclose(structures[0].positions, atoms.positions, atol=1e-8)


def test_trajectory_frames_are_chosen_never_dropped(tmp_path, si8):
    frames = [si8[0].copy() for _ in range(3)]
    for n, atoms in enumerate(frames):
        atoms.positions[0] += 0.1 * n
    ase_io.write(tmp_path / "md.extxyz", frames)
    with pytest.raises(InputError, match="holds 3 structures: choose which") as error:
        read_structures(tmp_path / "md.extxyz")
    assert error.value.parameter == "frames"
    structures, _ = read_structures(tmp_path / "md.extxyz", "1:")
    assert [s.positions[0, 0] for s in structures] == pytest.approx([0.1, 0.2])
    with pytest.raises(InputError, match="no frame 7 in the file"):
        read_structures(tmp_path / "md.extxyz", "7")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        # a truncated CHGCAR: the density reader's reason, not "Could not guess file type"
        (
            lambda text: text[: len(text) // 2],
            "grid value '4.0499' is not written like the grid's first",
        ),
        (lambda text: text[:500], "line 13: position 5 of 8 is not three numbers ('0.50000000')"),
        (lambda text: text.replace("   8\n", "   7\n", 1), "one more position line than"),
        (lambda text: text.replace("0.2500000000000000", "nan", 1), "an atomic position holds NaN"),
        (lambda text: "hello\nworld\n", "line 2: the scale factor is not 1 or 3 numbers ('world')"),
    ],
)
def test_broken_files_name_the_real_cause(tmp_path, make, message):
    path = tmp_path / "CHGCAR_broken"
    path.write_text(make(gzip.decompress(SI8.read_bytes()).decode()))
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_structures(path)


def test_broken_ase_format_and_missing_files(tmp_path, si8):
    ase_io.write(tmp_path / "si.extxyz", si8[0])
    text = (tmp_path / "si.extxyz").read_text()
    (tmp_path / "cut.extxyz").write_text(text[: len(text) // 2])
    with pytest.raises(InputError, match="unreadable extxyz file"):
        read_structures(tmp_path / "cut.extxyz")
    with pytest.raises(InputError, match="no such file"):
        read_structures(tmp_path / "nothing")
    with pytest.raises(InputError, match="is a folder, not a structure file"):
        read_structures(tmp_path)
