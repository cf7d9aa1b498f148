"""Split tall views into overlapping sub-views (BigStitcher's ``SplittingTools``), for split-affine alignment.

Public API::

    from rhapso_gpu.split import SplitParams, split_dataset

    result = split_dataset(spim, SplitParams(target_image_size=(512, 512, 256)), "split.xml")

Modules: :mod:`~.grid` (sub-view boxes per view), :mod:`~.views` (new setups,
registrations, the ``split.*`` image loader), :mod:`~.points` (real points
carried over, fake corresponding points in sub-view overlaps), :mod:`~.run`,
:mod:`~.params`.
"""

from rhapso_gpu.split.params import SplitParams
from rhapso_gpu.split.run import SplitResult, split_dataset
from rhapso_gpu.split.views import SubView

__all__ = ["SplitParams", "SplitResult", "SubView", "split_dataset"]
