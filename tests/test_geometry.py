"""View geometry: transform composition, world boxes, overlaps."""

import itertools
from pathlib import Path

import numpy as np
import pytest

from rhapso_gpu.errors import UserError
from rhapso_gpu.geometry import (
    apply_affine,
    overlap_box,
    overlapping_pairs,
    view_affine,
    view_box_world,
)
from rhapso_gpu.io.spimdata import SpimData, Timepoints, ViewId, ViewSetup, ViewTransform
from rhapso_gpu.io.spimdata_xml import load_spimdata

FIXTURES = Path(__file__).parent / "data" / "bigstitcher"
DATA = Path(__file__).parent / "data"


def test_first_listed_transform_is_applied_last():
    spim = load_spimdata(str(DATA / "loader_zarr_v3.xml"))
    # Translation (56, 0, 0) listed first, calibration diag(1, 1, 4) listed last:
    # local (1, 2, 3) -> calibration -> (1, 2, 12) -> translation -> (57, 2, 12)
    world = apply_affine(view_affine(spim, ViewId(0, 1)), [[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(world, [[57.0, 2.0, 12.0]])


def test_composition_with_a_rotation_from_a_real_bigstitcher_file():
    spim = load_spimdata(str(FIXTURES / "drosophila_dataset.xml"))
    m = view_affine(spim, ViewId(18, 1))
    # Hand computation: calibration scales z by 2.735686, then the 45-degree rotation about x
    # with translation (-694, -455.7117327587728, 279.67931967523657).
    x, y, z = 10.0, 20.0, 30.0
    zc = z * 2.735686
    c = s = np.sqrt(0.5)
    expected = [x - 694.0, c * y + s * zc - 455.7117327587728, -s * y + c * zc + 279.67931967523657]
    np.testing.assert_allclose(apply_affine(m, [[x, y, z]])[0], expected, rtol=0, atol=1e-9)


def test_generic_transform_cannot_be_applied(tmp_path):
    spim = load_spimdata(str(DATA / "loader_n5.xml"))
    with pytest.raises(UserError, match="tp5/setup0: transform 'non-rigid' is not an affine"):
        view_affine(spim, ViewId(5, 0))


def _grid(nx=3, ny=3, size=(100, 80, 20), overlap=0.1, timepoints=(0,)):
    spim = SpimData(timepoints=Timepoints("list", list(timepoints), [str(t) for t in timepoints]))
    step = [size[0] * (1 - overlap), size[1] * (1 - overlap)]
    for setup, (iy, ix) in enumerate(itertools.product(range(ny), range(nx))):
        spim.setups[setup] = ViewSetup(id=setup, size_xyz=size)
        t = np.eye(4)
        t[:3, 3] = [ix * step[0], iy * step[1], 0.0]
        for tp in timepoints:
            spim.registrations[ViewId(tp, setup)] = [ViewTransform.from_matrix("Translation", t)]
    return spim


def test_world_box_spans_pixel_centres():
    spim = _grid()
    lo, hi = view_box_world(spim, ViewId(0, 4))  # centre tile: ix = iy = 1
    np.testing.assert_allclose(lo, [90.0, 72.0, 0.0])
    np.testing.assert_allclose(hi, [189.0, 151.0, 19.0])


def test_overlap_box_of_neighbours():
    spim = _grid()
    np.testing.assert_allclose(overlap_box(spim, ViewId(0, 0), ViewId(0, 1))[0], [90.0, 0.0, 0.0])
    np.testing.assert_allclose(overlap_box(spim, ViewId(0, 0), ViewId(0, 1))[1], [99.0, 79.0, 19.0])
    assert overlap_box(spim, ViewId(0, 0), ViewId(0, 2)) is None


def test_overlapping_pairs_of_a_3x3_grid():
    spim = _grid()
    pairs = overlapping_pairs(spim)
    # 6 horizontal + 6 vertical + 8 diagonal neighbours (boxes share a corner region)
    expected = set()
    for a, b in itertools.combinations(range(9), 2):
        (ay, ax), (by, bx) = divmod(a, 3), divmod(b, 3)
        if abs(ax - bx) <= 1 and abs(ay - by) <= 1:
            expected.add((ViewId(0, a), ViewId(0, b)))
    assert len(expected) == 20
    assert set(pairs) == expected and len(pairs) == 20


def test_overlapping_pairs_respect_timepoints_and_min_extent():
    spim = _grid(timepoints=(0, 1))
    assert len(overlapping_pairs(spim)) == 40
    # across time points: 40 within, plus each setup with itself (9) and each neighbour in both directions (40)
    assert len(overlapping_pairs(spim, same_timepoint=False)) == 40 + 9 + 40
    # overlaps are 10 px in x and 8 px in y: requiring 9 px keeps only the left-right neighbours
    thick = overlapping_pairs(spim, views=[v for v in spim.view_ids() if v.timepoint == 0], min_extent=9.0)
    assert len(thick) == 6 and all(b.setup - a.setup == 1 for a, b in thick)


def test_overlapping_pairs_scale_to_thousands_of_tiles():
    spim = _grid(nx=40, ny=40)
    pairs = overlapping_pairs(spim)
    assert len(pairs) == 2 * 39 * 40 + 2 * 39 * 39
