"""The dpdata format vasp/chgcar on real densities."""

from pathlib import Path

import dpdata
import numpy as np
import pytest

from dpcharge.chgcar import read_density
from dpcharge.conventions import MIN_DISTANCE
from dpcharge.errors import InputError

DATA = Path(__file__).parent / "data"
SI8 = DATA / "CHGCAR_Si8_qe.gz"


def grid_index(system, density_shape):
    """Recover each grid atom's (i, j, k) from its coordinates: (frames, points, 3)."""
    real = sum(system["atom_numbs"][:-1])
    fractional = system["coords"][:, real:] @ np.linalg.inv(system["cells"][0])
    rounded = np.rint(fractional * np.array(density_shape))
    on_grid = rounded / np.array(density_shape) @ system["cells"][0]
    offset = np.linalg.norm(system["coords"][:, real:] - on_grid, axis=-1)
    # exactly on the grid, but for points moved off a nucleus
    assert np.all((offset < 1e-9) | np.isclose(offset, MIN_DISTANCE, atol=1e-9))
    return rounded.astype(int)


def test_every_label_is_the_file_value_at_that_grid_point():
    atoms, density = read_density(SI8)
    system = dpdata.System(SI8, fmt="vasp/chgcar", points=4000, points_per_frame=200, seed=3)
    assert system.get_nframes() == 20
    assert system["atom_names"] == ["Si", "X"]
    assert system["atom_numbs"] == [8, 200]
    labels = system["atom_ener"]
    assert np.all(labels[:, :8] == 0)
    ijk = grid_index(system, density.shape)
    assert np.array_equal(labels[:, 8:], density[ijk[..., 0], ijk[..., 1], ijk[..., 2]])
    assert np.allclose(system["coords"][:, :8], atoms.positions)
    flat = np.ravel_multi_index(ijk.reshape(-1, 3).T, density.shape)
    assert len(np.unique(flat)) == 4000  # without replacement


def test_all_points_takes_every_grid_point_once():
    _, density = read_density(SI8)
    system = dpdata.System(SI8, fmt="vasp/chgcar", all_points=True, points_per_frame=200)
    assert system["atom_numbs"] == [8, 192]
    flat = np.ravel_multi_index(grid_index(system, density.shape).reshape(-1, 3).T, density.shape)
    assert np.array_equal(np.sort(flat), np.arange(density.size))
    assert system["atom_ener"][:, 8:].sum() == pytest.approx(density.sum(), rel=1e-12)
    # the ideal crystal has its 8 atoms on grid points: those moved off the nuclei
    grid = system["coords"][:, 8:].reshape(-1, 3)
    distance = np.linalg.norm(grid[:, None, :] - system["coords"][0, None, :8], axis=-1).min(1)
    assert np.sum(np.isclose(distance, MIN_DISTANCE)) == 8
    assert distance.min() == pytest.approx(MIN_DISTANCE)


def test_same_seed_same_frames_other_seed_other_frames():
    def labels(seed):
        return dpdata.System(SI8, fmt="vasp/chgcar", points=400, seed=seed)["atom_ener"]

    assert np.array_equal(labels(1), labels(1))
    assert not np.array_equal(labels(1), labels(2))


def test_type_map_orders_real_elements_and_puts_the_grid_type_last(tmp_path):
    path = DATA / "CHGCAR_Al4_lda_qe.gz"
    system = dpdata.System(path, fmt="vasp/chgcar", type_map=["Mg", "Al", "grid"], points=400)
    assert system["atom_names"] == ["Mg", "Al", "grid"]
    assert system["atom_numbs"] == [0, 4, 200]
    assert np.array_equal(system["atom_types"], [1] * 4 + [2] * 200)
    system.to("deepmd/npy", tmp_path / "al")
    assert (tmp_path / "al/type_map.raw").read_text().split() == ["Mg", "Al", "grid"]
    back = dpdata.System(tmp_path / "al", fmt="deepmd/npy")
    assert np.array_equal(back["atom_ener"], system["atom_ener"])
    assert not (tmp_path / "al/set.000/energy.npy").exists()


def test_chosen_points_keep_their_weights_through_deepmd_kit(tmp_path):
    from deepmd.utils.data_system import DeepmdDataSystem

    from dpcharge.fitting import DensityLoss

    _, density = read_density(SI8)
    rng = np.random.default_rng(0)
    index = rng.choice(density.size, 400, replace=False)
    weight = rng.uniform(0.5, 4, 400)
    system = dpdata.System(SI8, fmt="vasp/chgcar", grid_index=index, grid_weight=weight)
    flat = np.ravel_multi_index(grid_index(system, density.shape).reshape(-1, 3).T, density.shape)
    assert np.array_equal(flat, index)
    assert np.array_equal(system["grid_weight"][:, 8:].ravel(), weight)
    assert np.all(system["grid_weight"][:, :8] == 1)
    system.to("deepmd/npy", tmp_path / "si8")
    # DeePMD-kit loads them with the labels the density loss asks for, in the same order
    data = DeepmdDataSystem([str(tmp_path / "si8")], batch_size=2, test_size=1, rcut=6.0)
    data.add_data_requirements(DensityLoss().label_requirement)
    batch = data.get_batch()
    assert batch["find_grid_weight"] == 1
    labels, weights = batch["atom_ener"], batch["grid_weight"]
    for frame in range(2):
        chosen = np.flatnonzero(np.isin(system["atom_ener"][:, 8:], labels[frame]).all(axis=1))
        assert len(chosen) == 1
        order = np.argsort(system["atom_ener"][chosen[0]])
        assert np.array_equal(np.sort(labels[frame]), system["atom_ener"][chosen[0], order])
        pairs = sorted(zip(labels[frame], weights[frame], strict=True))
        expected = sorted(
            zip(system["atom_ener"][chosen[0]], system["grid_weight"][chosen[0]], strict=True)
        )
        assert pairs == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"type_map": ["Mg", "X"]}, "holds Si, which the type map does not know"),
        ({"type_map": ["X", "Si"]}, "the grid-point type 'Si' is also an element"),
        ({"type_map": ["Si", "Si", "X"]}, "names a type twice"),
        ({"virtual_type": "Si"}, "is also an element"),
        ({"type_map": ["Si", "X"], "virtual_type": "Y"}, "must end with the grid-point type"),
        ({"points": 1000, "points_per_frame": 300}, "do not split into frames of 300"),
        ({"points": 50000}, "points: 50,000 requested but the grid has only 46,656 points"),
        ({"seed": -1}, "seed: must be 0 or more"),
        ({"grid_weight": np.ones(200)}, "grid_weight: must be positive, one per point"),
        ({"grid_index": np.arange(200), "grid_weight": np.zeros(200)}, "grid_weight: must be"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(InputError, match=message):
        dpdata.System(SI8, fmt="vasp/chgcar", **options)
