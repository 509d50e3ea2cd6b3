"""Adapters for evaluation and the QLoRA baseline: peft's LoRA on the block-wise base, and one loader for both kinds.

- ``add_lora``: the QLoRA baseline's additive LoRA (peft) on every quantized module.
- ``load_lora``: a saved LoRA adapter (peft's folder) onto a lords base loaded from its folder, for evaluation.
- ``load_adapter``: either kind by its ``peft_type``: ``LORDS`` (only ``B, A``; ``lords.load_adapter``) or ``LORA``.

peft has no dispatcher for ``BlockLinear`` / ``LoRDSLinear``; its generic ``lora.Linear`` only calls the base layer's
forward and adds ``B·A·x``, so it is registered as their LoRA layer through ``LoraConfig._register_custom_module``
(peft's documented, experimental custom-module API), when the adapter is made and again when it is loaded.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import nn

from lords.adapter import read_adapter_config
from lords.errors import CheckpointError
from lords.linear import BlockLinear, LoRDSLinear, QuantizedLinear
from lords.lowrank import parity_rank


def matched_lora_ranks(model: nn.Module, block_size: int) -> dict[str, int]:
    """Per quantized layer, LoRDS's parity rank at ``block_size``: a LoRA of that rank has ``r·(n+m)``
    trainable floats, exactly the ``B, A`` floats LoRDS trains on the same layer."""
    return {
        name: parity_rank(m.out_features, m.in_features, block_size)
        for name, m in model.named_modules()
        if isinstance(m, QuantizedLinear)
    }


def _register(cfg) -> None:
    from peft.tuners.lora.layer import Linear as LoraLinear

    cfg._register_custom_module({BlockLinear: LoraLinear, LoRDSLinear: LoraLinear})


def add_lora(model: nn.Module, ranks: dict[str, int], alpha_ratio: float = 2.0, seed: int = 0) -> nn.Module:
    """QLoRA baseline: an additive LoRA (peft) on every quantized module, rank per layer from ``ranks``.
    Merging is not supported (and not needed: the baseline keeps the adapter path at inference, as QLoRA does)."""
    from peft import LoraConfig, get_peft_model

    ranks = {k: v for k, v in ranks.items() if v > 0}
    default = max(ranks.values())
    # Anchored full names: peft matches rank_pattern keys as regexes against module names.
    pattern = {f"^{k.replace('.', '[.]')}$": v for k, v in ranks.items()}
    alpha = {k: alpha_ratio * v for k, v in pattern.items()}
    cfg = LoraConfig(
        r=default,
        lora_alpha=alpha_ratio * default,
        target_modules=list(ranks),
        rank_pattern=pattern,
        alpha_pattern=alpha,
        lora_dropout=0.0,
        bias="none",
    )
    _register(cfg)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unsupported layer type")
        return get_peft_model(model, cfg)


def load_lora(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """A peft LoRA adapter folder onto ``model`` (e.g. the QLoRA baseline's, onto its block-wise lords base);
    returns the ``PeftModel``, in eval mode."""
    from peft import LoraConfig, PeftModel

    cfg = LoraConfig.from_pretrained(str(path))
    _register(cfg)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unsupported layer type")
        return PeftModel.from_pretrained(model, str(path), config=cfg).eval()


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """A LoRDS (``B, A``) or LoRA adapter folder onto ``model``, by its ``peft_type``."""
    kind = read_adapter_config(path).get("peft_type")
    if kind == "LORDS":
        from lords.adapter import load_adapter as load_lords

        return load_lords(model, path)
    if kind == "LORA":
        return load_lora(model, path)
    raise CheckpointError(f"{path}: peft_type {kind!r} is neither LORDS nor LORA")
