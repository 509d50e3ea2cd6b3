"""Bit allocation per decoder layer from measured sensitivity, at a given average of code bits.

LoftQ's rule (``MixedPrecisionConfig``) gives the high width to the first layers, whatever they hold. Here each decoder
layer is scored by what dropping it from ``high`` to ``low`` bits costs in the error its inputs see,

    gain_i = Σ_{linears of layer i} Σ_j E[x_j²] · (‖W_:j − Ŵ_low,:j‖² − ‖W_:j − Ŵ_high,:j‖²),

with ``Ŵ`` the block-wise absmax quantization on the base config's grid and block size (a cheap, data-aware proxy of
the output error ``E‖(W − Ŵ)x‖²`` under a diagonal input covariance). Layers are taken in order of gain per extra
bit·weight until the budget ``bits × weights`` is spent; with equal layers this picks as many layers as LoftQ's rule.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .blockwise import dequantize, expand_blocks, quantize_blockwise
from .config import ScaleConfig
from .errors import ConfigError
from .grids import make_grid
from .layerwise import LayerwiseConfig, decoder_layer_index, num_decoder_layers
from .refine import LayerStats


def weighted_error(weight: torch.Tensor, diag: torch.Tensor, grid_name: str, bits: int, block_size: int) -> float:
    """``Σ_j diag_j ‖W_:j − Ŵ_:j‖²`` of block-wise absmax quantization; ``weight (n, m)``, ``diag (m,)``."""
    w = weight.detach().float()
    codes, scales = quantize_blockwise(w, make_grid(grid_name, bits).to(w.device), block_size)
    w_hat = dequantize(codes, expand_blocks(scales, w.shape[1], block_size), make_grid(grid_name, bits).to(w.device))
    return float(((w - w_hat) ** 2 * diag.to(w.device).float()).sum())


def layer_gains(
    model: nn.Module, base: ScaleConfig, stats: dict[str, LayerStats], high: int = 4, low: int = 2
) -> dict[int, tuple[float, int]]:
    """``{decoder layer: (gain of keeping it at high bits, weights it holds)}`` over the linears in ``stats``."""
    gains: dict[int, list] = {}
    for name, st in stats.items():
        index = decoder_layer_index(name)
        if index is None:
            continue
        w = model.get_submodule(name).weight
        gain = weighted_error(w, st.diag, base.grid, low, base.block_size) - weighted_error(
            w, st.diag, base.grid, high, base.block_size
        )
        entry = gains.setdefault(index, [0.0, 0])
        entry[0] += gain
        entry[1] += w.numel()
    return {i: (g, n) for i, (g, n) in sorted(gains.items())}


def allocate_bits(
    model: nn.Module, base: ScaleConfig, bits: float, stats: dict[str, LayerStats], high: int = 4, low: int = 2
) -> LayerwiseConfig:
    """A ``LayerwiseConfig`` giving ``high`` bits to the decoder layers where they buy the most, ``low`` elsewhere,
    with average code bits over the decoder's linears at most ``bits`` (``stats``: calibration statistics of them)."""
    if not low <= bits <= high:
        raise ConfigError(f"bits={bits} must lie between low={low} and high={high}")
    gains = layer_gains(model, base, stats, high, low)
    if len(gains) < num_decoder_layers(model):
        missing = sorted(set(range(num_decoder_layers(model))) - set(gains))
        raise ConfigError(f"no calibration statistics for decoder layers {missing[:5]}")
    total = sum(n for _, n in gains.values())
    budget, spent, chosen = (bits - low) * total, 0.0, []
    for i in sorted(gains, key=lambda i: -gains[i][0] / gains[i][1]):
        cost = (high - low) * gains[i][1]
        if spent + cost <= budget * (1 + 1e-9):
            chosen.append(i)
            spent += cost
    high_cfg, low_cfg = dataclasses.replace(base, bits=high), dataclasses.replace(base, bits=low)
    rules = tuple((rf"\.(?:layers|h|blocks)\.{i}\.", high_cfg) for i in sorted(chosen))
    return LayerwiseConfig(
        rules=rules, default=low_cfg, calib_tokens=base.calib_tokens, sample_tokens=base.sample_tokens, seed=base.seed
    )
