"""Links from intensity-based stitching: BigStitcher's ``ImageCorrelationPointMatchCreator``.

Each ``<PairwiseResult>`` (shift ``T`` moving view B onto view A, world xyz)
becomes 8 point matches: the corners ``p`` of its overlap box, in A's
current world, matched with ``T^-1 p`` in B's current world. A result is used
only while its hash equals that of the views' current registrations
(:func:`~rhapso_gpu.geometry.registration_hash`); older ones are stale.
"""

from __future__ import annotations

import logging

import numpy as np

from rhapso_gpu.errors import UserError
from rhapso_gpu.geometry import apply_affine, box_corners, registration_hash, view_affine
from rhapso_gpu.io.spimdata import SpimData, ViewId
from rhapso_gpu.solver.graph import MatchGraph

log = logging.getLogger("rhapso_gpu")


def stitching_graph(spim: SpimData, views: list[ViewId], same_timepoint: bool = True) -> MatchGraph:
    """Matches between ``views`` from the dataset's current stitching results (weight 1 each).

    Each link counts 3 observations (``MatchGraph.observations``): its 8 matches
    repeat one measured 3-D shift.

    Raises
    ------
    UserError
        When no result applies to the views' current registrations.
    """
    index = {v: i for i, v in enumerate(views)}
    links, stale = [], 0
    for result in spim.stitching_results:
        if len(result.setups_a) != 1 or len(result.setups_b) != 1 or result.overlap_box is None:
            continue  # grouped views and results without a box are not supported
        a = ViewId(result.timepoints_a[0], result.setups_a[0])
        b = ViewId(result.timepoints_b[0], result.setups_b[0])
        if a not in index or b not in index or (same_timepoint and a.timepoint != b.timepoint):
            continue
        current = registration_hash(view_affine(spim, a), view_affine(spim, b))
        if not np.isclose(current, result.hash, rtol=1e-9, atol=1e-6):
            stale += 1
            continue
        shift = np.eye(4)
        if result.shift.shape == (3,):
            shift[:3, 3] = result.shift
        else:
            shift[:3] = result.shift
        box = np.asarray(result.overlap_box, dtype=np.float64)
        corners = box_corners(box[:3], box[3:])
        moved_back = apply_affine(np.linalg.inv(shift), corners)
        if index[a] < index[b]:
            links.append((index[a], index[b], corners, moved_back, np.ones(8)))
        else:
            links.append((index[b], index[a], moved_back, corners, np.ones(8)))
    if stale:
        log.info("%d stitching result(s) ignored: computed with other registrations (stitch again)", stale)
    if not links:
        raise UserError(
            f"{spim.location or 'dataset'}: no stitching results for the current registrations "
            f"({stale} stale): run `rhapso-gpu stitch` first"
        )
    # One shift is 3 independent numbers, however many corners repeat it (select_model's F-test counts them).
    return MatchGraph.from_links(len(views), sorted(links, key=lambda link: link[:2]), observations=[3.0] * len(links))
