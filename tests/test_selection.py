"""Concurrent learning: choosing grid points and structures by an ensemble's deviation."""

import numpy as np
import pytest
from ase.build import bulk

from dpcharge.errors import InputError
from dpcharge.grid import grid_for_spacing
from dpcharge.inference import DeepDensity
from dpcharge.selection import rank_structures, select_points


def test_select_points_takes_a_uniform_share_then_the_largest_deviations():
    deviation = np.random.default_rng(0).random((10, 10, 10))
    index = select_points(deviation, 100, 0.2, np.random.default_rng(1))
    assert len(index) == 100 and len(np.unique(index)) == 100
    flat = deviation.ravel()
    largest = set(np.argsort(-flat)[:100])
    assert len(set(index) - largest) <= 20  # at most the uniform share lies outside the top
    chosen = flat[index]
    others = np.delete(flat, index)
    assert np.sort(chosen)[20] > np.max(others)  # the 80 by deviation beat every other point
    again = select_points(deviation, 100, 0.2, np.random.default_rng(1))
    assert np.array_equal(index, again)
    assert set(select_points(deviation, 100, 0.0, np.random.default_rng(1))) == largest


@pytest.mark.parametrize(
    ("points", "share", "message"),
    [(2000, 0.2, "points: 2,000 requested"), (10, 1.5, "uniform_share: must be between 0 and 1")],
)
def test_select_points_refuses_what_cannot_be(points, share, message):
    with pytest.raises(InputError, match=message):
        select_points(np.ones(1000), points, share, np.random.default_rng(0))


def test_structures_are_ranked_by_the_largest_deviation(density_model, second_model):
    ensemble = DeepDensity([density_model.model, second_model])
    frames = [bulk("Si", "diamond", a=5.43, cubic=True) for _ in range(3)]
    frames[1].rattle(0.3, seed=1)
    frames[2].set_cell(frames[2].cell * 1.1, scale_atoms=True)
    ranking = rank_structures(ensemble, frames, spacing=0.6)
    assert sorted(found.frame for found in ranking) == [0, 1, 2]
    assert [found.largest for found in ranking] == sorted(
        (found.largest for found in ranking), reverse=True
    )
    for found in ranking:
        atoms = frames[found.frame]
        shape = grid_for_spacing(atoms.cell.array, 0.6)
        _, deviation = ensemble.predict_grid(atoms, shape, deviation=True)
        assert found.largest == pytest.approx(deviation.max(), rel=1e-12)
        assert found.mean == pytest.approx(deviation.mean(), rel=1e-12)
