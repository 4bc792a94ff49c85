"""Paper-style figures, drawn from real densities and a perturbed prediction."""

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from dpcharge.chgcar import read_density
from dpcharge.metrics import density_errors
from dpcharge.plots import (
    error_histogram,
    line_figure,
    parity_figure,
    slice_figure,
    write_figures,
)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def si8():
    atoms, density = read_density(DATA / "CHGCAR_Si8_qe.gz")
    noise = np.random.default_rng(0).normal(0, 0.01, density.shape)
    return atoms, density, density + noise


def test_four_png_figures_and_no_temporary_files(si8, tmp_path):
    paths = write_figures(tmp_path / "figs", "Si8", *si8)
    names = ["Si8_parity.png", "Si8_errors.png", "Si8_slice.png", "Si8_line.png"]
    assert [p.name for p in paths] == names
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(names)
    for path in paths:
        image = imread(path)
        assert image.ndim == 3 and min(image.shape[:2]) > 300
        assert image[..., :3].std() > 0.05  # something is drawn


def test_parity_plot_states_r2_and_mae(si8):
    atoms, reference, prediction = si8
    errors = density_errors([reference], [prediction], [atoms.get_volume()])
    text = parity_figure(reference, prediction).axes[0].texts[0].get_text()
    assert f"R$^2$ = {errors.r2:.5f}" in text
    assert f"MAE = {errors.mae:.2e}" in text
    assert f"{36**3:,} of {36**3:,} points" in text


def test_histogram_reports_the_fraction_under_each_threshold(si8):
    _, reference, prediction = si8
    absolute = np.abs(prediction - reference)
    text = error_histogram(reference, prediction, (0.01, 0.001)).axes[0].texts[0].get_text()
    lines = text.splitlines()
    assert lines[0].endswith(f"{100 * np.mean(absolute < 0.001):.1f} %")
    assert lines[1].endswith(f"{100 * np.mean(absolute < 0.01):.1f} %")
    assert 60 < float(lines[1].split()[-2]) < 80  # |N(0, 0.01)| < 0.01 for 68 % of points


def test_slice_goes_through_the_plane_with_most_atoms():
    atoms, density = read_density(DATA / "pawpyseed_Ga4_CHGCAR.gz")  # non-orthogonal cell
    fractional = atoms.get_scaled_positions()[:, 2] * density.shape[2]
    planes = np.rint(fractional).astype(int) % density.shape[2]
    expected = np.bincount(planes).argmax()
    figure = slice_figure(atoms, density, density * 1.01)
    assert figure.get_suptitle().startswith(f"plane {expected}/{density.shape[2]} ")
    assert len(figure.axes) == 6  # three panels, three colour bars


def test_line_runs_along_the_body_diagonal(si8):
    atoms, reference, prediction = si8
    axes = line_figure(atoms, reference, prediction).axes[0]
    dft, predicted = (line.get_ydata() for line in axes.lines)
    assert dft[0] == pytest.approx(reference[0, 0, 0])
    assert dft[-1] == pytest.approx(reference[0, 0, 0])  # (1, 1, 1) is (0, 0, 0) again
    assert predicted[0] == pytest.approx(prediction[0, 0, 0])
    middle = len(dft) // 2  # halfway along the diagonal: grid point (18, 18, 18) of 36
    assert axes.lines[0].get_xdata()[-1] == pytest.approx(5.43 * np.sqrt(3))
    assert dft[middle] == pytest.approx(reference[18, 18, 18], rel=1e-12)
