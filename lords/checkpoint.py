"""Quantized checkpoints: :func:`save_quantized` / :func:`load_quantized`, the library's names for
``model.save_pretrained(dir)`` and ``AutoModelForCausalLM.from_pretrained(dir)`` on a lords folder.

The folder is a Hugging Face model folder (``lords.folder`` describes it); every quantized module is recorded by its
registered layout (``lords.layouts``), so any method whose module class registers one saves and loads here, and
``from_pretrained`` opens it once ``import lords`` has registered the quantizer (``lords.hf``). Integrity
(``lords.integrity``): a SHA-256 per tensor in every shard's header, checked before weights load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from .config import config_from_dict
from .errors import CheckpointError, LordsError

# Re-exported: callers import the format's pieces from here.
from .folder import (  # noqa: F401
    FORMAT_VERSION,
    QUANT_METHOD,
    check_layout,
    check_model_fits,
    check_quantization_config,
    install_layout,
    layout,
    read_quantization_config,
    recover,
    swap_in,
    verify_folder,
)
from .integrity import shard_files
from .layouts import expected_shapes, module_from_meta, module_meta  # noqa: F401
from .linear import QuantizedLinear


def save_quantized(
    model: nn.Module,
    path: str | os.PathLike,
    config=None,
    extra: dict | None = None,
    max_shard_size: int | str = "2GB",
    tokenizer=None,
) -> Path:
    """Write a quantized transformers model to the folder ``path`` (``save_pretrained`` through the lords
    quantizer); returns it. ``tokenizer``: saved in the same folder, before it appears. The folder is written
    beside and swapped in whole (:func:`swap_in`): a failed or killed save leaves the previous one or the new one
    at ``path``, never a part. ``config``: the lords config (default: what ``quantize_`` recorded on the model)."""
    if not any(isinstance(m, QuantizedLinear) for m in model.modules()):
        raise CheckpointError("the model holds no quantized module: call quantize_ before save_quantized")
    if not hasattr(model, "save_pretrained"):
        raise CheckpointError(
            f"{type(model).__name__} is not a transformers model: the checkpoint is a "
            "transformers folder (config.json + safetensors)"
        )
    from .hf import attach  # transformers: only a transformers model gets here

    config = config if config is not None else getattr(model, "lords_config", None)
    if config is None:
        raise CheckpointError("no lords config: pass config= (the model was not quantized by quantize_)")
    attach(model, config, extra)

    def write(tmp: Path) -> None:
        type(model).save_pretrained(model, tmp, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    return swap_in(Path(path), write)


def load_quantized(path: str | os.PathLike, model: nn.Module | None = None, device="cpu") -> tuple[nn.Module, Any]:
    """Rebuild a saved quantized model: returns ``(model, config)``. Needs no float weights.

    Without ``model``: ``AutoModelForCausalLM.from_pretrained(path)`` (the quantizer builds the quantized modules
    on the meta device). With ``model`` (an instance of the saved architecture): its linears are replaced by the
    saved layout and the shards are loaded into it, after every check: a refused load leaves ``model`` untouched.
    """
    recover(path)
    qc = read_quantization_config(path)
    try:
        config = config_from_dict(qc.get("config") or {})
    except LordsError as e:
        raise CheckpointError(f"{path}: quantization_config.config is malformed ({e})") from e
    from .hf import attach  # transformers (importing lords.hf registers quant_method "lords" with it)

    if model is None:
        from transformers import AutoModelForCausalLM  # transformers: kept out of import lords

        model = AutoModelForCausalLM.from_pretrained(path, device_map=device)
        return model.eval(), config
    specs = verify_folder(path, qc)
    check_model_fits(model, qc["modules"], specs)
    from safetensors.torch import load_file  # optional dependency: only reading a checkpoint needs it

    state = {}
    for file in shard_files(Path(path)):
        try:
            state.update(load_file(str(file)))
        except Exception as e:  # changed since it was verified
            raise CheckpointError(f"shard {file.name} cannot be read ({e})") from e
    install_layout(model, qc["modules"], specs)
    result = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"checkpoint does not fit the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    if tied and hasattr(model, "tie_weights"):
        model.tie_weights()
    model.lords_config = config
    attach(model, config, qc.get("extra"), manifest_sha256=qc.get("manifest_sha256"))
    return model.to(device).eval(), config
