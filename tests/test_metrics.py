"""Density errors, electron counts and magnetic moments, on hand-computed values and real files."""

from pathlib import Path

import numpy as np
import pytest

from dpcharge.chgcar import read_density
from dpcharge.errors import InputError
from dpcharge.grid import grid_points
from dpcharge.metrics import (
    TABLE_HEADER,
    atomic_moments,
    density_errors,
    electron_count,
    rescale_to_moment,
)

DATA = Path(__file__).parent / "data"


def test_errors_on_values_computed_by_hand():
    reference = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 2)
    prediction = np.array([1.0, 2.0, 3.5, 3.0]).reshape(1, 2, 2)
    errors = density_errors([reference], [prediction], [8.0])
    assert errors.points == 4
    assert errors.mae == pytest.approx(1.5 / 4)
    assert errors.rmse == pytest.approx(np.sqrt(1.25 / 4))
    assert errors.nmae == pytest.approx(100 * 1.5 / 10)
    assert errors.r2 == pytest.approx(1 - 1.25 / 5)  # residual 1.25, spread around 2.5 is 5
    assert errors.max_error == pytest.approx(1.0)
    assert errors.electrons_reference == pytest.approx(2.5 * 8)
    assert errors.electrons_predicted == pytest.approx(2.375 * 8)


def test_pooled_errors_weight_every_grid_point_and_sum_electrons():
    small = (np.full((2, 2, 2), 1.0), np.full((2, 2, 2), 1.1))
    large = (np.full((4, 4, 4), 2.0), np.full((4, 4, 4), 2.0))
    errors = density_errors([small[0], large[0]], [small[1], large[1]], [10.0, 20.0])
    assert errors.points == 72
    assert errors.mae == pytest.approx(0.1 * 8 / 72)
    assert errors.nmae == pytest.approx(100 * 0.8 / (8 + 128))
    assert errors.electrons_reference == pytest.approx(10 + 40)
    assert errors.electrons_predicted == pytest.approx(11 + 40)


def test_real_densities_integrate_to_their_valence_electrons():
    for name, electrons in (("CHGCAR_Si8_qe.gz", 32), ("CHGCAR_Si64_gamma_qe.gz", 256)):
        atoms, density = read_density(DATA / name)
        assert electron_count(density, atoms.get_volume()) == pytest.approx(electrons, abs=1e-3)


def test_a_perfect_prediction_of_a_real_density():
    atoms, density = read_density(DATA / "CHGCAR_Si8_qe.gz")
    errors = density_errors([density], [density.copy()], [atoms.get_volume()])
    assert (errors.mae, errors.rmse, errors.nmae, errors.max_error) == (0, 0, 0, 0)
    assert errors.r2 == 1
    row = errors.row("Si8").split()
    assert row[:7] == ["Si8", str(36**3), "0.000e+00", "0.000e+00", "0.000", "1.00000", "0.000e+00"]
    assert float(row[7]) == float(row[8]) == pytest.approx(32, abs=1e-3)
    assert TABLE_HEADER.split()[:2] == ["points", "MAE"]


def test_different_grids_are_refused():
    with pytest.raises(InputError, match="grids differ"):
        density_errors([np.zeros((2, 2, 2))], [np.zeros((2, 2, 3))], [1.0])


def test_atomic_moments_recover_the_moments_of_known_spheres():
    """Normalised Gaussians of known moment on each atom of a non-orthogonal Fe cell."""
    from ase.build import bulk

    atoms = bulk("Fe", "bcc", a=2.87).repeat((2, 2, 1))  # primitive cell: non-orthogonal
    atoms.positions[0] += [0.1, -0.05, 0.07]
    shape = (40, 40, 20)
    points = grid_points(atoms.cell.array, shape, np.arange(np.prod(shape)))
    wanted = np.array([2.2, 2.0, -1.5, 0.5])
    width = 0.3  # Å: tails far inside each atom's Voronoi cell
    magnetization = np.zeros(len(points))
    for position, moment in zip(atoms.positions, wanted, strict=True):
        for shift in np.array(np.meshgrid(*[[-1, 0, 1]] * 3)).reshape(3, -1).T @ atoms.cell.array:
            r2 = np.sum((points - position - shift) ** 2, axis=1)
            magnetization += moment * np.exp(-r2 / (2 * width**2)) / (2 * np.pi * width**2) ** 1.5
    magnetization = magnetization.reshape(shape)
    moments = atomic_moments(atoms, magnetization)
    assert moments == pytest.approx(wanted, abs=2e-3)
    assert moments.sum() == pytest.approx(electron_count(magnetization, atoms.get_volume()))


def test_atomic_moments_of_a_real_spin_polarised_vasp_file():
    atoms, magnetization = read_density(
        DATA / "sisl-files_NO_polarized_CHGCAR.gz", component="magnetization"
    )
    moments = atomic_moments(atoms, magnetization)
    assert moments.sum() == pytest.approx(1.0, abs=1e-5)  # NO: one unpaired electron
    nitrogen, oxygen = moments  # the pi* orbital of NO lies more on N
    assert nitrogen > oxygen > 0


def test_rescale_to_moment_scales_and_refuses_a_change_of_sign():
    magnetization = np.array([0.5, -0.1, 0.2, 0.0]).reshape(1, 2, 2)  # 0.15 e/Å^3 mean
    scaled = rescale_to_moment(magnetization, 10.0, 3.0)
    assert electron_count(scaled, 10.0) == pytest.approx(3.0)
    assert scaled == pytest.approx(magnetization * 2)
    for moment in (-3.0, 0.0, np.inf):
        with pytest.raises(InputError) as refused:
            rescale_to_moment(magnetization, 10.0, moment)
        assert refused.value.parameter == "moment"
    with pytest.raises(InputError, match="cannot rescale"):
        rescale_to_moment(np.zeros((2, 2, 2)), 10.0, 2.0)
