"""The DeePMD-kit (TensorFlow) plugin: the ``density`` fitting, loss and model types.

DeePMD-kit imports this module through the ``deepmd`` entry point when
``deepmd.tf`` is imported, so plain ``dp train input.json`` accepts::

    "model": {
        "type": "density",
        "type_map": ["Si", "X"],
        "descriptor": {"type": "se_e2_a", "sel": [72, 0], ...},
        "fitting_net": {"type": "density", "neuron": [200, 200, 200]}
    },
    "loss": {"type": "density"}

The last entry of ``type_map`` is the grid-point (virtual) type. Its atoms are
the points where the density is known; their per-atom output is the density in
e/Å^3. Real atoms only shape the descriptor: their per-atom output is exactly 0,
they have no fitting network, and the loss never sees them.

- `DensityFitting` (``fitting_net.type = "density"``) derives from DeePMD-kit's
  energy fitting, so the frozen graph is a standard energy-model graph whose
  ``o_atom_energy`` is the density; plain DeePMD-kit loads it without dpcharge.
- `DensityLoss` (``loss.type = "density"``): mean squared error over grid points
  only; ``lcurve.out`` shows ``rmse_rho`` and ``mae_rho`` in e/Å^3.
- `DensityModel` (``model.type = "density"``): the energy model whose output
  statistics come from the ``atom_ener`` labels of grid points (mean and spread
  of the density) instead of from ``energy`` labels, which density data lack.
- `Baseline` (``fitting_net.baseline``, optional): an atomic-density baseline
  inside the graph, a sum over the descriptor's real neighbours of per-element
  radial functions on a Gaussian basis and, with ``lmax``, a linear function of
  the power spectrum of their angular distribution (SOAP), fitted by least squares
  to the training densities (`baseline_features` in numpy for the fit,
  `graph_baseline` in the graph, which contracts the spectrum with the fitted
  coefficients without forming it; one expression `neighbour_density` for both); the
  network learns the density minus it, and with ``network_input`` also takes the
  features (`graph_features`) after the descriptor.

The input schemas of the three types are in `dpcharge.schema`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import product
from math import factorial
from typing import Any

import numpy as np
from deepmd.tf.env import GLOBAL_TF_FLOAT_PRECISION, tf
from deepmd.tf.fit.ener import EnerFitting
from deepmd.tf.fit.fitting import Fitting
from deepmd.tf.loss.loss import Loss
from deepmd.tf.model.ener import EnerModel
from deepmd.tf.model.model import Model
from deepmd.tf.utils.graph import get_tensor_by_name_from_graph
from deepmd.tf.utils.sess import run_sess
from deepmd.utils.data import DataRequirementItem
from scipy.spatial import cKDTree

from dpcharge.conventions import DENSITY, LABEL, POINTS_PER_FEATURE, WEIGHT
from dpcharge.errors import InputError

log = logging.getLogger("deepmd.dpcharge")


def grid_sees_grid(descrpt: Any, grid_type: int) -> bool:
    """Tell whether a descriptor lets grid points be neighbours of grid points.

    Parameters
    ----------
    descrpt
        A DeePMD-kit TensorFlow descriptor (``hybrid`` descriptors are checked
        part by part).
    grid_type
        Index of the grid-point type.

    Returns
    -------
    bool
        False when the grid type's ``sel`` is 0 or the pair (grid, grid) is in
        ``exclude_types``; True otherwise, also for descriptors with one ``sel``
        for all types (se_atten and the like) that do not exclude the pair.
    """
    parts = getattr(descrpt, "descrpt_list", None)
    if parts is not None:
        return any(grid_sees_grid(part, grid_type) for part in parts)
    if (grid_type, grid_type) in getattr(descrpt, "exclude_types", ()):
        return False
    ntypes = descrpt.get_ntypes()
    counts = [
        list(getattr(descrpt, name, None) or [])
        for name in ("sel_a", "sel_r")
        if len(getattr(descrpt, name, None) or []) == ntypes
    ]
    if not counts:
        return True
    return sum(count[grid_type] for count in counts) > 0


def grid_mask(natoms: tf.Tensor, ntypes: int) -> tf.Tensor:
    """Return 1 for grid points and 0 for real atoms among the local atoms.

    Inside DeePMD-kit's graph the local atoms are sorted by type, so the grid
    points (last type) are the last ``natoms[1 + ntypes]`` of the ``natoms[0]``
    local atoms. The mask follows ``natoms``, not a fixed size, so it also holds
    when the local atoms are only grid points and the real atoms are ghosts.

    Parameters
    ----------
    natoms
        DeePMD-kit's ``[nloc, nall, n_type0, n_type1, ...]`` (local counts).
    ntypes
        Number of types, the grid type included.

    Returns
    -------
    tf.Tensor
        Shape ``[nloc]``, in the graph's float precision.
    """
    nreal = natoms[0] - natoms[1 + ntypes]
    return tf.cast(tf.range(natoms[0]) >= nreal, GLOBAL_TF_FLOAT_PRECISION)


MAX_LMAX = 12
"""Highest angular order the baseline accepts (the harmonics are tested to l = 10)."""


def real_harmonics(x: Any, y: Any, z: Any, lmax: int, stack: Any, axis: int = -1) -> Any:
    """Return the real orthonormal spherical harmonics ``Y_lm`` of unit vectors, l <= ``lmax``.

    Each ``Y_lm`` is written as the homogeneous polynomial of degree ``l`` in ``x, y, z``
    that equals it on the unit sphere (``(x + iy)^m`` times a Legendre polynomial in ``z``
    and ``x^2 + y^2 + z^2``, by the standard recurrences), so the same code runs on numpy
    arrays and TensorFlow tensors, and the zero vector gives 0 for every ``l >= 1``.

    Parameters
    ----------
    x, y, z
        Components of the unit vectors (numpy arrays or tensors of one shape).
    lmax
        Highest degree.
    stack
        ``np.stack`` or ``tf.stack``.
    axis
        Axis of the result along which the harmonics run.

    Returns
    -------
    array or tensor
        The harmonics, (lmax + 1)^2 of them along ``axis`` (last by default), ordered by
        ``l``, then ``m = 0, 1, -1, 2, -2, ...``; orthonormal over the unit sphere.
    """
    r2 = x * x + y * y + z * z
    one = r2 * 0.0 + 1.0
    cos_m, sin_m = [one], [one * 0.0]  # real and imaginary parts of (x + iy)^m
    for _ in range(lmax):
        cos_m, sin_m = (
            [*cos_m, x * cos_m[-1] - y * sin_m[-1]],
            [*sin_m, x * sin_m[-1] + y * cos_m[-1]],
        )
    legendre = {}  # legendre[l, m]: P_l^m(z) / sin^m(theta), homogeneous of degree l - m
    for m in range(lmax + 1):
        legendre[m, m] = float(np.prod(np.arange(1, 2 * m, 2))) * one
        if m < lmax:
            legendre[m + 1, m] = (2 * m + 1) * z * legendre[m, m]
        for degree in range(m + 2, lmax + 1):
            legendre[degree, m] = (
                (2 * degree - 1) * z * legendre[degree - 1, m]
                - (degree + m - 1) * r2 * legendre[degree - 2, m]
            ) / (degree - m)
    harmonics = []
    for degree in range(lmax + 1):
        harmonics.append(float(np.sqrt((2 * degree + 1) / (4 * np.pi))) * legendre[degree, 0])
        for m in range(1, degree + 1):
            ratio = factorial(degree - m) / factorial(degree + m)
            norm = float(np.sqrt((2 * degree + 1) / (2 * np.pi) * ratio))
            harmonics += [norm * legendre[degree, m] * cos_m[m]]
            harmonics += [norm * legendre[degree, m] * sin_m[m]]
    return stack(harmonics, axis)


@dataclass(frozen=True)
class Baseline:
    """The atomic-density baseline: a linear model of the neighbour density around a grid point.

    Each real element ``t`` has the radial basis
    ``phi_k(r) = exp(-r^2 / (2 s_k^2)) (1 - r^2 / rcut^2)^2`` for ``r < rcut`` (0 beyond),
    with widths ``s_k`` on a geometric ladder from ``width_min`` to ``width_max``; it is
    finite at the nucleus and goes to 0 with its derivative at ``rcut``. Over the real atoms
    ``j`` the descriptor lists as neighbours of a grid point, the features are

    - the radial sums ``sum_j phi_k(r_j)`` of each element (a superposition of spherical
      atomic densities), and, when ``lmax`` is set,
    - the power spectrum ``p^l_AB = sum_m c_A,lm c_B,lm`` for ``l = 0 .. lmax`` and every
      pair ``A <= B`` of (element, k), with ``c_(t,k),lm = sum_(j of element t) phi_k(r_j)
      Y_lm(r_j / |r_j|)`` (SOAP's rotation-invariant neighbour density, truncated at ``l``).

    The baseline is a linear combination of the features (and a constant), fitted by least
    squares to the training densities; the network learns the density minus it.

    Attributes
    ----------
    basis
        Radial functions per real element.
    rcut
        Cutoff radius of the radial functions, Å (at most the descriptor's).
    width_min, width_max
        Narrowest and widest Gaussian, Å.
    lmax
        Highest angular order of the power spectrum; None: radial sums only.
    trainable
        Train the coefficients with the network, or keep the least-squares fit.
    sel
        Neighbours of each real element the baseline keeps, the nearest first (the
        descriptor lists them by type and distance); None keeps the descriptor's ``sel``.
        Fewer, covering only its own ``rcut``, make the baseline cheaper; a training
        point with more within ``rcut`` is refused when the baseline is fitted.
    ridge
        Ridge (Tikhonov) penalty of the least-squares fit, relative to the mean square of
        each feature (see `fit_baseline`); 0: plain least squares.
    network_input
        Also give the features, standardised by their mean and standard deviation over the
        statistics points, to the fitting network beside the descriptor, so the network
        sees the neighbour density's shape that the linear fit sees.
    """

    basis: int = 8
    rcut: float = 4.0
    width_min: float = 0.2
    width_max: float = 2.5
    lmax: int | None = None
    trainable: bool = False
    sel: list[int] | None = None
    ridge: float = 0.0
    network_input: bool = False

    def __post_init__(self) -> None:
        if self.basis < 1:
            raise InputError(f"basis must be at least 1, got {self.basis}", "baseline")
        if not 0 < self.width_min <= self.width_max:
            raise InputError(
                f"widths must satisfy 0 < width_min <= width_max, got {self.width_min} "
                f"and {self.width_max} Å",
                "baseline",
            )
        if self.rcut <= 0:
            raise InputError(f"rcut must be positive, got {self.rcut} Å", "baseline")
        if self.lmax is not None and not 0 <= self.lmax <= MAX_LMAX:
            raise InputError(
                f"lmax must be from 0 to {MAX_LMAX} (or absent), got {self.lmax}", "baseline"
            )
        if self.sel is not None and any(count < 0 for count in self.sel):
            raise InputError(f"sel must count neighbours, 0 or more, got {self.sel}", "baseline")
        if not self.ridge >= 0:
            raise InputError(f"ridge must be 0 or more, got {self.ridge}", "baseline")

    @property
    def widths(self) -> np.ndarray:
        """Widths ``s_k`` of the Gaussians, Å, shape (basis,)."""
        return np.geomspace(self.width_min, self.width_max, self.basis)

    def radial(self, squared_distances: np.ndarray) -> np.ndarray:
        """Return the basis ``phi_k`` at squared distances (Å^2); shape (..., basis)."""
        r2 = np.minimum(squared_distances, self.rcut**2)[..., None]
        cutoff = (1.0 - r2 / self.rcut**2) ** 2
        return np.exp(-r2 / (2.0 * self.widths**2)) * cutoff

    def neighbours(self, sel: list[int]) -> list[int]:
        """Return the neighbours per type the baseline keeps, the grid type (last) 0.

        Parameters
        ----------
        sel
            The descriptor's neighbours per type, the grid type last.
        """
        kept = list(sel[:-1]) if self.sel is None else list(self.sel)
        if len(kept) != len(sel) - 1 or any(k > s for k, s in zip(kept, sel, strict=False)):
            raise InputError(
                f"sel {self.sel} must hold one count per real element, each at most the "
                f"descriptor's sel {list(sel[:-1])}",
                "baseline",
            )
        return [*kept, 0]

    def pairs(self, elements: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the channel pairs ``A <= B`` of the power spectrum (channel = (t, k))."""
        return np.triu_indices(elements * self.basis)

    def n_features(self, elements: int) -> int:
        """Return the number of features with ``elements`` real elements."""
        angular = 0 if self.lmax is None else (self.lmax + 1) * len(self.pairs(elements)[0])
        return elements * self.basis + angular


def baseline_neighbours(descrpt: Any, ntypes: int, rcut: float) -> list[int]:
    """Return how many neighbours of each real element the descriptor lists (its ``sel``).

    Parameters
    ----------
    descrpt
        The model's descriptor: its neighbour list must be grouped by type (se_e2_a).
    ntypes
        Number of types, the grid type included.
    rcut
        Cutoff of the baseline, Å: the descriptor's must reach it.

    Returns
    -------
    list of int
        The descriptor's ``sel``: neighbours per type, the grid type last.
    """
    sel = list(getattr(descrpt, "sel_a", None) or [])
    if len(sel) != ntypes or any(getattr(descrpt, "sel_r", None) or []):
        raise InputError(
            "needs a descriptor whose neighbour list is grouped by type, "
            f"se_e2_a, not {type(descrpt).__name__}",
            "baseline",
        )
    if rcut > descrpt.get_rcut():
        raise InputError(
            f"rcut {rcut} Å exceeds the descriptor's rcut {descrpt.get_rcut()} Å",
            "baseline",
        )
    return sel


def element_images(
    coord: np.ndarray,
    box: np.ndarray,
    types: np.ndarray,
    grid: int,
    elements: list[int],
    rcut: float,
) -> tuple[np.ndarray, dict[int, tuple[cKDTree, np.ndarray]]]:
    """Return the grid points of one periodic frame and the atoms around them, per element.

    Parameters
    ----------
    coord
        Positions of all atoms, grid points included, Å, shape (natoms, 3).
    box
        Cell vectors as rows, Å, shape (3, 3) or (9,).
    types
        Type of each atom.
    grid
        The grid type.
    elements
        The real types to return.
    rcut
        Reach, Å: every atom within it of a grid point is among the images.

    Returns
    -------
    points
        The grid points wrapped into the cell, Å, shape (ngrid, 3).
    trees
        For each of ``elements`` present in the frame: a k-d tree of its atoms and their
        periodic images, and those positions (Å).
    """
    cell = np.reshape(box, (3, 3))
    wrapped = (np.reshape(coord, (-1, 3)) @ np.linalg.inv(cell)) % 1.0 @ cell
    plane_spacing = abs(np.linalg.det(cell)) / np.linalg.norm(
        np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1
    )
    reach = np.ceil(rcut / plane_spacing).astype(int)
    shifts = np.array(list(product(*(range(-n, n + 1) for n in reach)))) @ cell
    trees = {}
    for element in elements:
        atoms = wrapped[types == element]
        if len(atoms) > 0:
            images = (atoms[None, :, :] + shifts[:, None, :]).reshape(-1, 3)
            trees[element] = (cKDTree(images), images)
    return wrapped[types == grid], trees


def check_descriptor_sel(
    coord: np.ndarray, box: np.ndarray, types: np.ndarray, descrpt: Any, ntypes: int
) -> None:
    """Refuse a training frame with a grid point that has more neighbours than ``sel`` lists.

    DeePMD-kit keeps the nearest ``sel`` atoms of each type within the descriptor's cutoff
    and drops the others without a word (``dp train --skip-neighbor-stat`` skips the
    statistics that would warn); ``dpcharge`` refuses such structures when it predicts.
    Types whose pair with the grid type the descriptor excludes are not counted; a
    descriptor whose neighbour list is not grouped by type is not checked.

    Parameters
    ----------
    coord, box, types
        One frame, as for `element_images`.
    descrpt
        The model's descriptor.
    ntypes
        Number of types, the grid type last.

    Raises
    ------
    InputError
        If a grid point has more atoms of a type within the cutoff than ``sel`` lists.
    """
    sel = list(getattr(descrpt, "sel_a", None) or [])
    if len(sel) != ntypes:
        return
    excluded = getattr(descrpt, "exclude_types", set())  # DeePMD-kit holds both orders
    grid = ntypes - 1
    counted = [t for t in range(grid) if (grid, t) not in excluded]
    rcut = descrpt.get_rcut()
    points, trees = element_images(coord, box, types, grid, counted, rcut)
    for element, (tree, _) in trees.items():
        most = int(tree.query_ball_point(points, rcut, return_length=True).max(initial=0))
        if most > sel[element]:
            raise InputError(
                f"a training grid point has {most} atoms of type {element} within the "
                f"descriptor's rcut {rcut} Å, more than its sel {sel[element]}: DeePMD-kit "
                "would keep the nearest and drop the others without a word. Raise sel "
                "(dp neighbor-stat gives the data's maximum)",
                "descriptor",
            )


def baseline_features(
    coord: np.ndarray,
    box: np.ndarray,
    types: np.ndarray,
    sel: list[int],
    baseline: Baseline,
    chunk: int = 2048,
) -> np.ndarray:
    """Return the baseline's features at the grid points of one periodic frame.

    Each grid point keeps its atoms of element ``t`` within the baseline's ``rcut``; the
    graph keeps the nearest ``baseline.neighbours(sel)[t]``, so a point with more is refused.

    Parameters
    ----------
    coord
        Positions of all atoms, grid points included, Å, shape (natoms, 3).
    box
        Cell vectors as rows, Å, shape (3, 3) or (9,).
    types
        Type of each atom; the grid type is ``len(sel) - 1``.
    sel
        The descriptor's neighbours per type, the grid type last.
    baseline
        The basis.
    chunk
        Grid points handled at once (bounds the memory).

    Returns
    -------
    np.ndarray
        Shape (ngrid, ``baseline.n_features(len(sel) - 1)``): the radial sums
        ``sum_j phi_k(r_j)`` ordered (t, k), then the power spectrum ``p^l_AB``
        ordered (l, pair) when ``baseline.lmax`` is set (see `Baseline`).

    Raises
    ------
    InputError
        If a grid point has more atoms of an element within ``rcut`` than the baseline keeps.
    """
    kept = baseline.neighbours(sel)
    elements = [element for element, count in enumerate(kept[:-1]) if count > 0]
    points, trees = element_images(coord, box, types, len(sel) - 1, elements, baseline.rcut)
    features = np.zeros((len(points), baseline.n_features(len(sel) - 1)))
    for start in range(0, len(points), chunk):
        centres = points[start : start + chunk]
        radial, angular = [], []
        for element, count in enumerate(kept[:-1]):
            if element not in trees:
                radial.append(np.zeros((len(centres), count, baseline.basis)))
                angular.append(np.zeros((len(centres), count, 3)))
                continue
            tree, images = trees[element]
            distances, index = tree.query(centres, k=count + 1, distance_upper_bound=baseline.rcut)
            if np.isfinite(distances[:, count]).any():
                raise InputError(
                    f"a grid point has more than {count} atoms of type {element} within "
                    f"rcut {baseline.rcut} Å, and the baseline keeps only the nearest {count}: "
                    "raise its sel (and the descriptor's if needed)",
                    "baseline",
                )
            distances, index = distances[:, :count], index[:, :count]
            listed = np.isfinite(distances)
            vectors = images[np.where(listed, index, 0)] - centres[:, None, :]
            radial.append(baseline.radial(distances**2))
            angular.append(np.where(listed[..., None], vectors, 0.0))
        features[start : start + chunk] = neighbour_features(
            np.concatenate(radial, axis=1), np.concatenate(angular, axis=1), kept, baseline
        )
    return features


def neighbour_density(
    phi: Any, rij: Any, sel: list[int], baseline: Baseline, xp: Any
) -> tuple[Any, Any]:
    """Return the radial sums and the angular expansion of the neighbour density.

    One formula for numpy (`baseline_features`) and the graph (`graph_baseline`).

    Parameters
    ----------
    phi
        Radial basis of each neighbour, 0 for padding, shape [npoints, sum(sel), basis].
    rij
        Neighbour minus grid-point positions, Å, shape [npoints, sum(sel), 3].
    sel
        Neighbours per type in the list, grouped by type, the grid type last.
    baseline
        The basis.
    xp
        ``numpy`` or ``tf``.

    Returns
    -------
    radial
        ``sum_j phi_k(r_j)`` per element, shape [npoints, elements * basis], ordered (t, k).
    density
        ``c_(t,k),lm``, shape [npoints, (lmax + 1)^2, elements * basis]; None without lmax.
    """
    concat = getattr(xp, "concat", None) or xp.concatenate
    starts = np.cumsum([0, *sel])
    blocks = [slice(starts[t], starts[t + 1]) for t in range(len(sel) - 1)]
    if baseline.lmax is None:
        return concat([xp.einsum("nja->na", phi[:, block]) for block in blocks], 1), None
    r2 = xp.einsum("njx,njx->nj", rij, rij)
    inverse = 1.0 / xp.sqrt(xp.where(r2 > 0, r2, r2 * 0.0 + 1.0))
    # [npoints, (lmax + 1)^2, neighbours]: stacked inside each point, the layout the product
    # below takes as it is (a third cheaper in the graph than harmonics last and an einsum)
    harmonics = real_harmonics(
        *(rij[..., axis] * inverse for axis in range(3)), baseline.lmax, xp.stack, axis=1
    )
    density = concat([xp.matmul(harmonics[:, :, block], phi[:, block]) for block in blocks], 2)
    # Y_00 = 1 / sqrt(4 pi) for every neighbour, padding included: c_00 is the radial sum
    return density[:, 0] * np.sqrt(4.0 * np.pi), density


def neighbour_features(phi: Any, rij: Any, sel: list[int], baseline: Baseline) -> np.ndarray:
    """Return the baseline's features from the radial basis and vectors of listed neighbours.

    Parameters
    ----------
    phi, rij, sel, baseline
        As for `neighbour_density` (numpy arrays).

    Returns
    -------
    np.ndarray
        Shape [npoints, ``baseline.n_features(len(sel) - 1)``]: the radial sums, then the
        power spectrum ``p^l_AB`` ordered (l, pair).
    """
    radial, density = neighbour_density(phi, rij, sel, baseline, np)
    if density is None:
        return radial
    first, second = baseline.pairs(len(sel) - 1)
    spectrum = [
        np.einsum("nya,nyb->nab", part, part)[:, first, second]
        for part in (density[:, d**2 : (d + 1) ** 2] for d in range(baseline.lmax + 1))
    ]
    return np.concatenate([radial, *spectrum], 1)


def graph_neighbour_density(
    nlist: tf.Tensor,
    rij: tf.Tensor,
    sel: list[int],
    baseline: Baseline,
    nloc: tf.Tensor,
    points: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Return the neighbour density of the grid points from the descriptor's neighbour list.

    The graph twin of `neighbour_density` as `baseline_features` calls it. Only the last
    ``points`` local atoms of each frame (the grid points: DeePMD-kit sorts local atoms by
    type, the grid type last) and the first ``baseline.neighbours(sel)[t]`` neighbours of
    each type (the nearest) are used.

    Parameters
    ----------
    nlist
        Neighbour indices, -1 for padding, shape [nframes, nloc * nnei], grouped by type
        in ``sel`` order and sorted by distance within a type (the descriptor's ``get_nlist``).
    rij
        Neighbour minus centre positions, Å, shape [nframes, nloc * nnei * 3].
    sel
        The descriptor's neighbours per type, the grid type last.
    baseline
        The basis.
    nloc
        Local atoms per frame.
    points
        Grid points per frame: the last local atoms.

    Returns
    -------
    radial, density
        As `neighbour_density`, for the ``nframes * points`` grid points, in ``rij``'s
        precision.
    """
    nnei = sum(sel)
    kept = baseline.neighbours(sel)
    starts = np.cumsum([0, *sel])
    columns = np.concatenate([np.arange(starts[t], starts[t] + n) for t, n in enumerate(kept)])
    nlist = tf.reshape(nlist, [-1, nloc, nnei])[:, nloc - points :]
    rij = tf.reshape(rij, [-1, nloc, nnei, 3])[:, nloc - points :]
    if len(columns) < nnei:
        nlist, rij = tf.gather(nlist, columns, axis=2), tf.gather(rij, columns, axis=2)
    rij = tf.reshape(rij, [-1, len(columns), 3])
    r2 = tf.reduce_sum(tf.square(rij), axis=-1)
    listed = tf.logical_and(tf.reshape(nlist, [-1, len(columns)]) >= 0, r2 < baseline.rcut**2)
    r2 = tf.where(listed, r2, tf.fill(tf.shape(r2), tf.constant(baseline.rcut**2, r2.dtype)))
    r2 = r2[:, :, None]
    widths = tf.constant(baseline.widths, r2.dtype)
    phi = tf.exp(-r2 / (2.0 * tf.square(widths))) * tf.square(1.0 - r2 / baseline.rcut**2)
    return neighbour_density(phi, rij, kept, baseline, tf)


def graph_baseline(
    radial: tf.Tensor,
    density: tf.Tensor | None,
    elements: int,
    baseline: Baseline,
    coefficients: tf.Tensor,
) -> tf.Tensor:
    """Return the baseline at the grid points: ``baseline_features(...) @ coefficients``.

    The power spectrum is never formed: with the coefficients of ``p^l_AB`` (A <= B) as a
    symmetric matrix ``W_l``, its part is ``sum_m c_lm^T W_l c_lm``.

    Parameters
    ----------
    radial, density
        The neighbour density of the grid points (`graph_neighbour_density`).
    elements
        Real elements.
    baseline
        The basis.
    coefficients
        The coefficient of each feature, in ``baseline_features``'s order.

    Returns
    -------
    tf.Tensor
        The baseline (e/Å^3, without the constant), shape [npoints], in ``radial``'s
        precision.
    """
    channels = elements * baseline.basis
    value = tf.linalg.matvec(radial, coefficients[:channels])
    if density is None:
        return value
    # each pair's coefficient, halved, at (A, B) and (B, A) of W_l: c^T W c = sum_AB w_AB p_AB
    first, second = baseline.pairs(elements)
    spread = np.zeros((len(first), channels * channels))
    np.add.at(spread, (np.arange(len(first)), first * channels + second), 0.5)
    np.add.at(spread, (np.arange(len(first)), second * channels + first), 0.5)
    angular = tf.reshape(coefficients[channels:], [baseline.lmax + 1, len(first)])
    matrices = tf.reshape(
        tf.matmul(angular, tf.constant(spread, angular.dtype)),
        [baseline.lmax + 1, channels, channels],
    )
    for degree in range(baseline.lmax + 1):  # one product of [npoints * (2l + 1), C] by W_l
        block = density[:, degree**2 : (degree + 1) ** 2]
        contracted = tf.matmul(tf.reshape(block, [-1, channels]), matrices[degree])
        value += tf.reduce_sum(block * tf.reshape(contracted, tf.shape(block)), axis=[1, 2])
    return value


def graph_features(
    radial: tf.Tensor, density: tf.Tensor | None, elements: int, baseline: Baseline
) -> tf.Tensor:
    """Return the baseline's features at the grid points, as `baseline_features` orders them.

    Parameters
    ----------
    radial, density
        The neighbour density of the grid points (`graph_neighbour_density`).
    elements
        Real elements.
    baseline
        The basis.

    Returns
    -------
    tf.Tensor
        Shape [npoints, ``baseline.n_features(elements)``], in ``radial``'s precision.
    """
    if density is None:
        return radial
    channels = elements * baseline.basis
    first, second = baseline.pairs(elements)
    spectrum = []
    for degree in range(baseline.lmax + 1):  # p^l_AB = sum_m c_A,lm c_B,lm, pairs A <= B
        block = density[:, degree**2 : (degree + 1) ** 2]
        products = tf.reshape(tf.matmul(block, block, transpose_a=True), [-1, channels**2])
        spectrum.append(tf.gather(products, first * channels + second, axis=1))
    return tf.concat([radial, *spectrum], 1)


def stat_frames(all_stat: dict) -> Iterator[tuple[np.ndarray, ...]]:
    """Yield the frames of DeePMD-kit's statistics batches one by one.

    Parameters
    ----------
    all_stat
        Statistics batches (``make_stat_input``): ``coord``, ``box``, ``type`` and
        ``atom_ener`` per system and batch.

    Yields
    ------
    tuple of np.ndarray
        Positions (natoms, 3) in Å, cell (3, 3) in Å, types (natoms,), labels
        (natoms,), the density in e/Å^3 at grid points, and the weights of the
        atoms (natoms,), 1 where the data hold none.
    """
    keys = ("coord", "box", "type", LABEL)
    weights = all_stat.get(WEIGHT) or [[None] * len(batches) for batches in all_stat[LABEL]]
    for system in zip(*(all_stat[key] for key in keys), weights, strict=True):
        for coords, boxes, types, labels, weight in zip(*system, strict=True):
            types = np.asarray(types)
            for frame in range(types.shape[0]):
                shape = types[frame].shape
                yield (
                    np.reshape(coords[frame], (-1, 3)),
                    np.reshape(boxes[frame], (3, 3)),
                    types[frame],
                    np.reshape(labels[frame], shape),
                    np.ones(shape) if weight is None else np.reshape(weight[frame], shape),
                )


def fit_baseline(
    features: np.ndarray,
    density: np.ndarray,
    weight: np.ndarray | None = None,
    ridge: float = 0.0,
) -> np.ndarray:
    """Fit the baseline coefficients to densities by linear least squares (float64).

    The fit has a constant term, so the coefficients do not absorb the mean density. Columns
    are scaled to unit root mean square before solving, so features of very different sizes
    (radial sums and power spectra) are resolved alike. With ``ridge`` the scaled
    coefficients ``a`` minimise the weighted mean of the squared residuals plus
    ``ridge * |a|^2`` (the constant is not penalised), which keeps a fit to few distinct
    neighbourhoods (one small cell) from cancelling large coefficients to follow them.

    Parameters
    ----------
    features
        Basis sums at the grid points, shape (ngrid, nfeatures) (`baseline_features`).
    density
        Density at the grid points, e/Å^3, shape (ngrid,).
    weight
        Weight of each point's squared residual, shape (ngrid,); None weighs all alike.
    ridge
        Penalty relative to each scaled feature's mean square (1), 0 or more.

    Returns
    -------
    np.ndarray
        Coefficients, e/Å^3, shape (nfeatures,).
    """
    root = np.ones(len(density)) if weight is None else np.sqrt(weight)
    points = np.sum(np.square(root))  # a point of weight w counts w times
    design = np.column_stack([features, np.ones(len(density))]) * root[:, None]
    scale = np.sqrt(np.sum(np.square(design), axis=0) / points)
    scale[scale == 0] = 1.0
    design, target = design / scale, density * root
    if ridge > 0:
        # the penalty as extra rows of the design: sqrt(points ridge) |a| joins the residuals
        penalty = np.sqrt(points * ridge) * np.eye(features.shape[1], features.shape[1] + 1)
        design = np.concatenate([design, penalty])
        target = np.concatenate([target, np.zeros(features.shape[1])])
    solution, *_ = np.linalg.lstsq(design, target, rcond=None)
    return (solution / scale)[:-1]


def weighted_std(values: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Return the standard deviation of ``values`` along their first axis, rows weighted.

    Each row counts ``weight`` times; a number for shape (n,), one per column for (n, m).
    """
    mean = np.average(values, axis=0, weights=weight)
    return np.sqrt(np.average(np.square(values - mean), axis=0, weights=weight))


@Fitting.register(DENSITY)
class DensityFitting(EnerFitting):
    """Fitting of the density at grid points: an energy fitting with real atoms masked.

    The grid-point type (the last type) has a fitting network ``N``; its output
    is ``rho = N * scale + bias + B`` in e/Å^3. ``B`` is the atomic-density
    baseline (`Baseline`, 0 without one), whose coefficients are fitted to the
    training densities by least squares; ``bias`` and ``scale`` are the mean and
    standard deviation of the training densities minus ``B`` (see
    `compute_output_stats`), so ``N`` learns a quantity of order 1. Real types
    have no network and output exactly 0.

    Parameters
    ----------
    ntypes
        Number of types, the grid-point type last.
    dim_descrpt
        Dimension of the descriptor.
    descrpt
        The descriptor (given by DeePMD-kit when it builds a model). A descriptor
        in which grid points would see other grid points is refused: the
        density at a point must depend on the real atoms only.
    spin
        Must be None: spin models are not supported.
    baseline
        Options of `Baseline` (``basis``, ``rcut``, ``width_min``, ``width_max``,
        ``lmax``, ``trainable``, ``sel``, ``ridge``, ``network_input``); None: no baseline.
    **kwargs
        Options of DeePMD-kit's energy fitting (neuron, resnet_dt, precision,
        activation_function, seed, trainable, numb_fparam, numb_aparam).
    """

    def __init__(
        self,
        ntypes: int,
        dim_descrpt: int,
        descrpt: Any = None,
        spin: Any = None,
        baseline: dict | None = None,
        **kwargs: Any,
    ) -> None:
        if ntypes < 2:
            raise InputError(
                "a density model needs at least two types: the real elements, then the "
                f"grid-point type last in type_map (got {ntypes} type)"
            )
        if spin is not None:
            raise InputError("the density fitting does not support spin")
        if kwargs.get("atom_ener"):
            raise InputError("the density fitting has no atom_ener (vacuum energies)")
        type_map = kwargs.get("type_map") or []
        grid_name = type_map[-1] if len(type_map) == ntypes else f"type {ntypes - 1}"
        if descrpt is not None and grid_sees_grid(descrpt, ntypes - 1):
            raise InputError(
                f"the descriptor lets grid points ({grid_name}, the last type of type_map) "
                "see other grid points: set its sel to 0 for the grid type (se_e2_a: "
                f'"sel": [..., 0]) or exclude the pair with "exclude_types": '
                f"[[{ntypes - 1}, {ntypes - 1}]]"
            )
        self.baseline = Baseline(**baseline) if baseline is not None else None
        if self.baseline is not None and descrpt is not None:
            self.baseline.neighbours(baseline_neighbours(descrpt, ntypes, self.baseline.rcut))
        super().__init__(ntypes, dim_descrpt, **kwargs)
        self.descriptor = descrpt
        self.grid_type = ntypes - 1
        self.density_scale = 1.0
        features = self.baseline.n_features(ntypes - 1) if self.baseline else 0
        self.baseline_coefficients = np.zeros(features, dtype=np.float64)
        # the network's extra inputs: mean and spread of each feature, and their graph tensor
        inputs = features if self.baseline and self.baseline.network_input else 0
        self.features_avg = np.zeros(inputs, dtype=np.float64)
        self.features_std = np.ones(inputs, dtype=np.float64)
        self.network_features: tf.Tensor | None = None
        self.stats_from_labels = False

    def _build_lower(
        self,
        start_index: int,
        natoms: tf.Tensor,
        inputs: tf.Tensor,
        *args: Any,
        type_suffix: str = "",
        **kwargs: Any,
    ) -> tf.Tensor:
        """Build the fitting net of one type; real types get a constant 0, no net.

        Follows ``deepmd.tf.fit.ener.EnerFitting._build_lower(start_index, natoms,
        inputs, fparam, aparam, bias_atom_e, type_suffix, suffix, reuse)``, which
        its ``build`` calls with ``type_suffix="_type_<index>"`` for each type. With
        ``network_features`` the grid points' net takes them after the descriptor.
        """
        if type_suffix.startswith("_type_") and int(type_suffix[6:]) != self.grid_type:
            return tf.zeros([tf.shape(inputs)[0] * natoms, 1], GLOBAL_TF_FLOAT_PRECISION)
        width = 0
        if self.network_features is not None:
            width = len(self.features_avg)
            descriptor = tf.slice(inputs, [0, start_index, 0], [-1, natoms, -1])
            features = tf.reshape(self.network_features, [tf.shape(inputs)[0], natoms, width])
            inputs = tf.concat([descriptor, tf.cast(features, descriptor.dtype)], axis=2)
            start_index = 0
        self.dim_descrpt += width  # as EnerFitting's build widens it for a type embedding
        try:
            net = super()._build_lower(
                start_index, natoms, inputs, *args, type_suffix=type_suffix, **kwargs
            )
        finally:
            self.dim_descrpt -= width
        return net * self.t_density_scale

    def build(
        self,
        inputs: tf.Tensor,
        natoms: tf.Tensor,
        input_dict: dict | None = None,
        reuse: bool | None = None,
        suffix: str = "",
    ) -> tf.Tensor:
        """Build the per-atom density: scaled net plus bias at grid points, 0 elsewhere.

        Parameters
        ----------
        inputs
            The descriptor, per local atom.
        natoms
            ``[nloc, nall, n_type0, ...]``.
        input_dict
            Extra inputs (``atype``, ``fparam``, ``aparam``, ...).
        reuse
            Reuse the variables of an existing graph.
        suffix
            Name suffix of the variables.

        Returns
        -------
        tf.Tensor
            Flat per-atom density, exactly 0 at real atoms.
        """
        with tf.variable_scope("fitting_attr" + suffix, reuse=reuse):
            self.t_density_scale = tf.get_variable(
                "t_density_scale",
                [],
                dtype=GLOBAL_TF_FLOAT_PRECISION,
                trainable=False,
                initializer=tf.constant_initializer(self.density_scale),
            )
            if self.baseline is not None:
                t_baseline = tf.get_variable(
                    "t_baseline",
                    self.baseline_coefficients.shape,
                    dtype=GLOBAL_TF_FLOAT_PRECISION,
                    trainable=self.baseline.trainable,
                    initializer=tf.constant_initializer(self.baseline_coefficients),
                )
                radial, density = self._build_neighbour_density(natoms)
            if len(self.features_avg):
                t_avg, t_std = (
                    tf.get_variable(
                        name,
                        value.shape,
                        dtype=GLOBAL_TF_FLOAT_PRECISION,
                        trainable=False,
                        initializer=tf.constant_initializer(value),
                    )
                    for name, value in (
                        ("t_features_avg", self.features_avg),
                        ("t_features_std", self.features_std),
                    )
                )
                features = graph_features(radial, density, self.ntypes - 1, self.baseline)
                self.network_features = (features - t_avg) / t_std
        try:
            outs = super().build(inputs, natoms, input_dict, reuse=reuse, suffix=suffix)
        finally:
            self.network_features = None
        if self.baseline is not None:
            values = graph_baseline(radial, density, self.ntypes - 1, self.baseline, t_baseline)
            nloc, points = natoms[0], natoms[1 + self.ntypes]
            values = tf.pad(tf.reshape(values, [-1, points]), [[0, 0], [nloc - points, 0]])
            outs += tf.reshape(values, [-1])
        outs = tf.reshape(outs, [-1, natoms[0]]) * grid_mask(natoms, self.ntypes)
        return tf.reshape(outs, [-1])

    def _build_neighbour_density(self, natoms: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | None]:
        """Return the baseline's neighbour density of the grid points (`neighbour_density`)."""
        if self.descriptor is None:
            raise InputError("needs the model's descriptor", "baseline")
        sel = baseline_neighbours(self.descriptor, self.ntypes, self.baseline.rcut)
        nlist, rij, *_ = self.descriptor.get_nlist()
        nloc, points = natoms[0], natoms[1 + self.ntypes]
        return graph_neighbour_density(nlist, rij, sel, self.baseline, nloc, points)

    def init_variables(self, graph: tf.Graph, graph_def: tf.GraphDef, suffix: str = "") -> None:
        """Take the variables, bias and scale from a frozen graph (dp compress, init).

        Parameters
        ----------
        graph
            The frozen graph.
        graph_def
            Its definition.
        suffix
            Name suffix of the variables.
        """
        super().init_variables(graph, graph_def, suffix=suffix)
        self.density_scale = float(
            get_tensor_by_name_from_graph(graph, f"fitting_attr{suffix}/t_density_scale")
        )
        if self.baseline is not None:
            self.baseline_coefficients = get_tensor_by_name_from_graph(
                graph, f"fitting_attr{suffix}/t_baseline"
            )
        if len(self.features_avg):
            self.features_avg, self.features_std = (
                get_tensor_by_name_from_graph(graph, f"fitting_attr{suffix}/t_features_{name}")
                for name in ("avg", "std")
            )

    def compute_input_stats(self, all_stat: dict, *args: Any, **kwargs: Any) -> None:
        """Compute the input statistics; refuse to run outside a density model."""
        if not self.stats_from_labels:
            raise InputError(
                'the density fitting needs "model": {"type": "density", ...}: only the '
                "density model takes its output statistics from the atom_ener labels"
            )
        super().compute_input_stats(all_stat, *args, **kwargs)

    def compute_output_stats(self, all_stat: dict, mixed_type: bool = False) -> None:
        """Fit the baseline, then set bias and scale: mean and std of the remainder.

        Without a baseline the remainder is the density itself. Real types get bias 0.
        Points weighted by an ensemble's choice (``grid_weight``) count by their weight,
        so the statistics are those of the whole grid.

        Parameters
        ----------
        all_stat
            Statistics batches (``make_stat_input``) with ``coord``, ``box``, ``type``
            and ``atom_ener`` labels.
        mixed_type
            Unused: grid points are found by their type in each frame.
        """
        if self.baseline is not None:
            sel = baseline_neighbours(self.descriptor, self.ntypes, self.baseline.rcut)
        densities, weights, features = [], [], []
        for coord, box, types, labels, weight in stat_frames(all_stat):
            check_descriptor_sel(coord, box, types, self.descriptor, self.ntypes)
            densities.append(labels[types == self.grid_type])
            weights.append(weight[types == self.grid_type])
            if self.baseline is not None:
                features.append(baseline_features(coord, box, types, sel, self.baseline))
        density = np.concatenate(densities) if densities else np.zeros(0)
        if density.size == 0:
            raise InputError("the training data hold no grid points with atom_ener labels")
        weight = np.concatenate(weights)
        remainder = density
        if self.baseline is not None:
            features = np.concatenate(features)
            # DeePMD-kit's statistics batches repeat frames when the data hold fewer (rows
            # compared by their bytes: five times faster than np.unique's sort of the rows)
            distinct = len({row.tobytes() for row in features})
            if distinct < POINTS_PER_FEATURE * features.shape[1]:
                raise InputError(
                    f"the baseline has {features.shape[1]} features, but the statistics "
                    f"batches hold only {distinct} distinct grid points: a least-squares fit "
                    f"needs at least {POINTS_PER_FEATURE} per feature; raise the model's "
                    "data_stat_nbatch (batches of training frames used for statistics; "
                    "frames repeat when the training data hold fewer), train on more grid "
                    "points, or lower the baseline's basis or lmax",
                    "baseline",
                )
            coefficients = fit_baseline(features, density, weight, self.baseline.ridge)
            remainder = density - features @ coefficients
            self.baseline_coefficients = coefficients
            if len(self.features_avg):
                self.features_avg = np.average(features, axis=0, weights=weight)
                spread = weighted_std(features, weight)
                self.features_std = np.where(spread > 0, spread, 1.0)
            log.info(
                "baseline fitted to %d grid points: density std %.6g, remainder std %.6g e/Å^3",
                density.size,
                weighted_std(density, weight),
                weighted_std(remainder, weight),
            )
        mean = float(np.average(remainder, weights=weight))
        std = float(weighted_std(remainder, weight))
        self.bias_atom_e = np.zeros(self.ntypes, dtype=np.float64)
        self.bias_atom_e[self.grid_type] = mean
        self.density_scale = std if std > 0 else 1.0
        log.info(
            "density statistics of %d grid points: mean %.6g, std %.6g e/Å^3",
            density.size,
            mean,
            std,
        )

    def get_loss(self, loss: dict, lr: Any) -> Loss:
        """Return the density loss (the only loss of this fitting).

        Parameters
        ----------
        loss
            The ``loss`` section of the input.
        lr
            The learning-rate schedule (unused: the loss has no prefactors).

        Returns
        -------
        DensityLoss
            The density error over grid points, as the section asks.
        """
        loss = dict(loss)
        loss_type = loss.pop("type", DENSITY)
        if loss_type != DENSITY:
            raise InputError(
                f'the density fitting needs "loss": {{"type": "density"}}, not {loss_type!r}'
            )
        return DensityLoss(**loss)

    def serialize(self, suffix: str = "") -> dict:
        """Serialize as type ``density``, so that deserializing keeps mask and scale.

        Parameters
        ----------
        suffix
            Name suffix of the variables.

        Returns
        -------
        dict
            The energy fitting's data, ``type`` ``density``, the baseline options,
            and the scale and baseline coefficients in ``@variables``.
        """
        variables, width = self.fitting_net_variables, len(self.features_avg)
        if variables is not None:
            # DeePMD-kit's deserialize_network stores 0.0 for an absent ``idt`` (a
            # layer without skip connection), which its serialize_network cannot
            # read back: leave those placeholders out.
            self.fitting_net_variables = {
                key: value for key, value in variables.items() if np.ndim(value) > 0
            }
        self.dim_descrpt += width  # the networks' input: the descriptor and the features
        try:
            data = super().serialize(suffix=suffix)
        finally:
            self.fitting_net_variables = variables
            self.dim_descrpt -= width
        data["dim_descrpt"] -= width
        data["type"] = DENSITY
        data["var_name"] = "density"
        data["baseline"] = asdict(self.baseline) if self.baseline is not None else None
        data["@variables"]["density_scale"] = np.array(self.density_scale)
        data["@variables"]["baseline_coefficients"] = self.baseline_coefficients
        data["@variables"]["features_avg"] = self.features_avg
        data["@variables"]["features_std"] = self.features_std
        return data

    @classmethod
    def deserialize(cls, data: dict, suffix: str = "") -> DensityFitting:
        """Rebuild a density fitting from `serialize` data.

        Parameters
        ----------
        data
            The serialized fitting.
        suffix
            Name suffix of the variables.

        Returns
        -------
        DensityFitting
            The fitting, with its bias, scale, baseline coefficients and networks.
        """
        fitting = super().deserialize(data, suffix=suffix)
        fitting.density_scale = float(data["@variables"]["density_scale"])
        if fitting.baseline is not None:
            fitting.baseline_coefficients = np.asarray(
                data["@variables"]["baseline_coefficients"], dtype=np.float64
            )
        if len(fitting.features_avg):
            fitting.features_avg, fitting.features_std = (
                np.asarray(data["@variables"][f"features_{name}"], dtype=np.float64)
                for name in ("avg", "std")
            )
        return fitting


LOSS_FUNCTIONS = ("mse", "mae", "huber")
"""What the density loss can minimise: squared, absolute or Huber error."""


class DensityLoss(Loss):
    """Error of the density over grid points; real atoms are left out.

    The learning curve (``lcurve.out``) shows ``rmse_rho`` and ``mae_rho``, the
    root-mean-square and mean absolute errors of the density in e/Å^3 over the
    grid points of a batch (validation columns average ``numb_btch`` batches),
    whatever ``function`` training minimises. Grid points drawn by an ensemble
    count by their weight (``grid_weight``) in the loss and in both errors, which
    then estimate the errors over the whole grid.

    Parameters
    ----------
    function
        ``"mse"`` (mean squared error), ``"mae"`` (mean absolute error) or
        ``"huber"`` (0.5 e^2 for |e| <= ``huber_delta``, else
        ``huber_delta`` (|e| - 0.5 ``huber_delta``)), averaged over grid points.
    huber_delta
        The Huber loss's crossover error, e/Å^3.
    **kwargs
        Ignored (DeePMD-kit passes ``starter_learning_rate``).
    """

    def __init__(self, function: str = "mse", huber_delta: float = 0.01, **kwargs: Any) -> None:
        if function not in LOSS_FUNCTIONS:
            raise InputError(f"must be one of {LOSS_FUNCTIONS}, got {function!r}", "function")
        if not 0 < huber_delta < np.inf:
            raise InputError(f"must be a positive e/Å^3, got {huber_delta}", "huber_delta")
        self.function = function
        self.huber_delta = huber_delta
        self.l2_l: tf.Tensor | None = None
        self.l2_more: dict[str, tf.Tensor] = {}

    def build(
        self,
        learning_rate: tf.Tensor,
        natoms: tf.Tensor,
        model_dict: dict[str, tf.Tensor],
        label_dict: dict[str, tf.Tensor],
        suffix: str,
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """Build the loss: the mean of ``function`` of the density error over grid points.

        Parameters
        ----------
        learning_rate
            The learning rate (unused).
        natoms
            ``[nloc, nall, n_type0, ...]``; the grid points are the last type.
        model_dict
            Model outputs; ``atom_ener`` is the predicted density.
        label_dict
            Labels; ``atom_ener`` is the density at grid points.
        suffix
            Name suffix.

        Returns
        -------
        tf.Tensor
            The loss.
        dict[str, tf.Tensor]
            Mean squared and mean absolute errors (e/Å^3 squared, e/Å^3).
        """
        nloc = natoms[0]
        ngrid = natoms[-1]
        predicted = tf.reshape(model_dict[LABEL], [-1, nloc])[:, nloc - ngrid :]
        labelled = tf.reshape(label_dict[LABEL], [-1, nloc])[:, nloc - ngrid :]
        error = predicted - tf.cast(labelled, predicted.dtype)
        weight = tf.reshape(label_dict[WEIGHT], [-1, nloc])[:, nloc - ngrid :]
        weight = tf.cast(weight, error.dtype)
        weight = weight / tf.reduce_mean(weight)

        def mean(values: tf.Tensor, name: str) -> tf.Tensor:
            return tf.reduce_mean(weight * values, name=f"{name}_density_{suffix}")

        mse = mean(tf.square(error), "l2")
        mae = mean(tf.abs(error), "mae")
        loss = {"mse": mse, "mae": mae}.get(self.function)
        if loss is None:
            delta = tf.constant(self.huber_delta, dtype=error.dtype)
            absolute = tf.abs(error)
            quadratic = tf.minimum(absolute, delta)
            loss = mean(0.5 * tf.square(quadratic) + delta * (absolute - quadratic), "huber")
        self.l2_l = loss
        self.l2_more = {"mse_rho": mse, "mae_rho": mae}
        tf.summary.scalar("rmse_rho_" + suffix, tf.sqrt(mse))
        return loss, self.l2_more

    def eval(self, sess: tf.Session, feed_dict: dict, natoms: np.ndarray) -> dict:
        """Evaluate the density errors of one batch.

        Parameters
        ----------
        sess
            The TensorFlow session.
        feed_dict
            The batch.
        natoms
            ``[nloc, nall, n_type0, ...]`` of the batch.

        Returns
        -------
        dict
            ``natoms`` (grid points per frame, the weight of this batch),
            ``rmse_rho`` and ``mae_rho`` in e/Å^3.
        """
        mse, mae = run_sess(
            sess, [self.l2_more["mse_rho"], self.l2_more["mae_rho"]], feed_dict=feed_dict
        )
        return {"natoms": int(natoms[-1]), "rmse_rho": float(np.sqrt(mse)), "mae_rho": float(mae)}

    @property
    def label_requirement(self) -> list[DataRequirementItem]:
        """The density labels ``atom_ener``, required, and ``grid_weight`` (default 1)."""
        return [
            DataRequirementItem(LABEL, 1, atomic=True, must=True, high_prec=False),
            DataRequirementItem(WEIGHT, 1, atomic=True, must=False, high_prec=False, default=1.0),
        ]


@Model.register(DENSITY)
class DensityModel(EnerModel):
    """DeePMD-kit's energy model with output statistics from grid-point densities.

    The frozen graph is an energy-model graph (``model_type`` ``ener``):
    ``o_atom_energy`` holds the density at each grid point (e/Å^3) and 0 at
    real atoms.

    Parameters
    ----------
    descriptor
        The descriptor section or object.
    fitting_net
        The ``density`` fitting section or object.
    **kwargs
        Other options of DeePMD-kit's energy model.
    """

    def __init__(self, descriptor: Any, fitting_net: Any, **kwargs: Any) -> None:
        if isinstance(fitting_net, dict):
            fitting_net = {**fitting_net, "type": fitting_net.get("type", DENSITY)}
            if fitting_net["type"] != DENSITY:
                raise InputError(
                    f'a density model needs "fitting_net": {{"type": "density"}}, '
                    f"not {fitting_net['type']!r}"
                )
        elif not isinstance(fitting_net, DensityFitting):
            raise InputError("a density model needs a density fitting")
        if kwargs.get("spin") is not None:
            raise InputError("the density model does not support spin")
        super().__init__(descriptor=descriptor, fitting_net=fitting_net, **kwargs)
        self.fitting.stats_from_labels = True
        self.fitting.descriptor = self.descrpt

    def _compute_output_stat(self, all_stat: dict, *args: Any, **kwargs: Any) -> None:
        """Let the fitting take bias and scale from the ``atom_ener`` labels.

        Parameters
        ----------
        all_stat
            Statistics batches (``make_stat_input``).
        *args, **kwargs
            Unused (``mixed_type``, ``stat_file_path``).
        """
        self.fitting.compute_output_stats(all_stat)

    def serialize(self, suffix: str = "") -> dict:
        """Serialize as model type ``density`` (deserializes to a `DensityModel`).

        Parameters
        ----------
        suffix
            Name suffix of the variables.

        Returns
        -------
        dict
            The energy model's data with ``type`` set to ``density``.
        """
        data = super().serialize(suffix=suffix)
        data["type"] = DENSITY
        return data
