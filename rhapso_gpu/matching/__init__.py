"""Pairwise interest-point matching: geometric descriptors, batched RANSAC, ICP (BigStitcher's methods).

* :func:`match_points` matches two world-space point clouds (candidates,
  RANSAC, trimming, removal of matches that share a point, guided matching,
  leave-one-out :func:`cross_validate`);
  :func:`match_offsets` is the descriptor-free ``offset-consensus`` method;
  :func:`icp` iterates nearest-neighbour assignment and fitting.
* :func:`find_candidates` gives the correspondence candidates of one descriptor method;
  :func:`ransac` fits a model robustly to given candidates.
* :func:`match_dataset` matches every selected pair of a dataset's views or groups
  of views (one dask task each, :mod:`~rhapso_gpu.matching.grouping` pools and
  merges a group's points), :func:`store_results` writes the correspondences to
  ``interestpoints.n5``.
"""

from rhapso_gpu.matching.descriptors import METHODS, find_candidates
from rhapso_gpu.matching.grouping import PointSet, merge_mask, view_groups
from rhapso_gpu.matching.icp import IcpParams, icp, mutual_nearest
from rhapso_gpu.matching.pairwise import (
    DescriptorParams,
    PairMatch,
    cross_validate,
    match_candidates,
    match_offsets,
    match_points,
)
from rhapso_gpu.matching.params import MatchParams
from rhapso_gpu.matching.ransac import RansacParams, RansacResult, ransac
from rhapso_gpu.matching.views import PairResult, match_dataset, select_pairs, store_results

__all__ = [
    "METHODS",
    "DescriptorParams",
    "IcpParams",
    "MatchParams",
    "PairMatch",
    "PairResult",
    "PointSet",
    "RansacParams",
    "RansacResult",
    "cross_validate",
    "find_candidates",
    "icp",
    "match_candidates",
    "match_dataset",
    "match_offsets",
    "match_points",
    "merge_mask",
    "mutual_nearest",
    "ransac",
    "select_pairs",
    "store_results",
    "view_groups",
]
