"""``interestpoints.n5``: interest points per view and label, exactly as BigStitcher stores them.

Layout (multiview-reconstruction ``InterestPointsN5``; reference section 2.1)::

    <BasePath>/interestpoints.n5/
      attributes.json                       {"n5": "4.0.0"}
      tpId_{tp}_viewSetupId_{setup}/{label}/
        interestpoints/                     {"pointcloud": "1.0.0", "type": "list", "list version": "1.0.0"}
          id           uint64   N5 dims [1, N]  block [1, 300000]  gzip
          loc          float64  N5 dims [3, N]  block [3, 300000]  gzip
          intensities  float32  N5 dims [1, N]  block [1, 300000]  zstd
        correspondences/                    {"correspondences": "1.0.0", "idMap": {}}

In NumPy C order ``id`` is (N, 1), ``loc`` is (N, 3) with rows **x, y, z** in
the view's **full-resolution local pixel** coordinates, ``intensities`` is
(N, 1). Ids equal the row index. An empty list is written in BigStitcher's 1-D
form: ``id`` uint64 dims ``[0]`` block ``[1]``, ``loc`` float64 ``[0]`` block
``[1]`` (and ``intensities`` float32 ``[0]``), with no blocks.

Writing a label removes the label's previous ``interestpoints`` and
``correspondences`` (the old correspondences refer to old ids), like
BigStitcher's ``n5Writer.remove`` before rewriting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rhapso_gpu.errors import UserError
from rhapso_gpu.io import storage
from rhapso_gpu.io.n5 import N5Container
from rhapso_gpu.io.spimdata import InterestPointsRef, SpimData, ViewId

N5_NAME = "interestpoints.n5"
BLOCK_SIZE = 300_000
"""``InterestPointsN5.defaultBlockSize``."""
GZIP = {"type": "gzip", "level": -1, "useZlib": False}
"""``new GzipCompression()`` as n5 <= 3.x serialises it (level -1 = zlib default 6)."""
ZSTD = {"type": "zstd", "level": 3, "nbWorkers": 0}
"""``new ZstandardCompression()`` (n5-zstandard), used by Spark ``--storeIntensities``."""
POINTS_ATTRIBUTES = {"pointcloud": "1.0.0", "type": "list", "list version": "1.0.0"}
CORRESPONDENCES_ATTRIBUTES = {"correspondences": "1.0.0", "idMap": {}}


@dataclass
class InterestPoints:
    """The points of one view and label.

    Attributes
    ----------
    ids : numpy.ndarray of uint64, shape (N,)
    loc_xyz : numpy.ndarray of float64, shape (N, 3)
        Full-resolution local pixel coordinates (x, y, z) of the view.
    intensities : numpy.ndarray of float32, shape (N,), or None
        Image intensity at each point, when stored.
    """

    ids: np.ndarray
    loc_xyz: np.ndarray
    intensities: np.ndarray | None = None


def label_path(view: ViewId, label: str) -> str:
    """``tpId_{tp}_viewSetupId_{setup}/{label}``: the XML text and the group inside the container."""
    return f"tpId_{int(view.timepoint)}_viewSetupId_{int(view.setup)}/{label}"


def container_location(spim: SpimData) -> str:
    """``<BasePath>/interestpoints.n5`` of the dataset."""
    return storage.join(spim.base_location(), N5_NAME)


def _remove(container: N5Container, path: str) -> None:
    location = container.path(path)
    fs, fs_path = storage.get_fs(location, container.storage_options)
    if fs.exists(fs_path):
        fs.rm(fs_path, recursive=True)


def write_interest_points(
    location: str,
    view: ViewId,
    label: str,
    loc_xyz: np.ndarray,
    intensities: np.ndarray | None = None,
    storage_options: dict | None = None,
) -> str:
    """Write (replace) the points of one view and label.

    Parameters
    ----------
    location : str
        The ``interestpoints.n5`` container (local path or URL); created if missing.
    view : ViewId
    label : str
    loc_xyz : array_like, shape (N, 3)
        Full-resolution local pixel coordinates (x, y, z); ids are the row index.
    intensities : array_like, shape (N,), optional
        Written as ``intensities`` (float32, zstd) when given.
    storage_options : dict, optional
        fsspec options.

    Returns
    -------
    str
        The XML path ``tpId_{tp}_viewSetupId_{setup}/{label}``.
    """
    loc = np.asarray(loc_xyz, dtype=np.float64).reshape(-1, 3)
    n = len(loc)
    container = N5Container.create(location, storage_options)
    group = label_path(view, label)
    points = f"{group}/interestpoints"
    _remove(container, points)
    _remove(container, f"{group}/correspondences")
    container.write_attributes(points, POINTS_ATTRIBUTES)
    if n == 0:
        container.create_dataset(f"{points}/id", (0,), (1,), "uint64", GZIP)
        container.create_dataset(f"{points}/loc", (0,), (1,), "float64", GZIP)
        if intensities is not None:
            container.create_dataset(f"{points}/intensities", (0,), (1,), "float32", ZSTD)
    else:
        ids = np.arange(n, dtype=np.uint64).reshape(n, 1)
        container.create_dataset(f"{points}/id", (n, 1), (BLOCK_SIZE, 1), "uint64", GZIP).write(ids)
        container.create_dataset(f"{points}/loc", (n, 3), (BLOCK_SIZE, 3), "float64", GZIP).write(loc)
        if intensities is not None:
            values = np.asarray(intensities, dtype=np.float32).reshape(n, 1)
            container.create_dataset(f"{points}/intensities", (n, 1), (BLOCK_SIZE, 1), "float32", ZSTD).write(values)
    container.write_attributes(f"{group}/correspondences", CORRESPONDENCES_ATTRIBUTES)
    return group


def read_interest_points(location: str, view: ViewId, label: str, storage_options: dict | None = None) -> InterestPoints:
    """Read the points of one view and label (BigStitcher's 2-D and empty 1-D forms).

    Raises
    ------
    UserError
        When the label is missing or its datasets are malformed.
    """
    container = N5Container(location, storage_options)
    points = f"{label_path(view, label)}/interestpoints"
    where = container.path(points)
    if not container.exists(f"{points}/loc"):
        raise UserError(f"{where}: no interest points for {view} label '{label}' (missing 'loc' dataset)")
    loc_ds = container.open_dataset(f"{points}/loc")
    if loc_ds.ndim == 1 or loc_ds.shape[0] == 0:
        empty = InterestPoints(np.zeros(0, np.uint64), np.zeros((0, 3), np.float64))
        if container.exists(f"{points}/intensities"):
            empty.intensities = np.zeros(0, np.float32)
        return empty
    if loc_ds.ndim != 2 or loc_ds.shape[1] != 3:
        raise UserError(f"{where}/loc: expected N5 dimensions [3, N], got {list(reversed(loc_ds.shape))}")
    loc = loc_ds.read().astype(np.float64)
    n = len(loc)
    if container.exists(f"{points}/id"):
        ids = container.open_dataset(f"{points}/id").read().reshape(-1).astype(np.uint64)
        if len(ids) != n:
            raise UserError(f"{where}/id: {len(ids)} ids for {n} locations")
    else:
        ids = np.arange(n, dtype=np.uint64)
    intensities = None
    if container.exists(f"{points}/intensities"):
        intensities = container.open_dataset(f"{points}/intensities").read().reshape(-1).astype(np.float32)
        if len(intensities) != n:
            raise UserError(f"{where}/intensities: {len(intensities)} values for {n} locations")
    return InterestPoints(ids, loc, intensities)


def set_interest_points_ref(spim: SpimData, view: ViewId, label: str, params: str) -> InterestPointsRef:
    """Add the ``<ViewInterestPointsFile>`` of ``view``/``label`` to ``spim``, replacing an earlier one."""
    view = ViewId(*view)
    ref = InterestPointsRef(view=view, label=label, params=params, path=label_path(view, label))
    spim.interest_points = [r for r in spim.interest_points if not (r.view == view and r.label == label)] + [ref]
    return ref
