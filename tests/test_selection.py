"""Concurrent learning: choosing grid points and structures by an ensemble's deviation."""

import numpy as np
import pytest
from ase.build import bulk

from dpcharge.errors import InputError
from dpcharge.grid import grid_for_spacing
from dpcharge.inference import DeepDensity
from dpcharge.selection import inclusion_probabilities, rank_structures, select_points


def test_select_points_draws_by_deviation_with_weights_that_undo_the_bias():
    deviation = np.random.default_rng(0).random((10, 10, 10)) ** 4
    index, weight = select_points(deviation, 100, 0.2, np.random.default_rng(1))
    assert len(index) == 100 and len(np.unique(index)) == 100
    flat = deviation.ravel()
    assert flat[index].mean() > 2 * flat.mean()  # drawn where the models disagree
    again = select_points(deviation, 100, 0.2, np.random.default_rng(1))
    assert np.array_equal(index, again[0]) and np.array_equal(weight, again[1])
    # inclusion probabilities: 0.2 of the drawing uniform, 0.8 by deviation, none above 1
    share = 0.2 / flat.size + 0.8 * flat / flat.sum()
    inclusion = inclusion_probabilities(share, 100)
    assert inclusion.sum() == pytest.approx(100, rel=1e-12) and inclusion.max() <= 1
    np.testing.assert_allclose(weight, 100 / (flat.size * inclusion[index]), rtol=1e-12)
    # over many draws each point is drawn as often as its probability says, and the
    # weighted mean of any grid quantity over the drawn points is the mean over the grid
    draws = 4000
    counts = np.zeros(flat.size)
    values = np.random.default_rng(2).random(flat.size)
    estimates = []
    for seed in range(draws):
        index, weight = select_points(deviation, 100, 0.2, np.random.default_rng(seed))
        counts[index] += 1
        estimates.append(np.sum(weight * values[index]) / 100)
    spread = np.sqrt(inclusion * (1 - inclusion) / draws)
    assert np.all(np.abs(counts / draws - inclusion) <= 5 * spread + 1e-12)
    assert np.mean(estimates) == pytest.approx(values.mean(), abs=5 * np.std(estimates) / 63)


def test_points_certain_to_be_drawn_are_capped_and_a_uniform_draw_weighs_one():
    deviation = np.zeros(1000)
    deviation[:10] = 1.0  # ten points take 0.8 of the drawing: each drawn for certain
    share = 0.2 / 1000 + 0.8 * deviation / 10
    inclusion = inclusion_probabilities(share, 100)
    assert np.all(inclusion[:10] == 1)
    np.testing.assert_allclose(inclusion[10:], 90 / 990, rtol=1e-12)
    index, weight = select_points(deviation, 100, 0.2, np.random.default_rng(0))
    assert set(range(10)) <= set(index)
    _, weight = select_points(deviation, 100, 1.0, np.random.default_rng(0))
    np.testing.assert_allclose(weight, 1, rtol=1e-12)


@pytest.mark.parametrize(
    ("points", "share", "message"),
    [
        (2000, 0.2, "points: 2,000 requested"),
        (10, 1.5, "uniform_share: must be above 0 and at most 1"),
        (10, 0.0, "uniform_share: must be above 0 and at most 1"),
    ],
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
