"""Grids: point coordinates, grid counts, random sampling, periodic images near points."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from dpcharge.conventions import MIN_DISTANCE
from dpcharge.errors import InputError
from dpcharge.grid import (
    PeriodicImages,
    choose_grid,
    fft_friendly,
    frame_size_for_all_points,
    grid_for_spacing,
    grid_points,
    sample_grid_points,
)


def rng(seed):
    return np.random.default_rng(seed)


def test_grid_points_sit_at_fractional_i_over_n_of_a_non_orthogonal_cell():
    cell = np.array([[4.0, 0.0, 0.0], [2.0, 3.0, 0.0], [0.5, 0.5, 6.0]])
    shape = (4, 5, 6)
    index = np.ravel_multi_index(([1, 3], [0, 4], [5, 2]), shape)
    points = grid_points(cell, shape, index)
    assert np.allclose(points[0], 1 / 4 * cell[0] + 0 / 5 * cell[1] + 5 / 6 * cell[2])
    assert np.allclose(points[1], 3 / 4 * cell[0] + 4 / 5 * cell[1] + 2 / 6 * cell[2])
    assert grid_points(cell, shape, index.reshape(2, 1)).shape == (2, 1, 3)


def test_sampling_is_distinct_reproducible_and_seeded():
    first = sample_grid_points(1000, 600, rng(7))
    assert len(np.unique(first)) == 600
    assert first.min() >= 0 and first.max() < 1000
    assert np.array_equal(first, sample_grid_points(1000, 600, rng(7)))
    assert not np.array_equal(first, sample_grid_points(1000, 600, rng(8)))


def test_sampling_refuses_more_points_than_the_grid_naming_the_parameter():
    with pytest.raises(InputError, match="1,001 requested but the grid has only 1,000") as error:
        sample_grid_points(1000, 1001, rng(0))
    assert error.value.parameter == "points"
    with pytest.raises(InputError, match="points: must be positive"):
        sample_grid_points(1000, 0, rng(0))


@pytest.mark.parametrize(
    ("grid_size", "requested", "expected"),
    [
        (72**3, 200, 192),
        (36**3, 200, 192),
        (32 * 32 * 108, 200, 192),
        (24**3, 200, 192),
        (1000, 200, 200),
        (97, 200, 97),
        (101, 50, 1),
    ],
)
def test_frame_size_for_all_points_divides_the_grid(grid_size, requested, expected):
    size = frame_size_for_all_points(grid_size, requested)
    assert size == expected
    assert grid_size % size == 0


def test_points_on_or_near_a_nucleus_move_out_to_the_minimum_distance():
    cell = np.array([[5.0, 0.0, 0.0], [1.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    positions = np.array([[0.0, 0.0, 0.0], [2.5, 2.5, 2.5]])
    points = np.array(
        [
            [0.0, 0.0, 0.0],  # on an atom
            [2.5, 2.5, 2.5 + 0.004],  # 0.004 Å above the second atom
            [6.0 - 0.003, 5.0, 5.0],  # 0.003 Å from a periodic image of the first
            [1.0, 1.0, 1.0],  # far from both
        ]
    )
    nuclei = PeriodicImages(Atoms("Si2", positions=positions, cell=cell, pbc=True), MIN_DISTANCE)
    moved = nuclei.push_out_of_nuclei(points)
    assert np.allclose(moved[0], MIN_DISTANCE / np.sqrt(3))
    assert np.allclose(moved[1], [2.5, 2.5, 2.5 + MIN_DISTANCE])
    assert np.allclose(moved[2], [6.0 - MIN_DISTANCE, 5.0, 5.0])
    assert np.array_equal(moved[3], points[3])
    assert nuclei.push_out_of_nuclei(points[None]).shape == (1, 4, 3)


def test_periodic_images_reach_every_atom_within_the_cutoff_of_a_small_cell():
    primitive = bulk("Si", "diamond", a=5.43)  # planes 3.1 Å apart, cell at 60 degrees
    images = PeriodicImages(primitive, reach=6.5)
    assert np.array_equal(images.positions[:2], images.wrap(primitive.positions))  # cell first
    supercell = primitive * (6, 6, 6)
    point = np.array([[0.3, 0.7, 1.1]])
    brute = np.linalg.norm(supercell.positions - supercell.positions.mean(0) - point, axis=1)
    centred = images.wrap(point + supercell.positions.mean(0))
    found = images.tree.query_ball_point(centred[0], 6.5)
    assert len(found) == np.sum(brute < 6.5)


def test_vacuum_directions_get_no_images():
    molecule = Atoms("Si2", positions=[[1, 1, 1], [2, 2, 2]], cell=[8, 8, 8], pbc=[1, 1, 0])
    images = PeriodicImages(molecule, reach=6.5)
    assert np.all(images.positions[:, 2] < 8)  # no image shifted along the vacuum direction
    assert len(images.positions) == 2 * 3 * 3  # ceil(6.5 / 8) = 1 shift each way along x and y


@pytest.mark.parametrize(
    ("count", "friendly"), [(1, 1), (11, 12), (13, 14), (71, 72), (97, 98), (121, 125)]
)
def test_fft_friendly_counts(count, friendly):
    assert fft_friendly(count) == friendly


def test_grid_for_spacing_follows_each_cell_vector():
    cell = np.diag([10.86, 5.43, 3.0])
    assert grid_for_spacing(cell, 0.15) == (75, 40, 20)
    for spacing in (0, -1, float("inf"), float("nan")):
        with pytest.raises(InputError, match="spacing: must be a positive number of Å"):
            grid_for_spacing(cell, spacing)


def test_choose_grid_takes_counts_then_spacing_then_reference_then_default():
    cell = np.diag([10.86, 5.43, 3.0])
    assert choose_grid(cell, shape=(4, 5, 6), reference_shape=(9, 9, 9)) == ((4, 5, 6), "shape")
    assert choose_grid(cell, spacing=0.3, reference_shape=(9, 9, 9)) == ((40, 20, 10), "spacing")
    assert choose_grid(cell, reference_shape=(9, 9, 9)) == ((9, 9, 9), "reference")
    assert choose_grid(cell) == ((75, 40, 20), "default")
    with pytest.raises(InputError, match="shape: a grid needs three positive counts"):
        choose_grid(cell, shape=(0, 4, 4))
