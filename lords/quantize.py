"""``quantize_(model, config)``: swap every selected ``nn.Linear`` for its quantized module, in place.

The config's type picks the handler through a registry (``LordsConfig`` → LoRDS, ``BlockwiseConfig`` →
block scales). Each handler quantizes one weight and returns the new module plus its error.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .blockwise import block_absmax, check_weight, double_dequantize, double_quantize, expand_blocks, quantize_with_scale
from .calibration import collect_stats
from .config import BlockwiseConfig, LordsConfig, _QuantConfig
from .errors import ConfigError, NumericsError, UnsupportedModuleError
from .grids import make_grid
from .linear import BlockLinear, LoRDSLinear
from .lowrank import svd_init
from .refine import BlockScale, LayerStats, LowRankScale, RefineResult, refine

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LayerReport:
    """One layer's outcome: squared error ``‖W − Ŵ‖²_F``, ``‖W‖²_F``, floats stored, refinement curve."""

    name: str
    shape: tuple[int, int]
    sq_error: float
    sq_norm: float
    float_params: int
    rank: int | None = None
    losses: list[float] = field(default_factory=list)


@dataclass
class QuantizeReport:
    layers: list[LayerReport] = field(default_factory=list)

    @property
    def rel_error(self) -> float:
        """``sqrt(Σ‖W − Ŵ‖² / Σ‖W‖²)`` over all quantized layers."""
        return (sum(l.sq_error for l in self.layers) / max(sum(l.sq_norm for l in self.layers), 1e-30)) ** 0.5

    @property
    def frob_error(self) -> float:
        """``Σ ‖W − Ŵ‖_F`` over layers (the paper's 'quantization error' convention)."""
        return sum(l.sq_error**0.5 for l in self.layers)

    @property
    def float_params(self) -> int:
        return sum(l.float_params for l in self.layers)


Handler = Callable[[str, nn.Linear, _QuantConfig, LayerStats | None], tuple[nn.Module, LayerReport]]
_HANDLERS: dict[type, Handler] = {}


def register_handler(config_type: type):
    """Decorator: ``fn(name, linear, config, stats) -> (module, report)`` handles ``config_type``."""

    def wrap(fn: Handler) -> Handler:
        _HANDLERS[config_type] = fn
        return fn

    return wrap


def _bias(linear: nn.Linear):
    return None if linear.bias is None else linear.bias.detach()


def _report(name, weight, module, result: RefineResult | None, rank=None) -> LayerReport:
    w = weight.detach().float()
    err = (w - module.dequantized_weight().to(w.device)).pow(2).sum()
    return LayerReport(name, tuple(w.shape), float(err), float(w.pow(2).sum()), module.float_params(), rank,
                       [] if result is None else result.losses)


@register_handler(LordsConfig)
def quantize_lords(name: str, linear: nn.Linear, config: LordsConfig, stats: LayerStats | None):
    """SVD init from block absmax scales, then (optionally) Algorithm 1 on ``B, A``."""
    weight = linear.weight.detach()
    check_weight(weight, f"{name}.weight")
    grid = make_grid(config.grid, config.bits).to(weight.device)
    B, A = svd_init(weight, config.block_size, config.rank, where=name)
    result = None
    if config.refine is not None and config.refine.steps > 0:
        scale = LowRankScale(B, A)
        result = refine(weight, scale, grid, config.refine, stats)
        B, A, codes = scale.B.detach(), scale.A.detach(), result.codes
    else:
        codes = quantize_with_scale(weight.float(), B @ A, grid)
    if not (torch.isfinite(B).all() and torch.isfinite(A).all()):
        raise NumericsError(f"{name}: LoRDS scales became non-finite (lower refine.lr?)")
    module = build_lords_linear(B, A, codes, config, grid, _bias(linear))
    return module, _report(name, weight, module, result, module.rank)


def build_lords_linear(B: torch.Tensor, A: torch.Tensor, codes: torch.Tensor, config: LordsConfig,
                       grid: torch.Tensor, bias: torch.Tensor | None) -> LoRDSLinear:
    """A ``LoRDSLinear`` holding ``codes (n, m)`` packed and ``B (n, r)``, ``A (r, m)`` in ``config.scale_dtype``."""
    dtype = _DTYPES[config.scale_dtype]
    (n, r), m = B.shape, A.shape[1]
    module = LoRDSLinear(m, n, r, config.bits, grid, bias, dtype=dtype).to(B.device)
    module.B.data.copy_(B.to(dtype))
    module.A.data.copy_(A.to(dtype))
    module.set_codes(codes)
    return module


def build_block_linear(weight: torch.Tensor, scales: torch.Tensor, config: BlockwiseConfig, grid: torch.Tensor,
                       bias: torch.Tensor | None) -> BlockLinear:
    """A ``BlockLinear`` with block ``scales (n, nb)`` (after an int8 round trip if ``config.double_quant``)
    and the nearest codes of ``weight (n, m)`` under them."""
    n, m = weight.shape
    if config.double_quant:
        # Scales are stored after an int8 round trip, so quality reflects double quantization.
        scales = double_dequantize(*double_quantize(scales), shape=scales.shape).to(weight.device)
    module = BlockLinear(m, n, config.block_size, config.bits, grid, bias).to(weight.device)
    module.scales.data.copy_(scales)
    module.set_codes(quantize_with_scale(weight.float(), expand_blocks(scales, m, config.block_size), grid))
    return module


@register_handler(BlockwiseConfig)
def quantize_blockwise_layer(name: str, linear: nn.Linear, config: BlockwiseConfig, stats: LayerStats | None):
    """Absmax block scales, then (optionally) Algorithm 1 on the block scales themselves."""
    weight = linear.weight.detach()
    check_weight(weight, f"{name}.weight")
    n, m = weight.shape
    grid = make_grid(config.grid, config.bits).to(weight.device)
    scales = block_absmax(weight, config.block_size)
    result = None
    if config.refine is not None and config.refine.steps > 0:
        scale = BlockScale(scales, m, config.block_size)
        result = refine(weight, scale, grid, config.refine, stats)
        scales = scale.scales.detach()
    module = build_block_linear(weight, scales, config, grid, _bias(linear))
    return module, _report(name, weight, module, result)


def select_linears(model: nn.Module, config: _QuantConfig, filter_fn=None) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules ``quantize_`` would replace, by qualified name, in model order."""
    chosen = {}
    for name, module in model.named_modules():
        if type(module) is not nn.Linear:
            continue
        if config.include and not any(s in name for s in config.include):
            continue
        if any(s in name for s in config.exclude):
            continue
        if filter_fn is not None and not filter_fn(module, name):
            continue
        chosen[name] = module
    return chosen


def _progress(items, desc: str, enabled: bool):
    if enabled and importlib.util.find_spec("tqdm") is not None:
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc, unit="layer")
    return items


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantize_(
    model: nn.Module,
    config: _QuantConfig,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    calib_ids: torch.Tensor | None = None,
    stats: dict[str, LayerStats] | None = None,
    progress: bool = True,
    resume_dir: str | os.PathLike | None = None,
) -> QuantizeReport:
    """Quantize ``model`` in place with ``config``; returns per-layer errors and float counts.

    ``calib_ids (1, T)`` is required when the refinement objective needs activations (statistics are
    collected from the float model before any layer is replaced), unless ``stats`` are given.
    ``resume_dir``: each finished layer is saved there, and a rerun picks up after the last one.
    """
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise ConfigError(f"no quantizer registered for config type {type(config).__name__}")
    linears = select_linears(model, config, filter_fn)
    if not linears:
        kinds = sorted({type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__})
        raise UnsupportedModuleError(
            f"no nn.Linear to quantize in {type(model).__name__} (include={config.include}, "
            f"exclude={config.exclude}; linear-like modules found: {kinds or 'none'})"
        )
    if config.needs_calibration and stats is None:
        if calib_ids is None:
            raise ConfigError(f"refine.objective={config.refine.objective!r} needs calib_ids (calibration tokens)")
        stats = collect_stats(model, calib_ids[:, : config.calib_tokens], linears, config.sample_tokens,
                              seed=config.seed)
    from .resume import LayerJournal

    journal = LayerJournal(resume_dir, config) if resume_dir is not None else None
    report = QuantizeReport()
    for name in _progress(list(linears), f"{config.method} {config.bits}b", progress):
        linear = linears[name]
        done = journal.load(name, linear) if journal else None
        if done is None:
            torch.manual_seed(config.seed)
            done = handler(name, linear, config, None if stats is None else stats.get(name))
            if journal:
                journal.save(name, *done)
        module, layer_report = done
        _set_module(model, name, module)
        report.layers.append(layer_report)
    return report
