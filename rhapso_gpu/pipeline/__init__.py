"""Pipeline files: ``rhapso-gpu run PIPELINE.yml`` runs stages in order, skipping unchanged ones.

>>> pipeline = load_pipeline("pipeline.yml")                 # doctest: +SKIP
>>> with open_cluster("local") as cluster:                   # doctest: +SKIP
...     rows = run_pipeline(pipeline, cluster)
"""

from rhapso_gpu.pipeline.runner import StageResult, run_pipeline
from rhapso_gpu.pipeline.schema import Pipeline, StageSpec, load_pipeline, parse_pipeline

__all__ = ["Pipeline", "StageResult", "StageSpec", "load_pipeline", "parse_pipeline", "run_pipeline"]
