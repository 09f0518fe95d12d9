"""`ontask score --engine ray`: the scoring pass (phase 2) as a Ray Data pipeline.

    read (ontask's own reader as a Ray Datasource, streaming one block per chunk)
      -> map_batches(ChunkScorer actors: one scorer model per actor, --workers of them)
      -> rows back to the driver in input order -> spool + failed.jsonl (as local)

Why this shape:
- The unit of work is the local engine's chunk (`Scoring.score_chunk`): same rows, same
  alternatives, same passes per chunk, so the same forward batches and the same floats.
  A Ray row *is* a chunk (its numbered items, pickled), so however Ray splits or bundles
  blocks, a chunk is never cut; blocks are one chunk each, so the actors share the work.
- Reading goes through ontask's reader inside the Ray read task, so every format and
  layout, row numbers in failures and the row numbering that seeds random alternatives
  are exactly the local engine's.
- Each actor opens the result cache itself: it looks passes up before computing them and
  commits what it computed in one transaction per chunk, the moment the chunk is done. A
  run killed half-way and resumed recomputes no pass that any actor had finished, even
  ones the driver never received.
- Phase 1 (alternatives: the instruction pool, hard neighbours, variants) runs on the
  driver, as locally; its result goes to the actors once, through the object store.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Iterator

import ray
import ray.data
from ray.data import ReadTask
from ray.data.block import BlockMetadata

from ..runs import RunPaths
from .ray_runtime import pool_size

_CHUNK, _ITEMS = "chunk", "items"


def score_on_ray(job: Any, path: Path, run: RunPaths, progress: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Phase 2 of `job` (a `scoring.pipeline.Scoring` whose alternatives are built) on Ray.

    Returns the TSS++ running stats (as `Scoring.score_all` does) and the engine's facts for
    run.json (pool size, the scorer as the actors loaded it).
    """
    from ..scoring.pipeline import ChunkSink

    cfg = job.cfg
    size = pool_size(ray, cfg.workers, cfg.worker_cpus, cfg.worker_gpus)
    context = ray.put(pickle.dumps((job.pool, job.hard, job.variant_sets)))
    source = ExamplesSource(str(path), cfg.model_dump(), cfg.chunk_rows)
    # One read task (one file, numbered in order; reading is light, num_cpus=0 leaves the
    # cores to the actors). Its output buffer would merge the small chunk rows into one
    # block, which one actor would then score alone: a tiny target size makes every row
    # (chunk) its own block, so the pool shares them.
    ray.data.DataContext.get_current().target_max_block_size = 1
    ds = ray.data.read_datasource(source, num_cpus=0, override_num_blocks=1)
    ds = ds.map_batches(
        ChunkScorer,
        batch_size=None,  # whole blocks, i.e. whole chunks
        fn_constructor_kwargs={"cfg": cfg.model_dump(), "context": [context], "cache_path": str(job.cache.path),
                               "threads": max(1, int(size.cpus))},
        concurrency=size.workers, num_cpus=size.cpus, num_gpus=size.gpus or None,
    )
    scorer: dict[str, Any] | None = None
    n_chunks = 0
    with ChunkSink(run) as sink:
        for out in ds.iter_rows():
            n_chunks += 1
            result, counts, tokens, described = pickle.loads(out["result"])
            sink.add(result)
            for name, n in counts.items():
                job.counts[name] = job.counts.get(name, 0) + n
            job.tokens_computed += tokens
            scorer = scorer or described
            if progress:
                progress(int(out["rows"]), counts.get("passes_needed", 0), job.tokens_computed)
    # chunks < workers means idle actors: lower chunk_rows for small inputs
    return sink.tss_stats, sink.q_stats, {"engine": "ray", **size.to_json(), "chunks": n_chunks, "scorer": scorer}


class ExamplesSource(ray.data.Datasource):
    """One input file read by ontask's reader: one block per chunk of `chunk_rows` items
    (Examples and Failures), each numbered as the local engine numbers it."""

    def __init__(self, path: str, cfg: dict[str, Any], chunk_rows: int) -> None:
        self.path, self.cfg, self.chunk_rows = path, cfg, chunk_rows

    def estimate_inmemory_data_size(self) -> int | None:
        return Path(self.path).stat().st_size if Path(self.path).is_file() else None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        # One file, read in order by one task that streams its blocks (the numbering is sequential).
        path, cfg, rows = self.path, self.cfg, self.chunk_rows
        meta = BlockMetadata(num_rows=None, size_bytes=self.estimate_inmemory_data_size(),
                             exec_stats=None, input_files=(path,))
        return [ReadTask(lambda: _read_blocks(path, cfg, rows), meta)]


def _read_blocks(path: str, cfg: dict[str, Any], chunk_rows: int) -> Iterator[Any]:
    """The rows as the run reads them (all, the first `limit`, or a `sample`), chunked and numbered."""
    import pyarrow as pa

    from ..scoring.config import ScoreConfig
    from ..scoring.pipeline import chunks

    for n, chunk in enumerate(chunks(ScoreConfig(**cfg).rows(path), chunk_rows)):
        yield pa.table({_CHUNK: [n], _ITEMS: [pickle.dumps(chunk)]})


class ChunkScorer:
    """A Ray actor: one scorer model, the run's alternatives, the cache; scores whole chunks."""

    def __init__(self, cfg: dict[str, Any], context: list[Any], cache_path: str, threads: int) -> None:
        import torch

        from ..models import load_scorer
        from ..cache import ResultCache
        from ..scoring.config import ScoreConfig
        from ..scoring.pipeline import Scoring

        torch.set_num_threads(threads)
        config = ScoreConfig(**cfg)
        if not Path(cache_path).exists():
            raise RuntimeError(f"the cache {cache_path} is not on this Ray node; put --cache on a filesystem "
                               "every node sees")
        # the full spec (device auto: the GPU Ray reserved for this actor, when it has one)
        scorer = load_scorer(config.spec_for("scorer"), batch_tokens=config.batch_tokens,
                             share_prefix=config.share_prefix)
        self.job = Scoring(config, scorer, ResultCache(cache_path))
        self.job.pool, self.job.hard, self.job.variant_sets = pickle.loads(ray.get(context[0]))
        self.described = scorer.describe()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {_CHUNK: [], "rows": [], "result": []}
        for chunk, payload in zip(batch[_CHUNK], batch[_ITEMS]):
            items = pickle.loads(payload)
            before, tokens = dict(self.job.counts), self.job.tokens_computed
            result = self.job.score_chunk(items)
            counts = {k: v - before.get(k, 0) for k, v in self.job.counts.items()}
            out[_CHUNK].append(chunk)
            out["rows"].append(len(items))
            out["result"].append(pickle.dumps((result, counts, self.job.tokens_computed - tokens, self.described)))
        return out



def ray_executor(address: str | None) -> Any:
    """The `--engine ray` executor for `scoring.pipeline.run_score` (chosen by `ontask.api`):
    a Ray session (local, or the cluster at `address`) for the length of phase 2."""

    def execute(job: Any, path: Path, run: RunPaths, progress: Any) -> tuple[Any, Any, dict[str, Any]]:
        from .ray_runtime import import_ray, ray_session

        import_ray()
        with ray_session(address):
            return score_on_ray(job, path, run, progress)

    return execute
