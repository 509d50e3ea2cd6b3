"""Quantized checkpoints: ``model.safetensors`` + ``lords.json`` (config, module layout, manifest).

Safetensors only: nothing is executed on load. Every file is written to a temporary name, flushed and
renamed, ``lords.json`` last; it holds a SHA-256 per tensor, so a truncated, tampered or half-replaced
checkpoint fails to load with a message saying which tensor is wrong.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .config import config_from_dict
from .errors import CheckpointError
from .linear import BlockLinear, LoRDSLinear, QuantizedLinear

FORMAT = "lords-checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "lords.json"


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def module_meta(module: QuantizedLinear) -> dict[str, Any]:
    """What it takes to rebuild an empty quantized module of the same layout."""
    meta = dict(in_features=module.in_features, out_features=module.out_features, bits=module.bits,
                bias=module.bias is not None)
    if isinstance(module, LoRDSLinear):
        meta.update(kind="lords", rank=module.rank, dtype=str(module.B.dtype).removeprefix("torch."))
    else:
        meta.update(kind="blockwise", block_size=module.block_size, dtype=str(module.scales.dtype).removeprefix("torch."))
    return meta


def module_from_meta(meta: dict[str, Any]) -> QuantizedLinear:
    """An empty quantized module (zeros) of the layout ``meta`` describes; the state dict fills it."""
    dtype = getattr(torch, meta["dtype"])
    grid = torch.zeros(2 ** meta["bits"])
    bias = torch.zeros(meta["out_features"], dtype=dtype) if meta["bias"] else None
    if meta["kind"] == "lords":
        return LoRDSLinear(meta["in_features"], meta["out_features"], meta["rank"], meta["bits"], grid, bias, dtype)
    if meta["kind"] == "blockwise":
        return BlockLinear(meta["in_features"], meta["out_features"], meta["block_size"], meta["bits"], grid, bias, dtype)
    raise CheckpointError(f"unknown module kind {meta['kind']!r} in checkpoint")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _unique_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict without tied duplicates (safetensors refuses shared storage); aliases map dup → kept."""
    state, aliases, seen = {}, {}, {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        state[name] = t.detach().cpu().contiguous()
    return state, aliases


def save_quantized(model: nn.Module, path: str | os.PathLike, config, extra: dict | None = None) -> Path:
    """Save a quantized model (every tensor, quantized or not) to the folder ``path``; returns it."""
    from safetensors.torch import save

    path = Path(path)
    modules = {name: module_meta(m) for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    if not modules:
        raise CheckpointError("the model holds no quantized module: call quantize_ before save_quantized")
    state, aliases = _unique_state(model)
    hf_config = getattr(model, "config", None)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "config": config.to_dict(),
        "modules": modules,
        "aliases": aliases,
        "model_class": type(model).__name__,
        "model_config": hf_config.to_dict() if hf_config is not None and hasattr(hf_config, "to_dict") else None,
        "manifest": {name: tensor_digest(t) for name, t in state.items()},
        "extra": extra or {},
    }
    atomic_write_bytes(path / WEIGHTS, save(state, metadata={"format": "pt"}))
    atomic_write_bytes(path / META, json.dumps(meta, indent=1, default=str).encode())
    return path


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's ``lords.json``, checked for format and version."""
    meta_path = Path(path) / META
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path} not found: {path} is not a lords checkpoint")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path} is not valid JSON ({e}); the checkpoint is corrupt") from e
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: format {meta.get('format')!r} v{meta.get('format_version')} "
                              f"is not {FORMAT} v{FORMAT_VERSION}")
    return meta


def _load_tensors(path: Path, manifest: dict[str, str]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    weights = path / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found")
    try:
        state = load(weights.read_bytes())
    except Exception as e:  # safetensors raises its own error types for truncated or malformed files
        raise CheckpointError(f"{weights} cannot be read as safetensors ({e}); the file is truncated or corrupt") from e
    missing = sorted(set(manifest) - set(state))
    unexpected = sorted(set(state) - set(manifest))
    if missing or unexpected:
        raise CheckpointError(f"{weights}: tensors missing {missing[:5]} / unexpected {unexpected[:5]} against the manifest")
    for name, digest in manifest.items():
        if tensor_digest(state[name]) != digest:
            raise CheckpointError(f"{weights}: tensor {name!r} does not match its SHA-256 in {META} (tampered or corrupt)")
    return state


def build_model_from_meta(meta: dict[str, Any]) -> nn.Module:
    """A float model of the saved architecture, from its transformers config (no weights downloaded)."""
    if meta.get("model_config") is None:
        raise CheckpointError("the checkpoint holds no model config: pass model= (an instance of the architecture)")
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(meta["model_config"])
    hf_config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    return AutoModelForCausalLM.from_config(hf_config)


def load_quantized(path: str | os.PathLike, model: nn.Module | None = None, device="cpu") -> tuple[nn.Module, Any]:
    """Rebuild a saved quantized model: returns ``(model, config)``. Needs no float weights.

    ``model``: an instance of the saved architecture (its float weights are replaced); built from
    the saved transformers config when omitted.
    """
    path = Path(path)
    meta = read_meta(path)
    config = config_from_dict(meta["config"])
    state = _load_tensors(path, meta["manifest"])
    if model is None:
        model = build_model_from_meta(meta)
    for name, mmeta in meta["modules"].items():
        try:
            old = model.get_submodule(name)
        except AttributeError as e:
            raise CheckpointError(f"checkpoint module {name!r} does not exist in {type(model).__name__}: wrong architecture") from e
        shape = (mmeta["out_features"], mmeta["in_features"])
        if not isinstance(old, (nn.Linear, QuantizedLinear)) or (old.out_features, old.in_features) != shape:
            raise CheckpointError(f"checkpoint module {name!r} is {shape} but the model has {old}: wrong architecture")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, module_from_meta(mmeta))
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in meta["aliases"]]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"checkpoint does not fit the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    if meta["aliases"] and hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.to(device).eval(), config
