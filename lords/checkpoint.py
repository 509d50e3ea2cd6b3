"""Quantized checkpoints: one format, a Hugging Face model folder.

    config.json                     the model's config, with ``quantization_config`` (quant_method "lords": the
                                    lords config, the layout of every quantized module, the manifest's SHA-256)
    model.safetensors               or model-0000i-of-0000n.safetensors + model.safetensors.index.json
                                    (every tensor: ``qweight``, ``B``, ``A`` / ``scales``, ``grid``, float ones)

``model.save_pretrained(dir)`` writes it (after ``quantize_``, or a model loaded from such a folder) and
``AutoModelForCausalLM.from_pretrained(dir)`` reads it once ``import lords`` has registered the quantizer
(``lords.hf``); :func:`save_quantized` / :func:`load_quantized` are the library's names for the same two steps.
Integrity (``lords.integrity``): a SHA-256 per tensor in every shard's header, checked before weights load.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import config_from_dict
from .errors import CheckpointError, LordsError
from .grids import SUPPORTED_BITS
from .integrity import shapes, shard_files, verify
from .linear import DTYPES, BlockLinear, LoRDSLinear, QuantizedLinear
from .packing import packed_width

FORMAT_VERSION = 2
QUANT_METHOD = "lords"


def module_meta(module: QuantizedLinear) -> dict[str, Any]:
    """What it takes to rebuild an empty quantized module of the same layout."""
    meta = dict(in_features=module.in_features, out_features=module.out_features, bits=module.bits,
                bias=module.bias is not None)
    if isinstance(module, LoRDSLinear):
        meta.update(kind="lords", rank=module.rank, dtype=str(module.B.dtype).removeprefix("torch."))
    elif type(module) is not BlockLinear:  # a subclass (LoftQLinear) holds more than the format stores
        raise CheckpointError(f"{type(module).__name__} is not a module the checkpoint format holds "
                              "(LoRDSLinear, BlockLinear)")
    else:
        meta.update(kind="blockwise", block_size=module.block_size, dtype=str(module.scales.dtype).removeprefix("torch."))
    return meta


def _check_meta(meta: Any) -> None:
    if not isinstance(meta, dict):
        raise CheckpointError(f"layout entry {meta!r} is not a mapping")
    kind = meta.get("kind")
    if kind not in ("lords", "blockwise"):
        raise CheckpointError(f"kind {kind!r} is not 'lords' or 'blockwise'")
    size = "rank" if kind == "lords" else "block_size"
    for key in ("in_features", "out_features", size):
        value = meta.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CheckpointError(f"{key}={value!r} is not a positive integer")
    if meta.get("bits") not in SUPPORTED_BITS:
        raise CheckpointError(f"bits={meta.get('bits')!r} is not one of {SUPPORTED_BITS}")
    if meta.get("dtype") not in DTYPES:
        raise CheckpointError(f"dtype={meta.get('dtype')!r} is not one of {tuple(DTYPES)}")
    if not isinstance(meta.get("bias"), bool):
        raise CheckpointError(f"bias={meta.get('bias')!r} is not true or false")


def module_from_meta(meta: dict[str, Any], name: str = "?") -> QuantizedLinear:
    """An empty quantized module (zeros) of the layout ``meta`` describes; the state dict fills it.
    Built on the current default device (``meta`` inside ``from_pretrained``). A malformed entry is a
    ``CheckpointError`` naming the module."""
    try:
        _check_meta(meta)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint module {name!r}: malformed layout: {e}") from None
    dtype = DTYPES[meta["dtype"]]
    grid = torch.zeros(2 ** meta["bits"])
    bias = torch.zeros(meta["out_features"], dtype=dtype) if meta["bias"] else None
    if meta["kind"] == "lords":
        return LoRDSLinear(meta["in_features"], meta["out_features"], meta["rank"], meta["bits"], grid, bias, dtype)
    return BlockLinear(meta["in_features"], meta["out_features"], meta["block_size"], meta["bits"], grid, bias, dtype)


def expected_shapes(meta: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """``{tensor suffix: shape}`` that a module of layout ``meta`` stores."""
    n, m, bits = meta["out_features"], meta["in_features"], meta["bits"]
    out = {"qweight": (n, packed_width(m, bits)), "grid": (2**bits,)}
    if meta["kind"] == "lords":
        out.update(B=(n, meta["rank"]), A=(meta["rank"], m))
    else:
        out["scales"] = (n, -(-m // meta["block_size"]))
    if meta["bias"]:
        out["bias"] = (n,)
    return out


def check_layout(modules: Any, stored: dict[str, tuple[int, ...]]) -> None:
    """Every layout entry well formed and matching the stored tensors' shapes (a ``bits`` or ``rank`` that
    contradicts them is refused here, naming the module, before anything loads)."""
    if not isinstance(modules, dict) or not modules:
        raise CheckpointError(f"quantization_config.modules is {type(modules).__name__}, not a non-empty mapping")
    for name, meta in modules.items():
        try:
            _check_meta(meta)
        except CheckpointError as e:
            raise CheckpointError(f"checkpoint module {name!r}: malformed layout: {e}") from None
        for suffix, shape in expected_shapes(meta).items():
            key = f"{name}.{suffix}"
            if key not in stored:
                raise CheckpointError(f"checkpoint module {name!r}: tensor {suffix!r} missing from the shards")
            if stored[key] != shape:
                raise CheckpointError(f"checkpoint module {name!r}: layout {meta} expects {suffix} of shape {shape}, "
                                      f"the shard holds {stored[key]} (bits, rank or sizes contradict the tensors)")


def layout(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: module_meta}`` of every quantized module of ``model``."""
    return {name: module_meta(m) for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def install_layout(model: nn.Module, modules: dict[str, dict[str, Any]]) -> nn.Module:
    """Replace each named ``nn.Linear`` of ``model`` by an empty quantized module of the saved layout."""
    for name, meta in modules.items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"checkpoint module {name!r} does not exist in {type(model).__name__}: "
                                  "wrong architecture") from None
        shape = (meta["out_features"], meta["in_features"])
        if not isinstance(old, (nn.Linear, QuantizedLinear)) or (old.out_features, old.in_features) != shape:
            raise CheckpointError(f"checkpoint module {name!r} is {shape} but the model has {old}: wrong architecture")
        model.set_submodule(name, module_from_meta(meta, name))
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


def verify_folder(path: str | os.PathLike, qc: dict[str, Any] | None = None) -> dict[str, str]:
    """Check a lords folder's shards (hashes) and layout (shapes) without building a model; returns the manifest."""
    qc = read_quantization_config(path) if qc is None else qc
    files = shard_files(Path(path))
    manifest = verify(files, qc.get("manifest_sha256"))
    check_layout(qc.get("modules"), shapes(files))
    return manifest


def save_quantized(model: nn.Module, path: str | os.PathLike, config=None, extra: dict | None = None,
                   max_shard_size: int | str = "2GB") -> Path:
    """Write a quantized transformers model to the folder ``path`` (``save_pretrained`` through the lords
    quantizer); returns it. The folder is written beside and swapped in whole: a failed save leaves the
    previous one intact. ``config``: the lords config (default: what ``quantize_`` recorded on the model)."""
    if not any(isinstance(m, QuantizedLinear) for m in model.modules()):
        raise CheckpointError("the model holds no quantized module: call quantize_ before save_quantized")
    if not hasattr(model, "save_pretrained"):
        raise CheckpointError(f"{type(model).__name__} is not a transformers model: the checkpoint is a "
                              "transformers folder (config.json + safetensors)")
    from .hf import attach

    config = config if config is not None else getattr(model, "lords_config", None)
    if config is None:
        raise CheckpointError("no lords config: pass config= (the model was not quantized by quantize_)")
    attach(model, config, extra)
    path = Path(path)
    tmp, old = path.with_name(f".{path.name}.tmp{os.getpid()}"), path.with_name(f".{path.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_quantized(path: str | os.PathLike, model: nn.Module | None = None, device="cpu") -> tuple[nn.Module, Any]:
    """Rebuild a saved quantized model: returns ``(model, config)``. Needs no float weights.

    Without ``model``: ``AutoModelForCausalLM.from_pretrained(path)`` (the quantizer builds the quantized modules
    on the meta device). With ``model`` (an instance of the saved architecture): its linears are replaced by the
    saved layout and the shards are loaded into it.
    """
    qc = read_quantization_config(path)
    try:
        config = config_from_dict(qc.get("config") or {})
    except LordsError as e:
        raise CheckpointError(f"{path}: quantization_config.config is malformed ({e})") from e
    if model is None:
        from transformers import AutoModelForCausalLM

        from . import hf  # noqa: F401  (registers quant_method "lords")

        model = AutoModelForCausalLM.from_pretrained(path, device_map=device)
        return model.eval(), config
    verify_folder(path, qc)
    install_layout(model, qc["modules"])
    from safetensors.torch import load_file

    state = {}
    for file in shard_files(Path(path)):
        state.update(load_file(str(file)))
    result = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"checkpoint does not fit the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    if tied and hasattr(model, "tie_weights"):
        model.tie_weights()
    model.lords_config = config
    from .hf import attach

    attach(model, config, qc.get("extra"), manifest_sha256=qc.get("manifest_sha256"))
    return model.to(device).eval(), config
