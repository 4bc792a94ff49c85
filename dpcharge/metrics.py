"""Errors of a predicted density against a DFT reference, and the integrals of a density.

All densities are in e/Å^3 on the same grid spanning the cell; electron counts
are the grid integrals in e (mean density times cell volume). A magnetisation
(rho_up - rho_down, e/Å^3) integrates to a magnetic moment in Bohr magnetons
(one unpaired electron carries 1 μB, with g = 2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from ase import Atoms
from scipy.stats import spearmanr

from dpcharge.errors import InputError
from dpcharge.grid import PeriodicImages, check_cell, grid_points

TABLE_HEADER = (
    f"{'':<24} {'points':>9} {'MAE e/Å^3':>10} {'RMSE e/Å^3':>10} {'NMAE %':>7} "
    f"{'R²':>8} {'max e/Å^3':>10} {'e predicted':>11} {'e DFT':>9}"
)
"""Header of the table of errors printed by ``dpcharge test`` (see `DensityErrors.row`)."""


@dataclass(frozen=True)
class DensityErrors:
    """Errors of a prediction over the grid points of one or more densities.

    Attributes
    ----------
    points
        Number of grid points compared.
    mae
        Mean absolute error, e/Å^3.
    rmse
        Root-mean-square error, e/Å^3.
    nmae
        Normalised mean absolute error, sum|error| / sum|reference|, in %.
    r2
        Coefficient of determination of the prediction against the reference.
    max_error
        Largest absolute error, e/Å^3.
    electrons_predicted
        Integral of the predicted density over the cell(s), e.
    electrons_reference
        Integral of the reference density over the cell(s), e.
    """

    points: int
    mae: float
    rmse: float
    nmae: float
    r2: float
    max_error: float
    electrons_predicted: float
    electrons_reference: float

    def as_dict(self) -> dict[str, float]:
        """Return the errors as a plain dictionary (for JSON)."""
        return asdict(self)

    def row(self, name: str) -> str:
        """Format the errors as one row of the table under `TABLE_HEADER`."""
        return (
            f"{name:<24.24} {self.points:>9} {self.mae:>10.3e} {self.rmse:>10.3e} "
            f"{self.nmae:>7.3f} {self.r2:>8.5f} {self.max_error:>10.3e} "
            f"{self.electrons_predicted:>11.3f} {self.electrons_reference:>9.3f}"
        )


def electron_count(density: np.ndarray, volume: float) -> float:
    """Return the number of electrons of a density on a grid spanning the cell.

    Parameters
    ----------
    density
        Density in e/Å^3, any grid shape.
    volume
        Cell volume in Å^3.

    Returns
    -------
    float
        Mean density times volume, in e.
    """
    return float(np.mean(density) * volume)


def rescale_to_electrons(density: np.ndarray, volume: float, electrons: float) -> np.ndarray:
    """Scale a density so that it integrates to a number of electrons over the cell.

    Parameters
    ----------
    density
        Density in e/Å^3 on a grid spanning the cell.
    volume
        Cell volume in Å^3.
    electrons
        Target number of (valence) electrons, e.

    Returns
    -------
    numpy.ndarray
        The rescaled density in e/Å^3.
    """
    if not 0 < electrons < np.inf:
        raise InputError(f"must be a positive number of electrons, got {electrons}", "electrons")
    integral = electron_count(density, volume)
    if not integral > 0:
        raise InputError(
            f"cannot rescale: the predicted density integrates to {integral:.6g} e", "electrons"
        )
    return density * (electrons / integral)


def rescale_to_moment(magnetization: np.ndarray, volume: float, moment: float) -> np.ndarray:
    """Scale a magnetisation so that it integrates to a total magnetic moment.

    Parameters
    ----------
    magnetization
        Magnetisation rho_up - rho_down in e/Å^3 on a grid spanning the cell.
    volume
        Cell volume in Å^3.
    moment
        Target total moment in μB per cell, of the sign of the predicted one.

    Returns
    -------
    numpy.ndarray
        The rescaled magnetisation in e/Å^3.
    """
    integral = electron_count(magnetization, volume)
    if not np.isfinite(moment) or moment == 0:
        raise InputError(f"must be a finite, non-zero moment in μB, got {moment}", "moment")
    if not abs(integral) > _SMALLEST_MOMENT or np.sign(integral) != np.sign(moment):
        raise InputError(
            f"cannot rescale a magnetisation of {integral:.4g} μB to {moment:g} μB: scaling "
            "keeps the sign and needs a predicted moment above "
            f"{_SMALLEST_MOMENT:g} μB",
            "moment",
        )
    return magnetization * (moment / integral)


_SMALLEST_MOMENT = 1e-3
"""Smallest predicted total moment (μB) that `rescale_to_moment` scales."""


def atomic_moments(atoms: Atoms, magnetization: np.ndarray) -> np.ndarray:
    """Return the magnetic moment of each atom: the magnetisation over its Voronoi cell.

    Each grid point is given to its nearest atom (periodic images included) and the
    magnetisation is summed per atom, so the moments add up to the total moment.

    Parameters
    ----------
    atoms
        The structure (Å) whose cell the grid spans.
    magnetization
        Magnetisation rho_up - rho_down in e/Å^3, shape (NX, NY, NZ).

    Returns
    -------
    numpy.ndarray
        Moment of each atom in μB, shape (len(atoms),).
    """
    cell = check_cell(atoms)
    shape = np.shape(magnetization)
    images = PeriodicImages(atoms, reach=0.5 * np.linalg.norm(cell, axis=1).sum())
    flat = np.ravel(magnetization)
    moments = np.zeros(len(atoms))
    for start in range(0, flat.size, _MOMENT_CHUNK):
        index = np.arange(start, min(start + _MOMENT_CHUNK, flat.size))
        _, nearest = images.tree.query(grid_points(cell, shape, index))
        moments += np.bincount(
            images.atom_index[nearest], weights=flat[index], minlength=len(atoms)
        )
    return moments * atoms.get_volume() / flat.size


_MOMENT_CHUNK = 1 << 18
"""Grid points given to their atoms at a time by `atomic_moments` (bounds its memory)."""


def density_errors(
    references: list[np.ndarray], predictions: list[np.ndarray], volumes: list[float]
) -> DensityErrors:
    """Compare predicted densities with references over all their grid points together.

    Parameters
    ----------
    references
        Reference (DFT) densities in e/Å^3, one array per structure.
    predictions
        Predicted densities in e/Å^3, each of the same shape as its reference.
    volumes
        Cell volume of each structure in Å^3 (for the electron counts).

    Returns
    -------
    DensityErrors
        Errors pooled over every grid point; electron counts summed over structures.
    """
    for reference, prediction in zip(references, predictions, strict=True):
        if np.shape(reference) != np.shape(prediction):
            raise InputError(
                f"grids differ: reference {np.shape(reference)}, prediction {np.shape(prediction)}"
            )
    reference = np.concatenate([np.ravel(r) for r in references])
    prediction = np.concatenate([np.ravel(p) for p in predictions])
    error = prediction - reference
    absolute = np.abs(error)
    spread = np.sum((reference - reference.mean()) ** 2)
    return DensityErrors(
        points=int(reference.size),
        mae=float(absolute.mean()),
        rmse=float(np.sqrt(np.mean(error**2))),
        nmae=float(100 * absolute.sum() / np.abs(reference).sum()),
        r2=float(1 - np.sum(error**2) / spread) if spread > 0 else float("nan"),
        max_error=float(absolute.max()),
        electrons_predicted=sum(map(electron_count, predictions, volumes)),
        electrons_reference=sum(map(electron_count, references, volumes)),
    )


@dataclass(frozen=True)
class DeviationRanking:
    """How well an ensemble's standard deviation ranks the error of its mean.

    Attributes
    ----------
    spearman
        Spearman rank correlation of deviation and absolute error over the grid.
    mean_deviation
        Mean standard deviation across the models, e/Å^3.
    bin_deviation
        Mean deviation in each bin of equally many grid points, sorted by
        deviation, e/Å^3.
    bin_error
        Mean absolute error of the same bins, e/Å^3: equal to ``bin_deviation``
        for a calibrated ensemble.
    """

    spearman: float
    mean_deviation: float
    bin_deviation: list[float]
    bin_error: list[float]

    def as_dict(self) -> dict[str, object]:
        """Return the ranking as a plain dictionary (for JSON)."""
        return asdict(self)


def rank_errors(
    deviations: list[np.ndarray], errors: list[np.ndarray], bins: int = 20
) -> DeviationRanking:
    """Compare an ensemble's deviation with the error of its mean over all grid points.

    Parameters
    ----------
    deviations
        Standard deviation across the models at each grid point, e/Å^3, one
        array per structure.
    errors
        Prediction minus reference at the same points, e/Å^3.
    bins
        Number of bins of equally many points for the calibration curve.

    Returns
    -------
    DeviationRanking
        Spearman correlation, mean deviation and the binned calibration curve.
    """
    deviation = np.concatenate([np.ravel(d) for d in deviations])
    absolute = np.abs(np.concatenate([np.ravel(e) for e in errors]))
    order = np.argsort(deviation, kind="stable")
    groups = np.array_split(order, min(bins, deviation.size))
    return DeviationRanking(
        spearman=float(spearmanr(deviation, absolute).statistic),
        mean_deviation=float(deviation.mean()),
        bin_deviation=[float(deviation[g].mean()) for g in groups],
        bin_error=[float(absolute[g].mean()) for g in groups],
    )
