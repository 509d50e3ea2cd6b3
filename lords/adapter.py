"""PEFT adapters of LoRDS: after PEFT only ``B, A`` changed, so only they are saved, beside the hash of the base.

An adapter folder follows peft's layout (``adapter_config.json`` with ``peft_type: "LORDS"``,
``adapter_model.safetensors`` with keys ``base_model.model.<module>.B`` / ``.A``). Its config records the
SHA-256 of the base checkpoint's manifest (``quantization_config.manifest_sha256``: it pins every tensor of the
base, codes included); loading onto a model whose base hash differs is refused, since ``B, A`` only mean
something next to the codes ``Q`` they were trained with.

    model = AutoModelForCausalLM.from_pretrained(base_dir)         # a lords folder
    lords.mark_only_scales_trainable(model); train(model)
    lords.save_adapter(model, "my-task")                            # a few MB: B, A and the base hash
    model = lords.load_adapter(AutoModelForCausalLM.from_pretrained(base_dir), "my-task")
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError
from .folder import read_quantization_config
from .integrity import atomic_write_bytes, manifest_json, tensor_digest, text_digest
from .linear import LoRDSLinear
from .version import __version__

PEFT_TYPE = "LORDS"
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."


def base_digest(model: nn.Module) -> str | None:
    """The manifest SHA-256 of the lords checkpoint ``model`` was loaded from (or last saved to)."""
    qc = getattr(getattr(model, "config", None), "quantization_config", None)
    return qc.get("manifest_sha256") if isinstance(qc, dict) else getattr(qc, "manifest_sha256", None)


def _layers(model: nn.Module) -> dict[str, LoRDSLinear]:
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoRDSLinear)}
    if not layers:
        raise CheckpointError("the model has no LoRDSLinear: a LoRDS adapter holds the B, A of LoRDS layers")
    return layers


def save_adapter(model: nn.Module, path: str | os.PathLike, base: str | os.PathLike | None = None) -> Path:
    """Save the ``B, A`` of every LoRDS layer of ``model`` and the base checkpoint's hash to the folder ``path``.

    ``base``: the base lords folder (default: the checkpoint ``model`` was loaded from)."""
    from safetensors.torch import save  # optional dependency: only saving an adapter needs it

    if base is not None:
        digest = read_quantization_config(base).get("manifest_sha256")
    else:
        digest = base_digest(model)
    if not digest:
        raise CheckpointError(
            "no base checkpoint hash: load the base with from_pretrained / load_quantized (or save "
            "it first), or pass base=<the base lords folder>"
        )
    state = {}
    for name, m in _layers(model).items():
        state[f"{PREFIX}{name}.B"] = m.B.detach().cpu().contiguous()
        state[f"{PREFIX}{name}.A"] = m.A.detach().cpu().contiguous()
    manifest = manifest_json(state)
    config = {
        "peft_type": PEFT_TYPE,
        "task_type": "CAUSAL_LM",
        "target_modules": sorted(_layers(model)),
        "base_model_name_or_path": str(base) if base is not None else getattr(model, "name_or_path", None),
        "base_manifest_sha256": digest,
        "adapter_sha256": text_digest(manifest),
        "library": "lords",
        "library_version": __version__,
    }
    path = Path(path)
    atomic_write_bytes(path / WEIGHTS, save(state, metadata={"format": "pt", "lords_manifest": manifest}))
    atomic_write_bytes(path / CONFIG, json.dumps(config, indent=1).encode())
    return path


def read_adapter_config(path: str | os.PathLike) -> dict:
    cfg_path = Path(path) / CONFIG
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path} not found: {path} is not an adapter folder")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path} is {type(cfg).__name__}, not a JSON object")
    for key in ("base_manifest_sha256", "adapter_sha256"):
        if key in cfg and not isinstance(cfg[key], str):
            raise CheckpointError(f"{cfg_path}: {key} is {type(cfg[key]).__name__}, not a SHA-256 string")
    return cfg


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Copy a LoRDS adapter's ``B, A`` into ``model`` (the base it was trained on); returns ``model``.

    Refused (``CheckpointError``) when the model's base hash differs from the adapter's, when the adapter's
    tensors do not match their hashes, do not cover every LoRDS layer, or a module or shape does not fit; all is
    checked before the first tensor is copied, so a refused adapter leaves ``model`` as it was."""
    cfg = read_adapter_config(path)
    if cfg.get("peft_type") != PEFT_TYPE:
        raise CheckpointError(
            f"{path}: peft_type {cfg.get('peft_type')!r} is not {PEFT_TYPE!r} "
            "(a LoRA adapter loads through peft: lords_pipelines.adapters.load_lora)"
        )
    have = base_digest(model)
    if have != cfg.get("base_manifest_sha256"):
        raise CheckpointError(
            f"{path}: the adapter was trained on base {str(cfg.get('base_manifest_sha256'))[:12]}…, "
            f"this model is base {str(have)[:12]}…: wrong base checkpoint"
        )
    from safetensors import safe_open  # optional dependency: only loading an adapter needs it

    weights = Path(path) / WEIGHTS
    try:
        with safe_open(str(weights), framework="pt") as f:
            text = (f.metadata() or {}).get("lords_manifest", "")
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # missing, truncated or malformed file
        raise CheckpointError(f"{weights} cannot be read as safetensors ({e})") from e
    if text_digest(text) != cfg.get("adapter_sha256"):
        raise CheckpointError(f"{weights}: its manifest is not the one {CONFIG} names")
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{weights}: its manifest is not JSON ({type(e).__name__})") from e
    layers = _layers(model)
    wanted = {f"{PREFIX}{name}.{which}" for name in layers for which in ("B", "A")}
    lacking = sorted(wanted - set(state))
    if lacking or not isinstance(manifest, dict) or set(manifest) != set(state):
        raise CheckpointError(
            f"{weights}: the adapter lacks {lacking[:4] or 'tensors its manifest lists'} of this "
            f"model's {len(layers)} LoRDS layers: it does not cover the base"
        )
    targets = {}
    for key, tensor in state.items():  # every tensor checked before the first is copied: a refusal changes nothing
        if manifest.get(key) != tensor_digest(tensor):
            raise CheckpointError(f"{weights}: tensor {key!r} does not match its SHA-256 (tampered or corrupt)")
        name, _, which = key.removeprefix(PREFIX).rpartition(".")
        if name not in layers or which not in ("A", "B"):
            raise CheckpointError(f"{weights}: {key!r} names no LoRDS layer's B or A in this model")
        target = getattr(layers[name], which)
        if target.shape != tensor.shape:
            raise CheckpointError(
                f"{weights}: {key!r} is {tuple(tensor.shape)}, module {name!r} holds {tuple(target.shape)}"
            )
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise CheckpointError(f"{weights}: {key!r} is not finite floats")
        targets[key] = (target, tensor)
    with torch.no_grad():
        for target, tensor in targets.values():
            target.data.copy_(tensor.to(target.dtype))
    return model
