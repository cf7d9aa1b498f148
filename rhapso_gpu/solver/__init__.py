"""Global optimisation: tile models from pairwise matches (BigStitcher's solver, solved directly).

Public API::

    from rhapso_gpu.solver import SolveParams, solve_dataset, apply_solution, build_report

    solved = solve_dataset(spim, SolveParams(model="rigid"))
    apply_solution(spim, solved)          # new ViewTransform at index 0 of every view
    report = build_report(solved)         # per-link residuals, removed links, convergence

Modules: :mod:`~.graph` (matches grouped by link, their moments),
:mod:`~.linear` (direct sparse solves: translation, rigid), :mod:`~.affine`
(affine and regularised affine: Newton on mpicbg's fixed point),
:mod:`~.global_opt` (fixed tiles, pre-alignment, link removal, two rounds),
:mod:`~.dataset` (views or groups of views, correspondences, registrations),
:mod:`~.report`, :mod:`~.params`.
"""

from rhapso_gpu.solver.dataset import DatasetSolve, apply_solution, solve_dataset, transform_name
from rhapso_gpu.solver.global_opt import Optimum, SolverSettings, optimize
from rhapso_gpu.solver.graph import MatchGraph
from rhapso_gpu.solver.params import SolveParams
from rhapso_gpu.solver.report import build_report, report_location, write_report

__all__ = [
    "DatasetSolve",
    "MatchGraph",
    "Optimum",
    "SolveParams",
    "SolverSettings",
    "apply_solution",
    "build_report",
    "optimize",
    "report_location",
    "solve_dataset",
    "transform_name",
    "write_report",
]
