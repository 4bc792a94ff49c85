"""Paper-style figures of a predicted density against DFT, written as PNG files.

A parity plot with R², a histogram of absolute errors with the fraction of grid
points under given thresholds, a slice through the cell (DFT, prediction,
absolute error side by side) and the density along the cell's body diagonal.
Densities are in e/Å^3, distances in Å. Figures are drawn with matplotlib's
object interface and its Agg renderer, without pyplot (no display, no global
state), and each file is written through a temporary file and a rename.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from scipy.ndimage import map_coordinates

from dpcharge.conventions import THRESHOLDS
from dpcharge.metrics import DeviationRanking, density_errors
from dpcharge.output import write_atomically

PARITY_POINTS = 200_000
"""Most grid points drawn in a parity plot (a fixed random subset of larger grids)."""

FIGURES = ("parity", "errors", "slice", "line")
"""The figures written per structure, as ``<folder>/<name>_<figure>.png``."""

CALIBRATION = "calibration"
"""The figure added for an ensemble: mean absolute error against the models' deviation."""

_DPI = 150


def write_figures(
    folder: str | os.PathLike,
    name: str,
    atoms: Atoms,
    reference: np.ndarray,
    prediction: np.ndarray,
    thresholds: Sequence[float] = THRESHOLDS,
    ranking: DeviationRanking | None = None,
) -> list[Path]:
    """Write the figures of one structure as ``folder/<name>_<figure>.png``.

    Parameters
    ----------
    folder
        Output folder, created if missing.
    name
        Prefix of the file names (the structure's name).
    atoms
        The structure (cell and positions in Å).
    reference, prediction
        DFT and predicted densities in e/Å^3 on the same (NX, NY, NZ) grid.
    thresholds
        Absolute errors in e/Å^3 whose fractions the histogram reports.
    ranking
        For an ensemble: how its deviation ranks the error; adds the
        ``calibration`` figure.

    Returns
    -------
    list of pathlib.Path
        The files written: parity, errors, slice, line (and calibration).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures = (
        parity_figure(reference, prediction),
        error_histogram(reference, prediction, thresholds),
        slice_figure(atoms, reference, prediction),
        line_figure(atoms, reference, prediction),
    )
    kinds = FIGURES
    if ranking is not None:
        figures, kinds = (*figures, calibration_figure(ranking)), (*FIGURES, CALIBRATION)
    paths = []
    for kind, figure in zip(kinds, figures, strict=True):
        path = folder / f"{name}_{kind}.png"
        write_atomically(
            path, lambda stream, f=figure: f.savefig(stream, format="png"), binary=True
        )
        paths.append(path)
    return paths


def parity_figure(reference: np.ndarray, prediction: np.ndarray) -> Figure:
    """Predicted against DFT density at every grid point (a random subset if many), with R²."""
    reference, prediction = np.ravel(reference), np.ravel(prediction)
    errors = density_errors([reference], [prediction], [1.0])
    shown = np.arange(reference.size)
    if reference.size > PARITY_POINTS:
        shown = np.random.default_rng(0).choice(reference.size, PARITY_POINTS, replace=False)
    figure = Figure(figsize=(4.5, 4.5), dpi=_DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.scatter(reference[shown], prediction[shown], s=1, alpha=0.3, lw=0, rasterized=True)
    low = min(reference.min(), prediction.min())
    high = max(reference.max(), prediction.max())
    axes.plot([low, high], [low, high], color="black", lw=0.8)
    axes.set_xlabel("DFT density (e/Å$^3$)")
    axes.set_ylabel("predicted density (e/Å$^3$)")
    axes.set_aspect("equal")
    axes.text(
        0.05,
        0.95,
        f"R$^2$ = {errors.r2:.5f}\nMAE = {errors.mae:.2e} e/Å$^3$\n"
        f"{shown.size:,} of {reference.size:,} points",
        transform=axes.transAxes,
        va="top",
    )
    return figure


def error_histogram(
    reference: np.ndarray, prediction: np.ndarray, thresholds: Sequence[float]
) -> Figure:
    """Histogram of absolute errors (log scale) with the fraction of points under each threshold."""
    absolute = np.abs(np.ravel(prediction) - np.ravel(reference))
    smallest = max(absolute[absolute > 0].min(initial=absolute.max()), 1e-8)
    bins = np.geomspace(smallest, max(absolute.max(), smallest * 10), 60)
    figure = Figure(figsize=(5, 3.5), dpi=_DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.hist(np.clip(absolute, smallest, None), bins=bins, color="tab:blue")
    axes.set_xscale("log")
    axes.set_xlabel("absolute error (e/Å$^3$)")
    axes.set_ylabel("grid points")
    lines = []
    for threshold in sorted(thresholds):
        axes.axvline(threshold, color="tab:red", ls="--", lw=0.8)
        lines.append(f"< {threshold:g} e/Å$^3$: {100 * np.mean(absolute < threshold):.1f} %")
    axes.text(0.02, 0.95, "\n".join(lines), transform=axes.transAxes, va="top", fontsize=8)
    return figure


def slice_figure(atoms: Atoms, reference: np.ndarray, prediction: np.ndarray) -> Figure:
    """DFT, predicted and absolute-error density on the grid plane (a, b) holding most atoms."""
    shape = reference.shape
    cell = atoms.get_cell().array
    fractional = atoms.get_scaled_positions(wrap=True)
    planes = np.rint(fractional[:, 2] * shape[2]).astype(int) % shape[2]
    plane = int(np.bincount(planes, minlength=shape[2]).argmax())
    i, j = np.meshgrid(
        np.arange(shape[0]) / shape[0], np.arange(shape[1]) / shape[1], indexing="ij"
    )
    points = i[..., None] * cell[0] + j[..., None] * cell[1]
    across = cell[0] / np.linalg.norm(cell[0])
    up = cell[1] - (cell[1] @ across) * across
    up /= np.linalg.norm(up)
    x, y = points @ across, points @ up
    panels = {
        "DFT": reference[:, :, plane],
        "prediction": prediction[:, :, plane],
        "|prediction − DFT|": np.abs(prediction - reference)[:, :, plane],
    }
    top = max(panels["DFT"].max(), panels["prediction"].max())
    figure = Figure(figsize=(12, 4), dpi=_DPI, layout="constrained")
    for index, (title, values) in enumerate(panels.items()):
        axes = figure.add_subplot(1, 3, index + 1)
        limits = {"vmin": 0, "vmax": top} if index < 2 else {"cmap": "magma"}
        mesh = axes.pcolormesh(x, y, values, shading="gouraud", rasterized=True, **limits)
        figure.colorbar(mesh, ax=axes, label="e/Å$^3$", shrink=0.8)
        axes.set_title(title)
        axes.set_aspect("equal")
        axes.set_xlabel("Å")
    figure.suptitle(f"plane {plane}/{shape[2]} along c (fractional {plane / shape[2]:.3f})")
    return figure


def line_figure(atoms: Atoms, reference: np.ndarray, prediction: np.ndarray) -> Figure:
    """DFT and predicted density along the body diagonal from (0, 0, 0) to (1, 1, 1)."""
    samples = 4 * max(reference.shape) + 1  # odd: the midpoint is a sample
    fraction = np.linspace(0, 1, samples)
    index = fraction[None, :] * np.array(reference.shape)[:, None]
    length = np.linalg.norm(atoms.get_cell().array.sum(axis=0))
    figure = Figure(figsize=(6, 3.5), dpi=_DPI, layout="constrained")
    axes = figure.add_subplot()
    for label, values, style in (("DFT", reference, "-"), ("prediction", prediction, "--")):
        line = map_coordinates(values, index, order=1, mode="grid-wrap")
        axes.plot(fraction * length, line, style, label=label)
    axes.set_xlabel("distance along the cell diagonal a+b+c (Å)")
    axes.set_ylabel("density (e/Å$^3$)")
    axes.legend()
    return figure


def calibration_figure(ranking: DeviationRanking) -> Figure:
    """Mean absolute error against the ensemble's deviation, in bins of equally many points."""
    figure = Figure(figsize=(4.5, 4.5), dpi=_DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.loglog(ranking.bin_deviation, ranking.bin_error, "o-", ms=3, label="ensemble")
    low = min(min(ranking.bin_deviation), min(ranking.bin_error))
    high = max(max(ranking.bin_deviation), max(ranking.bin_error))
    # the same whole decades on both axes: the diagonal is the diagonal, and every axis has
    # labelled powers of ten (matplotlib labels minor ticks on spans under a decade, which
    # then overlap)
    limits = 10.0 ** np.floor(np.log10(low)), 10.0 ** np.ceil(np.log10(high))
    axes.plot(limits, limits, color="black", lw=0.8, label="error = deviation")
    axes.set(xlim=limits, ylim=limits, aspect="equal")
    for axis in (axes.xaxis, axes.yaxis):
        axis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("standard deviation of the models (e/Å$^3$)")
    axes.set_ylabel("mean absolute error of their mean (e/Å$^3$)")
    axes.legend(loc="lower right", fontsize=8)
    axes.text(
        0.05,
        0.95,
        f"Spearman ρ = {ranking.spearman:.3f}\n{len(ranking.bin_error)} bins of equal size",
        transform=axes.transAxes,
        va="top",
    )
    return figure
