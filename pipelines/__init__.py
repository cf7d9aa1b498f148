"""Entry points that run a pipeline file on a compute environment (local machine, AWS).

Run them as modules from the repository root: ``python -m pipelines.local ...`` and
``python -m pipelines.aws ...`` (see ``pipelines/README.md``).
"""
