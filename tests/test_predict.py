"""Whole-grid prediction: the engine against DeePMD-kit, and dpcharge reassemble / test."""

import json
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.vasp import VaspChargeDensity
from ase.io.cube import read_cube_data
from ase.units import Bohr

from dpcharge import predict
from dpcharge.chgcar import read_density
from dpcharge.errors import InputError
from dpcharge.metrics import density_errors, electron_count

DATA = Path(__file__).parent / "data"
SI8 = DATA / "CHGCAR_Si8_qe.gz"
SI64 = DATA / "CHGCAR_Si64_gamma_qe.gz"
AL4 = DATA / "CHGCAR_Al4_lda_qe.gz"
DPCHARGE = [sys.executable, "-m", "dpcharge"]


def run(*args, cwd=None):
    return subprocess.run([*map(str, args)], capture_output=True, text=True, cwd=cwd, check=False)


def dpcharge(*args, cwd=None):
    return run(*DPCHARGE, *args, cwd=cwd)


@pytest.fixture(scope="module")
def frozen_model(density_model):
    """The shared small density model (tests/conftest.py): its frozen graph."""
    return density_model.model


@pytest.fixture(scope="module")
def model(density_model):
    return predict.DensityModel(density_model.model)


@pytest.fixture(scope="module")
def deeppot(density_model):
    from deepmd.infer import DeepPot

    return DeepPot(str(density_model.model))


def deeppot_density(deeppot, atoms, points, periodic=True):
    """Density at points from DeePMD-kit's own inference (its neighbour search, all atoms)."""
    coords = np.concatenate([atoms.get_positions(), points])
    types = np.r_[np.zeros(len(atoms), int), np.ones(len(points), int)]
    cell = atoms.get_cell().array.reshape(1, 9) if periodic else None
    atom_energy = deeppot.eval(coords[None], cell, types, atomic=True)[3]
    return atom_energy.reshape(-1)[len(atoms) :]


def random_points(atoms, count, seed=0):
    return np.random.default_rng(seed).random((count, 3)) @ atoms.get_cell().array


def test_engine_equals_deeppot_eval_on_a_chunk(model, deeppot):
    atoms = read_density(SI64)[0]
    points = random_points(atoms, 300)
    mine = model.predict_points(atoms, points)
    theirs = deeppot_density(deeppot, atoms, points)
    assert np.std(theirs) > 1e-3  # a model whose output varies from point to point
    np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-10)


def test_cell_smaller_than_the_cutoff_sees_its_periodic_images(model, deeppot):
    primitive = bulk("Si", "diamond", a=5.43)  # 2 atoms, planes 3.1 Å apart, cell at 60 degrees
    assert max(primitive.cell.lengths()) < model.rcut
    points = random_points(primitive, 200, seed=1)
    small_cell = model.predict_points(primitive, points)
    np.testing.assert_allclose(small_cell, deeppot_density(deeppot, primitive, points), atol=1e-10)
    supercell = primitive * (4, 4, 4)
    np.testing.assert_allclose(small_cell, model.predict_points(supercell, points), atol=1e-12)


def test_non_orthogonal_cell_and_unwrapped_atoms_give_the_same_density(model):
    primitive = bulk("Si", "diamond", a=5.43)  # 2 atoms, fcc cell at 60 degrees
    cubic = bulk("Si", "diamond", a=5.43, cubic=True)
    points = random_points(cubic, 200, seed=2)
    expected = model.predict_points(cubic, points)
    np.testing.assert_allclose(model.predict_points(primitive, points), expected, atol=1e-12)
    shifted = primitive.copy()
    shifted.positions += primitive.cell[0] * 2 - primitive.cell[2]  # same crystal, atoms outside
    np.testing.assert_allclose(model.predict_points(shifted, points), expected, atol=1e-12)


def test_vacuum_without_periodic_boundaries_matches_deeppot(model, deeppot):
    cluster = read_density(SI8)[0]
    cluster.pbc = False
    points = random_points(cluster, 100, seed=3) * 1.5 - 1.0  # some outside the box
    np.testing.assert_allclose(
        model.predict_points(cluster, points),
        deeppot_density(deeppot, cluster, points, periodic=False),
        atol=1e-10,
    )


def test_grid_prediction_does_not_depend_on_the_chunk(model):
    atoms = read_density(SI8)[0]
    shape = (6, 5, 4)
    whole = model.predict_grid(atoms, shape, chunk=10_000)
    # the same to round-off: only the order of the ghost atoms differs
    np.testing.assert_allclose(model.predict_grid(atoms, shape, chunk=7), whole, atol=1e-13)
    i, j, k = 3, 1, 2
    point = np.array([i / 6, j / 5, k / 4]) @ atoms.get_cell().array
    assert whole[i, j, k] == pytest.approx(model.predict_points(atoms, point[None])[0], abs=1e-12)


@pytest.mark.parametrize(
    ("count", "friendly"), [(1, 1), (11, 12), (13, 14), (71, 72), (97, 98), (121, 125)]
)
def test_fft_friendly_counts(count, friendly):
    assert predict.fft_friendly(count) == friendly


def test_grid_for_spacing_follows_each_cell_vector():
    cell = np.diag([10.86, 5.43, 3.0])
    assert predict.grid_for_spacing(cell, 0.15) == (75, 40, 20)
    with pytest.raises(InputError, match="--spacing must be positive"):
        predict.grid_for_spacing(cell, 0)


def test_reassemble_chgcar_round_trip_read_by_ase_and_pymatgen(frozen_model, tmp_path):
    from pymatgen.io.vasp import Chgcar

    out = tmp_path / "CHGCAR"
    result = dpcharge("reassemble", frozen_model, SI8, "-o", out, "--npy", tmp_path / "rho.npy")
    assert result.returncode == 0, result.stderr
    assert "grid 36 x 36 x 36 = 46,656 points" in result.stdout
    density = np.load(tmp_path / "rho.npy")
    atoms, written = read_density(out)
    np.testing.assert_allclose(written, density, rtol=1e-9, atol=1e-12)
    dft_atoms = read_density(SI8)[0]
    np.testing.assert_allclose(atoms.positions, dft_atoms.positions, atol=1e-8)
    ase_chgcar = VaspChargeDensity(str(out))
    assert ase_chgcar.atoms[-1].get_chemical_formula() == "Si8"
    np.testing.assert_allclose(ase_chgcar.chg[-1], density, rtol=1e-9, atol=1e-12)
    chgcar = Chgcar.from_file(str(out))
    np.testing.assert_allclose(chgcar.data["total"] / chgcar.structure.volume, density, rtol=1e-9)
    before = f"predicted density integrates to {electron_count(density, atoms.get_volume()):.4f} e"
    assert before in result.stdout


def test_reassemble_cube_round_trip_read_by_ase_and_pymatgen(frozen_model, tmp_path):
    from pymatgen.io.common import VolumetricData

    out = tmp_path / "rho.cube"
    result = dpcharge(
        "reassemble", frozen_model, SI8, "-o", out, "--format", "cube", "--grid", 12, 10, 8
    )
    assert result.returncode == 0, result.stderr
    atoms = read_density(SI8)[0]
    expected = predict.DensityModel(frozen_model).predict_grid(atoms, (12, 10, 8))
    data, cube_atoms = read_cube_data(str(out))
    np.testing.assert_allclose(data / Bohr**3, expected, rtol=1e-5)
    np.testing.assert_allclose(cube_atoms.cell.array, atoms.cell.array, atol=1e-5)
    assert VolumetricData.from_cube(str(out)).data["total"].shape == (12, 10, 8)


def test_nelect_rescales_and_reports_both_integrals(frozen_model, tmp_path):
    poscar = tmp_path / "POSCAR"
    ase.io.write(poscar, read_density(SI8)[0], format="vasp")
    out = tmp_path / "CHGCAR"
    result = dpcharge("reassemble", frozen_model, poscar, "-o", out, "--nelect", 32)
    assert result.returncode == 0, result.stderr
    assert "grid 40 x 40 x 40" in result.stdout  # default spacing 0.15 Å: 5.43/0.15 -> 40
    atoms, density = read_density(out)
    assert electron_count(density, atoms.get_volume()) == pytest.approx(32, rel=1e-9)
    assert "predicted density integrates to" in result.stdout
    assert "rescaled to 32.0000 e" in result.stdout


def test_normalize_takes_the_electrons_of_the_input_chgcar(frozen_model, tmp_path):
    out = tmp_path / "CHGCAR"
    result = dpcharge("reassemble", frozen_model, SI8, "-o", out, "--normalize")
    assert result.returncode == 0, result.stderr
    dft_atoms, dft = read_density(SI8)
    atoms, density = read_density(out)
    dft_electrons = electron_count(dft, dft_atoms.get_volume())
    assert electron_count(density, atoms.get_volume()) == pytest.approx(dft_electrons, rel=1e-9)


def test_like_takes_the_grid_and_electrons_of_a_reference_file(frozen_model, tmp_path):
    poscar = tmp_path / "POSCAR"
    ase.io.write(poscar, read_density(SI8)[0], format="vasp")
    out = tmp_path / "CHGCAR"
    result = dpcharge("reassemble", frozen_model, poscar, "-o", out, "--like", SI8, "--normalize")
    assert result.returncode == 0, result.stderr
    assert f"grid 36 x 36 x 36 = 46,656 points (spacing 0.151 0.151 0.151 Å) from --like {SI8}" in (
        result.stdout
    )
    atoms, density = read_density(out)
    assert density.shape == (36, 36, 36)
    assert electron_count(density, atoms.get_volume()) == pytest.approx(32, abs=1e-3)


def test_dpcharge_test_prints_writes_json_and_figures(frozen_model, tmp_path):
    result = dpcharge(
        "test", frozen_model, SI8, SI8, "--json", tmp_path / "m.json", "--plots", tmp_path / "f"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "m.json").read_text())
    atoms, dft = read_density(SI8)
    prediction = predict.DensityModel(frozen_model).predict_grid(atoms, dft.shape)
    expected = density_errors([dft], [prediction], [atoms.get_volume()])
    assert sorted(report["files"]) == ["000_data_CHGCAR_Si8_qe", "001_data_CHGCAR_Si8_qe"]
    first = report["files"]["000_data_CHGCAR_Si8_qe"]
    assert first["path"] == str(SI8)
    assert first["mae"] == pytest.approx(expected.mae, rel=1e-12)
    assert first["r2"] == pytest.approx(expected.r2, rel=1e-12)
    assert first["electrons_reference"] == pytest.approx(32, abs=1e-3)
    assert report["overall"]["points"] == 2 * 36**3
    assert report["overall"]["electrons_reference"] == pytest.approx(64, abs=1e-3)
    assert report["overall"]["nmae"] == pytest.approx(expected.nmae, rel=1e-12)
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:4]}
    assert rows["000_data_CHGCAR_Si8_qe"] == expected.row("x").split()[1:]
    assert rows["overall"][0] == str(2 * 36**3)
    figures = sorted(p.name for p in (tmp_path / "f").iterdir())
    assert len(figures) == 8  # 4 per file; the two copies have distinct names
    assert all((tmp_path / "f" / name).read_bytes()[:4] == b"\x89PNG" for name in figures)


def non_frozen_model(frozen_model, tmp_path):
    """The same graph relabelled as a DeePMD-kit dipole model."""
    import tensorflow as tf

    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(frozen_model.read_bytes())
    for node in graph.node:
        if node.name == "model_attr/model_type":
            node.attr["value"].CopyFrom(
                tf.compat.v1.AttrValue(tensor=tf.make_tensor_proto(b"dipole"))
            )
        if node.name == "train_attr/training_script":
            script = json.loads(tf.make_ndarray(node.attr["value"].tensor).item())
            script["model"].update(type="standard", fitting_net={"type": "dipole"})
            proto = tf.make_tensor_proto(json.dumps(script).encode())
            node.attr["value"].CopyFrom(tf.compat.v1.AttrValue(tensor=proto))
    path = tmp_path / "dipole.pb"
    path.write_bytes(graph.SerializeToString())
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown element", "holds Al, which the model does not know"),
        ("not a density model", "not a density model (a DeePMD-kit 'dipole' model)"),
        ("text file as model", "not a frozen DeePMD-kit TensorFlow model"),
        ("missing model", "nomodel.pb: no such file"),
        ("unreadable structure", "garbage.txt: unreadable structure"),
        ("missing structure", "POSCAR_missing: no such file"),
        ("zero grid", "a grid needs three positive counts NX NY NZ, got (0, 4, 4)"),
        ("normalize without reference", "--normalize needs a reference density"),
        ("zero chunk", "--chunk must be positive, got 0"),
        ("missing output folder", "the folder does not exist"),
        ("like a file of another cell", "CHGCAR_Si64_gamma_qe.gz: its cell differs"),
    ],
)
def test_user_mistakes_give_one_line_errors_and_no_output(frozen_model, tmp_path, case, message):
    (tmp_path / "garbage.txt").write_text("this is not a structure\n")
    (tmp_path / "model.txt").write_text("not a model\n")
    poscar = tmp_path / "POSCAR"
    ase.io.write(poscar, bulk("Si", "diamond", a=5.43), format="vasp")
    model, structure, extra = frozen_model, SI8, []
    if case == "unknown element":
        structure = AL4
    elif case == "not a density model":
        model = non_frozen_model(frozen_model, tmp_path)
    elif case == "text file as model":
        model = tmp_path / "model.txt"
    elif case == "missing model":
        model = tmp_path / "nomodel.pb"
    elif case == "unreadable structure":
        structure = tmp_path / "garbage.txt"
    elif case == "missing structure":
        structure = tmp_path / "POSCAR_missing"
    elif case == "zero grid":
        extra = ["--grid", "0", "4", "4"]
    elif case == "normalize without reference":
        structure, extra = poscar, ["--normalize"]
    elif case == "zero chunk":
        extra = ["--chunk", "0"]
    elif case == "like a file of another cell":
        extra = ["--like", str(SI64)]
    output = tmp_path / ("nowhere/CHGCAR" if case == "missing output folder" else "CHGCAR_out")
    before = sorted(tmp_path.iterdir())
    result = dpcharge("reassemble", model, structure, "-o", output, *extra)
    assert result.returncode == 2
    assert result.stderr.startswith("dpcharge: error: ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert sorted(tmp_path.iterdir()) == before
