"""Grid point coordinates and random sampling."""

import numpy as np
import pytest

from dpcharge.errors import InputError
from dpcharge.sampling import (
    MIN_DISTANCE,
    frame_size_for_all_points,
    grid_points,
    keep_away_from_atoms,
    sample_grid_points,
)


def test_grid_points_sit_at_fractional_i_over_n_of_a_non_orthogonal_cell():
    cell = np.array([[4.0, 0.0, 0.0], [2.0, 3.0, 0.0], [0.5, 0.5, 6.0]])
    shape = (4, 5, 6)
    index = np.ravel_multi_index(([1, 3], [0, 4], [5, 2]), shape)
    points = grid_points(cell, shape, index)
    assert np.allclose(points[0], 1 / 4 * cell[0] + 0 / 5 * cell[1] + 5 / 6 * cell[2])
    assert np.allclose(points[1], 3 / 4 * cell[0] + 4 / 5 * cell[1] + 2 / 6 * cell[2])
    assert grid_points(cell, shape, index.reshape(2, 1)).shape == (2, 1, 3)


def test_sampling_is_distinct_reproducible_and_seeded():
    first = sample_grid_points(1000, 600, seed=7)
    assert len(np.unique(first)) == 600
    assert first.min() >= 0 and first.max() < 1000
    assert np.array_equal(first, sample_grid_points(1000, 600, seed=7))
    assert not np.array_equal(first, sample_grid_points(1000, 600, seed=8))


def test_sampling_refuses_more_points_than_the_grid():
    with pytest.raises(InputError, match="1001 points requested but the grid has only 1000"):
        sample_grid_points(1000, 1001, seed=0)
    with pytest.raises(InputError, match="must be positive"):
        sample_grid_points(1000, 0, seed=0)


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
    moved = keep_away_from_atoms(points, positions, cell)
    assert np.allclose(moved[0], MIN_DISTANCE / np.sqrt(3))
    assert np.allclose(moved[1], [2.5, 2.5, 2.5 + MIN_DISTANCE])
    assert np.allclose(moved[2], [6.0 - MIN_DISTANCE, 5.0, 5.0])
    assert np.array_equal(moved[3], points[3])
    assert keep_away_from_atoms(points[None], positions, cell).shape == (1, 4, 3)
