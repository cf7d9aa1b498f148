"""How far estimated view registrations are from the true ones.

A registration is only defined up to one global transform of the world (moving
every view together changes nothing about the alignment), so the comparison
first removes the global transform that best maps the estimated world onto the
true one, then measures what is left.

Method: for every view, a ``points_per_axis^3`` grid of local pixels spread over
``[0, size - 1]`` (xyz) is mapped to world with the estimate and with the truth.
One global transform, least squares over all views' points, takes the
estimated world points onto the true ones; the distances that remain are the
registration error, in world units (isotropic pixels, i.e. full-resolution xy
pixels when xy holds the smallest voxel size).

With a single view there is no relative alignment to judge: an affine (or, for
a rigid estimate error, a rigid) removal absorbs everything and the error is 0.
Use ``remove="none"`` to compare a single view in absolute terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rhapso_gpu.errors import UserError
from rhapso_gpu.geometry import apply_affine
from rhapso_gpu.io.spimdata import ViewId

REMOVALS = ("affine", "rigid", "translation", "none")


@dataclass
class ViewError:
    """Residual distances of one view's sample points (world units)."""

    rms: float
    max: float


@dataclass
class ErrorReport:
    """Registration error after removing a global transform.

    Attributes
    ----------
    remove : {'affine', 'rigid', 'translation', 'none'}
        The kind of global transform removed.
    rms, max : float
        RMS and maximum distance over all sample points (world units).
    per_view : dict of ViewId -> ViewError
    worst_view : ViewId
        The view with the largest RMS.
    global_xyz : ndarray, shape (4, 4)
        The removed transform: estimated world -> true world (xyz).
    points_per_view : int
    """

    remove: str
    rms: float
    max: float
    per_view: dict[ViewId, ViewError]
    worst_view: ViewId
    global_xyz: np.ndarray
    points_per_view: int

    def to_dict(self) -> dict:
        """JSON-ready form; views as ``{"timepoint", "setup", "rms", "max"}`` sorted by view."""
        return {
            "remove": self.remove,
            "rms": self.rms,
            "max": self.max,
            "worst_view": {"timepoint": self.worst_view.timepoint, "setup": self.worst_view.setup},
            "global_xyz": self.global_xyz.tolist(),
            "points_per_view": self.points_per_view,
            "per_view": [
                {"timepoint": v.timepoint, "setup": v.setup, "rms": e.rms, "max": e.max}
                for v, e in sorted(self.per_view.items())
            ],
        }


def registration_error(
    estimated: dict[ViewId, np.ndarray],
    truth: dict[ViewId, np.ndarray],
    sizes_xyz: dict[ViewId, tuple],
    remove: str = "affine",
    points_per_axis: int = 3,
) -> ErrorReport:
    """Compare estimated view affines with the true ones, up to a global transform.

    Parameters
    ----------
    estimated, truth : dict of ViewId -> ndarray (4, 4) or (3, 4)
        Local pixel -> world affines (xyz), e.g. the solver's output and
        ``ground_truth.json``'s ``true_xyz``. Both must hold the same views.
    sizes_xyz : dict of ViewId -> 3 ints
        Each view's size in pixels (xyz).
    remove : {'affine', 'rigid', 'translation', 'none'}
        Global transform fitted (least squares) and removed before measuring:
        a 3-D affine, a rotation plus translation (Kabsch), a translation, or
        nothing.
    points_per_axis : int
        Sample points per axis of each view (>= 2 for affine and rigid removal
        to be well defined).

    Returns
    -------
    ErrorReport
        Distances in world units. With one view, affine removal absorbs any
        error (see the module notes).
    """
    if remove not in REMOVALS:
        raise UserError(f"remove='{remove}' is not one of {', '.join(REMOVALS)}")
    if points_per_axis < 1:
        raise UserError(f"points_per_axis={points_per_axis} must be >= 1")
    views = sorted(truth)
    if not views:
        raise UserError("registration_error: no views to compare")
    missing = [str(v) for v in views if v not in estimated] + [str(v) for v in sorted(estimated) if v not in truth]
    if missing:
        raise UserError(f"registration_error: views {', '.join(missing)} are not in both the estimate and the truth")
    no_size = [str(v) for v in views if v not in sizes_xyz]
    if no_size:
        raise UserError(f"registration_error: views {', '.join(no_size)} have no size")

    est_pts, true_pts = [], []
    for v in views:
        local = _sample_grid(sizes_xyz[v], points_per_axis)
        est_pts.append(apply_affine(estimated[v], local))
        true_pts.append(apply_affine(truth[v], local))
    est_all, true_all = np.concatenate(est_pts), np.concatenate(true_pts)
    g = _FITS[remove](est_all, true_all)

    per_view = {}
    for v, e, t in zip(views, est_pts, true_pts):
        d = np.linalg.norm(apply_affine(g, e) - t, axis=1)
        per_view[v] = ViewError(rms=float(np.sqrt(np.mean(d**2))), max=float(d.max()))
    d_all = np.linalg.norm(apply_affine(g, est_all) - true_all, axis=1)
    return ErrorReport(
        remove=remove,
        rms=float(np.sqrt(np.mean(d_all**2))),
        max=float(d_all.max()),
        per_view=per_view,
        worst_view=max(views, key=lambda v: per_view[v].rms),
        global_xyz=g,
        points_per_view=points_per_axis**3,
    )


def _sample_grid(size_xyz, points_per_axis: int) -> np.ndarray:
    """A ``points_per_axis^3`` grid (N, 3) of local pixel coordinates (xyz) over ``[0, size - 1]``."""
    axes = [np.linspace(0.0, float(s) - 1.0, points_per_axis) for s in size_xyz]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def _fit_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 4x4 affine taking ``src`` (N, 3) onto ``dst``."""
    homogeneous = np.hstack([src, np.ones((len(src), 1))])
    solution, *_ = np.linalg.lstsq(homogeneous, dst, rcond=None)  # (4, 3)
    m = np.eye(4)
    m[:3, :] = solution.T
    return m


def _fit_rigid(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + translation (Kabsch, no reflection) taking ``src`` onto ``dst``."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    u, _, vt = np.linalg.svd((src - mu_s).T @ (dst - mu_d))
    flip = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    r = (u @ flip @ vt).T
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = mu_d - r @ mu_s
    return m


def _fit_translation(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = (dst - src).mean(axis=0)
    return m


_FITS = {
    "affine": _fit_affine,
    "rigid": _fit_rigid,
    "translation": _fit_translation,
    "none": lambda src, dst: np.eye(4),
}
