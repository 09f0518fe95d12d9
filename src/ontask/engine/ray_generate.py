"""`augment --engine ray`: local-model roles (embedded, hf:, vllm:) served by Ray actor pools.

`RayGenerator` is a `Generator` like any other, so the TCIA steps (decompose,
compose/verify, judge, respond) run unchanged; each of its calls is spread over a pool of
actors, each holding one copy of the model. Server models (openai:) stay in the driver:
they are I/O-bound, and the async client already keeps dozens of requests in flight.

Same answers as the local engine: one actor first computes the batch plan the local
generator would follow (`HFGenerator.plan`), and each planned batch is sent, whole and in
order, to an actor. So every forward pass sees the same batch as in one local call.
Results come back batch by batch and go to `on_result` at once, so `CachedGenerator`
commits each batch as it lands: a killed run loses only the batches in flight.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import ray
from ray.util import ActorPool

from ..models.base import ChatOutcome, ChatRequest, ChoiceOutcome, ChoiceRequest, OnChat, OnChoice


@ray.remote
class GeneratorActor:
    """One model, loaded once; answers whole planned batches."""

    def __init__(self, spec: str, options: dict[str, Any], threads: int) -> None:
        import torch

        from ..models import load_generator

        self.gen = load_generator(spec, **options)
        torch.set_num_threads(threads)

    def describe(self) -> dict[str, Any]:
        return {**self.gen.describe(), "fingerprint": self.gen.fingerprint,
                "supports_choice_probs": self.gen.supports_choice_probs}

    def plan(self, requests: list[Any]) -> list[list[int]]:
        plan = getattr(self.gen, "plan", None)
        return plan(requests) if plan is not None else [list(range(len(requests)))]

    def chat(self, requests: list[ChatRequest], indices: list[int]) -> tuple[list[int], list[ChatOutcome]]:
        return indices, self.gen.chat([requests[i] for i in indices])

    def choice_probs(self, requests: list[ChoiceRequest], indices: list[int]) -> tuple[list[int], list[ChoiceOutcome]]:
        return indices, self.gen.choice_probs([requests[i] for i in indices])


class RayGenerator:
    """A Generator over a pool of `GeneratorActor`s (`workers` copies of model `spec`)."""

    def __init__(self, spec: str, options: dict[str, Any], *, workers: int, cpus: float, gpus: float) -> None:
        self.name = str(spec)
        self.actors = [GeneratorActor.options(num_cpus=cpus, num_gpus=gpus or None).remote(spec, options, max(1, int(cpus)))
                       for _ in range(workers)]
        self._described = ray.get(self.actors[0].describe.remote())
        self.pool = {"workers": workers, "cpus_per_worker": cpus, "gpus_per_worker": gpus}

    @property
    def fingerprint(self) -> str:
        return self._described["fingerprint"]

    @property
    def supports_choice_probs(self) -> bool:
        return bool(self._described["supports_choice_probs"])

    def describe(self) -> dict[str, Any]:
        out = {k: v for k, v in self._described.items() if k != "supports_choice_probs"}
        return {**out, "engine": "ray", **self.pool}

    def chat(self, requests: Sequence[ChatRequest], on_result: OnChat | None = None) -> list[ChatOutcome]:
        return self._spread("chat", list(requests), on_result)

    def choice_probs(self, requests: Sequence[ChoiceRequest], on_result: OnChoice | None = None) -> list[ChoiceOutcome]:
        return self._spread("choice_probs", list(requests), on_result)

    def _spread(self, method: str, requests: list[Any], on_result: Any) -> list[Any]:
        if not requests:
            return []
        ref = ray.put(requests)
        batches = ray.get(self.actors[0].plan.remote(ref))
        out: list[Any] = [None] * len(requests)
        pool = ActorPool(self.actors)
        for indices, outcomes in pool.map_unordered(lambda actor, b: getattr(actor, method).remote(ref, b), batches):
            for i, outcome in zip(indices, outcomes, strict=True):
                out[i] = outcome
                if on_result is not None:
                    on_result(i, outcome)
        return out

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


def ray_loader(cfg: Any, local: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The `--engine ray` model loader for `tcia.pipeline.Roles` (chosen by `ontask.api`):
    local models (embedded, hf:, vllm:) in Ray actor pools; server models stay in the driver
    (`local`), being I/O-bound. By default the cluster is shared evenly between the distinct
    local models."""
    from .ray_runtime import pool_size

    specs = {s for s in cfg.roles().values() if s.provider != "openai"}
    size = pool_size(ray, cfg.workers, cfg.worker_cpus, cfg.worker_gpus)
    workers = cfg.workers or max(1, size.workers // max(1, len(specs)))

    def load(spec: Any) -> Any:
        if spec.provider == "openai":
            return local(spec)
        return RayGenerator(spec, {"repetition_penalty": cfg.local_repetition_penalty},
                            workers=workers, cpus=size.cpus, gpus=size.gpus)

    return load
