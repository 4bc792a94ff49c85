"""The prediction engine against DeePMD-kit's own inference, and the checks of a frozen model."""

from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from conftest import sphere_of_atoms

from dpcharge.chgcar import read_density
from dpcharge.conventions import TypeMap
from dpcharge.errors import InputError
from dpcharge.inference import DeepDensity, _neighbour_limits

DATA = Path(__file__).parent / "data"
SI8 = DATA / "CHGCAR_Si8_qe.gz"
SI64 = DATA / "CHGCAR_Si64_gamma_qe.gz"


@pytest.fixture(scope="module")
def model(density_model):
    return DeepDensity(density_model.model)


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


def test_the_same_chunks_give_the_same_bytes_for_any_number_of_workers(density_model):
    atoms = read_density(SI64)[0]
    shape = (20, 18, 15)
    one = DeepDensity(density_model.model, workers=1).predict_grid(atoms, shape, chunk=500)
    two = DeepDensity(density_model.model, workers=2).predict_grid(atoms, shape, chunk=500)
    assert np.array_equal(one, two)
    # another chunk size sums in another order: float32 round-off of the model's precision
    other = DeepDensity(density_model.model, workers=2).predict_grid(atoms, shape, chunk=777)
    np.testing.assert_allclose(other, one, rtol=1e-5, atol=1e-6 * np.abs(one).max())
    i, j, k = 3, 1, 2
    point = np.array([i / 20, j / 18, k / 15]) @ atoms.get_cell().array
    single = DeepDensity(density_model.model).predict_points(atoms, point[None])[0]
    assert one[i, j, k] == pytest.approx(single, rel=1e-5, abs=1e-6 * np.abs(one).max())


def test_predict_range_fills_a_block_that_starts_on_a_chunk_boundary(model):
    atoms = read_density(SI8)[0]
    shape = (6, 5, 4)
    whole = model.predict_grid(atoms, shape, chunk=10)
    block = np.empty(35)
    model.predict_range(model.surroundings(atoms), shape, block, 50, chunk=10)
    assert np.array_equal(block, whole.ravel()[50:85])
    with pytest.raises(ValueError, match="chunk boundary"):
        model.predict_range(model.surroundings(atoms), shape, block, 55, chunk=10)


def test_unknown_element_and_bad_workers_are_refused(density_model, model):
    with pytest.raises(InputError, match="holds Al, which the type map does not know"):
        model.predict_grid(bulk("Al", "fcc", a=4.05), (4, 4, 4))
    with pytest.raises(InputError, match="chunk: must be positive"):
        model.predict_grid(read_density(SI8)[0], (4, 4, 4), chunk=0)
    with pytest.raises(InputError, match="workers: must be 0"):
        DeepDensity(density_model.model, workers=-1)


def test_a_point_with_more_neighbours_than_the_model_lists_is_refused(model):
    # DeePMD-kit keeps the nearest sel (48 Si within 5 Å) and drops the others silently
    centre = np.full((1, 3), 10.0)
    assert np.isfinite(model.predict_points(sphere_of_atoms(48), centre)).all()
    message = r"has more than 48 atoms within 5 Å, and the model lists only the nearest 48"
    with pytest.raises(InputError, match=message):
        model.predict_points(sphere_of_atoms(49), centre)
    crowded = bulk("Si", "diamond", a=5.43 * 0.8)  # twice as dense: ~60 within 5 Å
    with pytest.raises(InputError, match="denser than the model was made for"):
        model.predict_grid(crowded, (6, 6, 6))


def test_neighbour_limits_follow_the_descriptor_the_baseline_and_excluded_pairs():
    script = {
        "model": {
            "descriptor": {"exclude_types": [[0, 1], [1, 2]]},  # H-X: grid points see no H
            "fitting_net": {"baseline": {"rcut": 5.0, "sel": [32, 56]}},
        }
    }
    water = TypeMap(("O", "H"))
    limits = _neighbour_limits({"descrpt_attr/sel": np.array([48, 96, 0])}, script, 6.5, water)
    assert limits == [(6.5, 0, 48), (5.0, 0, 32), (5.0, 1, 56)]
    del script["model"]["fitting_net"]["baseline"]
    one_total = _neighbour_limits({"descrpt_attr/sel": np.array([120])}, script, 6.5, water)
    assert one_total == [(6.5, None, 120)]  # a list not grouped by type (se_atten)


def test_files_that_are_no_density_model_are_refused(foreign_models, tmp_path):
    (tmp_path / "model.txt").write_text("not a model\n")
    cases = {
        foreign_models.dipole: "not a density model (a DeePMD-kit 'dipole' model)",
        tmp_path / "model.txt": "not a frozen DeePMD-kit TensorFlow model",
        foreign_models.flipped: "not a frozen DeePMD-kit TensorFlow model",
        tmp_path / "missing.pb": "missing.pb: no such file",
        tmp_path: "is a folder, not a frozen model",
    }
    for path, message in cases.items():
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            DeepDensity(path)


def test_an_ensemble_predicts_the_mean_and_the_spread_of_its_models(density_model, second_model):
    atoms = read_density(SI8)[0]
    shape = (10, 9, 8)
    first = DeepDensity(density_model.model).predict_grid(atoms, shape, chunk=300)
    second = DeepDensity(second_model).predict_grid(atoms, shape, chunk=300)
    assert np.abs(first - second).mean() > 1e-4  # two different models
    ensemble = DeepDensity([density_model.model, second_model], workers=2)
    mean, spread = ensemble.predict_grid(atoms, shape, chunk=300, deviation=True)
    np.testing.assert_allclose(mean, (first + second) / 2, rtol=0, atol=1e-15)
    np.testing.assert_allclose(spread, np.abs(first - second) / 2, rtol=0, atol=1e-15)
    assert np.array_equal(ensemble.predict_grid(atoms, shape, chunk=300), mean)
    with pytest.raises(InputError, match="models: a deviation needs two models or more"):
        DeepDensity(second_model).predict_grid(atoms, shape, deviation=True)


def test_an_ensemble_of_models_for_other_elements_is_refused(density_model, foreign_models):
    with pytest.raises(InputError, match=r"germanium.pb has type map \['Ge', 'X'\]") as error:
        DeepDensity([density_model.model, foreign_models.germanium])
    assert "an ensemble's models must share both" in str(error.value)
