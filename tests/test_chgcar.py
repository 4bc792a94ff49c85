"""Reading and writing real VASP and Quantum ESPRESSO volumetric files."""

import gzip
from pathlib import Path

import numpy as np
import pytest
from ase import io as ase_io
from ase.calculators.vasp import VaspChargeDensity
from ase.units import Bohr

from dpcharge.chgcar import read_density, read_structure, write_chgcar, write_cube
from dpcharge.errors import InputError

DATA = Path(__file__).parent / "data"
SI8 = DATA / "CHGCAR_Si8_qe.gz"


def electrons(atoms, density):
    return density.mean() * atoms.get_volume()


def si8_lines():
    return gzip.decompress(SI8.read_bytes()).decode().splitlines()


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("name", "formula", "shape", "valence_electrons"),
    [
        ("CHGCAR_Si8_qe.gz", "Si8", (36, 36, 36), 32),
        ("CHGCAR_Al4_lda_qe.gz", "Al4", (24, 24, 24), 12),
        ("sisl-files_graphene_CHGCAR.gz", "C2", (24, 24, 100), 8),
        ("sisl-files_NO_polarized_CHGCAR.gz", "NO", (32, 48, 64), 11),
        ("pawpyseed_Ga4_CHGCAR.gz", "Ga4", (40, 40, 40), 12),
    ],
)
def test_real_files_integrate_to_their_valence_electrons(name, formula, shape, valence_electrons):
    atoms, density = read_density(DATA / name)
    assert atoms.get_chemical_formula() == formula
    assert density.shape == shape
    assert electrons(atoms, density) == pytest.approx(valence_electrons, abs=2e-5)


def test_all_electron_aeccar_and_chg_formats_read():
    atoms, density = read_density(DATA / "pawpyseed_Ga4_AECCAR2.gz")
    assert atoms.get_chemical_formula() == "Ga4"
    assert electrons(atoms, density) == pytest.approx(12.0037, abs=1e-3)
    chg = Path(ase_io.__file__).parent.parent / "test/testdata/vasp/Li/CHG"
    atoms, density = read_density(chg)
    assert density.shape == (10, 10, 10)
    assert electrons(atoms, density) == pytest.approx(1.0, abs=1e-4)


def test_axis_order_matches_the_file_fortran_order():
    lines = si8_lines()
    values = np.array(" ".join(lines[18:]).split()[:10], dtype=float)
    third_row = np.array(lines[18 + 36 * 36 // 5].split(), dtype=float)
    atoms, density = read_density(SI8)
    volume = atoms.get_volume()
    assert density[1, 0, 0] * volume == pytest.approx(values[1], rel=1e-12)
    assert density[9, 0, 0] * volume == pytest.approx(values[9], rel=1e-12)
    # value number 36*36 (first of k = 1) sits on line 18 + 1296 // 5, column 1296 % 5
    assert density[0, 0, 1] * volume == pytest.approx(third_row[36 * 36 % 5], rel=1e-12)


def test_vacuum_of_a_slab_lies_along_z():
    atoms, density = read_density(DATA / "sisl-files_graphene_CHGCAR.gz")
    assert atoms.positions[:, 2].max() < 0.1  # graphene at z = 0, c = 10 Å
    assert np.abs(density[:, :, 50]).max() < 1e-3 * density[:, :, 0].max()


def test_spin_polarized_file_gives_total_and_magnetization():
    path = DATA / "sisl-files_NO_polarized_CHGCAR.gz"
    atoms, total = read_density(path)
    _, magnetization = read_density(path, component="magnetization")
    assert electrons(atoms, total) == pytest.approx(11, abs=1e-5)
    assert electrons(atoms, magnetization) == pytest.approx(1, abs=1e-5)  # M = 1 for NO
    _, ga_magnetization = read_density(DATA / "pawpyseed_Ga4_CHGCAR.gz", component="magnetization")
    assert np.abs(ga_magnetization).max() < 1e-6  # ISPIN=2 layout with M = 0


def test_non_collinear_file_has_three_magnetization_components(tmp_path):
    # a real two-block file, made non-collinear by repeating its magnetisation block
    lines = gzip.decompress((DATA / "sisl-files_NO_polarized_CHGCAR.gz").read_bytes())
    lines = lines.decode().splitlines()
    grid = [i for i, line in enumerate(lines) if line.split() == ["32", "48", "64"]]
    block = lines[grid[1] : grid[1] + 1 + -(-32 * 48 * 64 // 5)]
    path = write_lines(tmp_path / "CHGCAR", lines + block + block)
    atoms, mz = read_density(path, component="mz")
    assert electrons(atoms, mz) == pytest.approx(1, abs=1e-5)
    with pytest.raises(InputError, match="choose the magnetisation component mx, my or mz"):
        read_density(path, component="magnetization")
    with pytest.raises(InputError, match="not spin-polarized"):
        read_density(SI8, component="magnetization")


def test_vasp4_file_needs_element_names(tmp_path):
    lines = si8_lines()
    path = write_lines(tmp_path / "CHGCAR", lines[:5] + lines[6:])
    with pytest.raises(InputError, match="VASP 4 file without element names; give them with"):
        read_density(path)
    atoms, density = read_density(path, type_map=["Si"])
    assert atoms.get_chemical_formula() == "Si8"
    assert electrons(atoms, density) == pytest.approx(32, abs=1e-5)
    assert read_structure(path, type_map=["Si"]).get_chemical_formula() == "Si8"


def test_read_structure_reads_the_header_alone():
    atoms = read_structure(DATA / "CHGCAR_Si64_gamma_qe.gz")
    full, _ = read_density(DATA / "CHGCAR_Si64_gamma_qe.gz")
    assert np.allclose(atoms.positions, full.positions)
    assert np.allclose(atoms.cell, full.cell)


def test_chgcar_round_trip_with_ase_and_pymatgen(tmp_path):
    from pymatgen.io.vasp import Chgcar

    atoms, density = read_density(DATA / "pawpyseed_Ga4_CHGCAR.gz")  # non-orthogonal cell
    path = tmp_path / "CHGCAR"
    write_chgcar(path, atoms, density)
    again_atoms, again = read_density(path)
    assert np.allclose(again_atoms.positions, atoms.positions, atol=1e-6)
    assert np.abs(again - density).max() <= 1e-9 * np.abs(density).max()

    by_ase = VaspChargeDensity(str(path))
    assert np.allclose(by_ase.chg[-1], density, rtol=1e-9, atol=1e-12)
    by_pymatgen = Chgcar.from_file(str(path))
    assert np.allclose(by_pymatgen.data["total"] / atoms.get_volume(), density, rtol=1e-9)
    assert by_pymatgen.structure.composition.reduced_formula == "Ga"
    assert electrons(again_atoms, again) == pytest.approx(12, abs=1e-5)


def test_cube_round_trip_with_ase_and_pymatgen(tmp_path):
    from pymatgen.io.common import VolumetricData

    atoms, density = read_density(SI8)
    path = tmp_path / "si8.cube"
    write_cube(path, atoms, density)
    data, cube_atoms = ase_io.cube.read_cube_data(str(path))
    assert np.allclose(data / Bohr**3, density, rtol=1e-5)
    assert np.allclose(cube_atoms.positions, atoms.positions, atol=1e-5)
    by_pymatgen = VolumetricData.from_cube(str(path))
    assert np.allclose(by_pymatgen.data["total"] / Bohr**3, density, rtol=1e-5)
    # integral over the cell in electrons
    assert data.mean() / Bohr**3 * atoms.get_volume() == pytest.approx(32, abs=1e-4)


def test_writing_never_leaves_a_half_written_file(tmp_path):
    atoms, density = read_density(SI8)
    path = tmp_path / "CHGCAR"
    path.write_text("old content")
    density[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        write_chgcar(path, atoms, density)
    assert path.read_text() == "old content"
    assert [p.name for p in tmp_path.iterdir()] == ["CHGCAR"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda lines: [], "the file is empty"),
        (lambda lines: lines[:1000], "truncated or malformed grid block: 4910 values where"),
        (lambda lines: lines[:18], "truncated file: a grid block has no values"),
        (
            lambda lines: [*lines[:20], lines[20].replace("E+01", "E+O1", 1), *lines[21:]],
            "non-numeric value",
        ),
        (lambda lines: [*lines[:17], "   36   36   37", *lines[18:]], "where the grid needs 47952"),
        (
            lambda lines: [*lines[:20], " NaN " + lines[20].split(None, 1)[1], *lines[21:]],
            "NaN or infinite",
        ),
        (lambda lines: [*lines[:2], "0 0 0", *lines[3:]], "zero volume"),
        (lambda lines: lines[:7], "too short for a VASP volumetric file"),
        (lambda lines: ["hello", "world", *lines[2:]], "unreadable POSCAR header"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, edit, message):
    path = write_lines(tmp_path / "CHGCAR", edit(si8_lines()))
    with pytest.raises(InputError, match=message) as error:
        read_density(path)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_directory_binary_and_broken_gzip_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_density(tmp_path / "nothing")
    with pytest.raises(InputError, match="is a directory"):
        read_density(tmp_path)
    (tmp_path / "binary").write_bytes(bytes(range(256)) * 10)
    with pytest.raises(InputError, match="not a text file"):
        read_density(tmp_path / "binary")
    (tmp_path / "cut.gz").write_bytes(SI8.read_bytes()[:5000])
    with pytest.raises(InputError, match="broken gzip file"):
        read_density(tmp_path / "cut.gz")
