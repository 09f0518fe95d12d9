"""Starting (or joining) Ray, and sizing the actor pools. Ray is an optional extra.

`--engine ray` with no `--ray-address` starts a local Ray on this machine and stops it at
the end; with an address (`auto`, `ray://host:10001`, `host:6379`) it joins that cluster
and leaves it running. Workers import `ontask` from their own environment, so a remote
cluster must have the same ontask installed (its nodes run the same code, and the cache
file named by `--cache` must be on a filesystem every node sees).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

RAY_MISSING = "--engine ray needs Ray Data: pip install 'ontask[ray]'"


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(RAY_MISSING) from exc
    return ray


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Ray, initialised; shut down afterwards only if this call started it."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, ignore_reinit_error=True,
                 # a local Ray starts its workers with this environment: keep the tokenizers quiet
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}} if address is None else None)
        started = True
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # rows come back in input order
    ctx.enable_progress_bars = False
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class PoolSize:
    """How many model actors, and what each one holds."""

    workers: int
    cpus: float
    gpus: float

    def to_json(self) -> dict[str, float]:
        return {"workers": self.workers, "cpus_per_worker": self.cpus, "gpus_per_worker": self.gpus}


def pool_size(ray: Any, workers: int | None, worker_cpus: float | None, worker_gpus: float | None) -> PoolSize:
    """One model load per actor. On a cluster with GPUs: one actor per GPU by default; on
    CPUs: one per `worker_cpus` cores (1 by default). An explicit `workers` wins."""
    res = ray.cluster_resources()
    total_cpus, total_gpus = float(res.get("CPU", os.cpu_count() or 1)), float(res.get("GPU", 0))
    gpus = float(worker_gpus if worker_gpus is not None else (1.0 if total_gpus >= 1 else 0.0))
    cpus = float(worker_cpus if worker_cpus is not None else 1.0)
    if workers is None:
        workers = int(total_gpus // gpus) if gpus else int(total_cpus // cpus)
    if workers < 1:
        raise ValueError(f"the Ray cluster ({total_cpus:g} CPUs, {total_gpus:g} GPUs) cannot hold one worker "
                         f"of {cpus:g} CPUs and {gpus:g} GPUs")
    return PoolSize(workers, cpus, gpus)
