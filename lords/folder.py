"""The lords checkpoint folder: a Hugging Face model folder whose ``config.json`` carries the quantization metadata.

    config.json                     the model's config, with ``quantization_config`` (quant_method "lords": the
                                    lords config, the layout of every quantized module, the manifest's SHA-256)
    model.safetensors               or model-0000i-of-0000n.safetensors + model.safetensors.index.json
                                    (every tensor: ``qweight``, ``B``, ``A`` / ``scales``, ``grid``, float ones)

The layout of a module is its registered kind and fields (``lords.layouts``); this module applies layouts to whole
models and checks a folder against them. ``lords.checkpoint`` (save / load) and ``lords.hf`` (the transformers
quantizer) both build on it. Integrity (``lords.integrity``): a SHA-256 per tensor in every shard's header.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .integrity import shard_files, tensor_specs, verify
from .layouts import adopt_stored_dtypes, check_tensors, layout_class, module_from_meta, module_meta
from .linear import QuantizedLinear

FORMAT_VERSION = 2
QUANT_METHOD = "lords"

Specs = dict[str, tuple[tuple[int, ...], "torch.dtype | None"]]
"""``{tensor name: (shape, dtype)}`` of the stored tensors, from the shards' headers (``lords.integrity.tensor_specs``)."""


def layout(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: module_meta}`` of every quantized module of ``model`` (one without a registered layout is
    refused by name)."""
    return {name: module_meta(m) for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def check_layout(modules: Any, stored: Specs) -> None:
    """Every layout entry well formed and matching the stored tensors (``lords.layouts.check_tensors``)."""
    if not isinstance(modules, dict) or not modules:
        raise CheckpointError(f"quantization_config.modules is {type(modules).__name__}, not a non-empty mapping")
    for name, meta in modules.items():
        layout_class(meta, name)
        check_tensors(meta, name, stored)


def install_layout(model: nn.Module, modules: dict[str, dict[str, Any]], stored: Specs | None = None) -> nn.Module:
    """Replace each named ``nn.Linear`` of ``model`` by an empty quantized module of the saved layout, its float
    tensors in the dtypes ``stored`` names (when given) so that loading copies them bit for bit."""
    for name, meta in modules.items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"checkpoint module {name!r} does not exist in {type(model).__name__}: "
                                  "wrong architecture") from None
        module = module_from_meta(meta, name)
        if not isinstance(old, (nn.Linear, QuantizedLinear)) or (old.out_features, old.in_features) != (
                module.out_features, module.in_features):
            raise CheckpointError(f"checkpoint module {name!r} is {(module.out_features, module.in_features)} but "
                                  f"the model has {old}: wrong architecture")
        if stored is not None:
            prefix = f"{name}."
            adopt_stored_dtypes(module, {k[len(prefix):]: dtype for k, (_, dtype) in stored.items()
                                         if k.startswith(prefix)})
        model.set_submodule(name, module)
    return model


def read_quantization_config(path: str | os.PathLike) -> dict[str, Any]:
    """``config.json``'s ``quantization_config`` of a lords folder, checked for method and format version."""
    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path} not found: {path} is not a lords checkpoint (a model folder)")
    try:
        qc = json.loads(cfg_path.read_text()).get("quantization_config")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"{cfg_path} is not a JSON object ({e}); the checkpoint is corrupt") from e
    if not isinstance(qc, dict) or qc.get("quant_method") != QUANT_METHOD:
        raise CheckpointError(f"{cfg_path}: quantization_config is not quant_method 'lords': not a lords checkpoint")
    if qc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{cfg_path}: lords format v{qc.get('format_version')} is not v{FORMAT_VERSION}")
    return qc


def verify_folder(path: str | os.PathLike, qc: dict[str, Any] | None = None) -> Specs:
    """Check a lords folder's shards (hashes) and layout (shapes, dtypes) without building a model; returns the
    stored tensors' specs."""
    qc = read_quantization_config(path) if qc is None else qc
    files = shard_files(Path(path))
    verify(files, qc.get("manifest_sha256"))
    specs = tensor_specs(files)
    check_layout(qc.get("modules"), specs)
    return specs
