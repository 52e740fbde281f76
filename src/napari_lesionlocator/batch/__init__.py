"""Cohort-scale batch runs on Dask distributed (headless: no Qt or napari).

* :mod:`.manifest`: the studies to run (CSV, JSON or a dataset-layout folder);
* :mod:`.pipeline`: one study end to end, published atomically with a checksummed done marker;
* :mod:`.cluster`: the engine loaded once per worker (a WorkerPlugin), the study task, clusters;
* :mod:`.runner`: skip finished studies, run the rest, rebuild the cohort tables (:mod:`.tables`);
* :mod:`.cohort`: generated cohorts with exact ground truth (tests, benchmarks).

Example::

    from napari_lesionlocator.batch import EngineConfig, load_manifest, open_client, run_batch
    specs = load_manifest("cohort/")               # or manifest.csv / manifest.json
    with open_client(workers=2) as (client, info):
        report = run_batch(specs, "out/", client, EngineConfig("classical"))
"""

from __future__ import annotations

from .cluster import EngineConfig, EnginePlugin, open_client, run_study_task
from .manifest import ManifestError, StudySpec, TimepointSpec, load_manifest
from .pipeline import check_study_output, process_study, study_dir
from .runner import BatchLockedError, BatchReport, plan_batch, run_batch

__all__ = [
    "EngineConfig",
    "EnginePlugin",
    "open_client",
    "run_study_task",
    "ManifestError",
    "StudySpec",
    "TimepointSpec",
    "load_manifest",
    "check_study_output",
    "process_study",
    "study_dir",
    "BatchLockedError",
    "BatchReport",
    "plan_batch",
    "run_batch",
]
