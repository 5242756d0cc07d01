"""The runtime's public entry points, kept importable from their first home (grand.runtime.pipeline).

grand/runtime reads plan -> steps -> run -> report:
    plan.py    which shards need which levels (parse_levels, plan_passes, the output's shard plan)
    steps.py   Step and plan(cfg, levels): the pipeline as a list; build_dataset / apply_step run it on Ray Data
    batch.py   BatchStep, the base of every step (per-image isolation, poison images, step timing)
    run.py     run_pipeline: stream each pass into the sinks, progress, failure bookkeeping
    report.py  the run report, manifest reconciliation, package versions
"""

from grand.runtime.plan import (  # noqa: F401
    ALL_LEVELS, PREREQUISITE, Pass, depends_on, parse_levels, plan_output, plan_passes,
)
from grand.runtime.run import RunError, RunOptions, RunSummary, init_ray, run_pipeline  # noqa: F401
from grand.runtime.steps import (  # noqa: F401
    Step, build_dataset, check_cluster_resources, model_steps, operators, plan, provenance, resolve_checkpoints,
)
