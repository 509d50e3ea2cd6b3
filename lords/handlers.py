"""The quantizer registry: a config's *type* picks the handler that turns one linear layer into its quantized module.

``register_handler(LordsConfig)`` → LoRDS, ``register_handler(BlockwiseConfig)`` → block scales (both below);
``lords.loftq`` and ``lords.qat`` register theirs beside their code. A new method is one config class, one handler
and, to be saved, one module class with a registered layout (``lords.layouts``). A method whose layer is
``codes ⊙ S(θ)`` registers a :class:`ScaleMethod` and gets Algorithm 1, QAT and the Lightning refine stage with it.
``lords.quantize.quantize_`` walks a model and calls these handlers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .blockwise import check_weight
from .config import BlockwiseConfig, LordsConfig, QuantConfig
from .errors import ConfigError, NumericsError
from .grids import make_grid
from .linear import BlockLinear, LoRDSLinear
from .refine import LayerStats, RefineResult, refine
from .report import LayerReport
from .scales import BlockScale, LowRankScale

Handler = Callable[[str, nn.Module, QuantConfig, "LayerStats | None"], "tuple[nn.Module, LayerReport]"]
"""``fn(name, module, leaf config, calibration stats or None) -> (quantized module, its LayerReport)``."""


@dataclass(frozen=True)
class _Registered:
    handler: Handler
    accepts: Callable[[nn.Module, QuantConfig], bool]


_HANDLERS: dict[type, _Registered] = {}


def _is_plain_linear(module: nn.Module, config: QuantConfig) -> bool:
    return type(module) is nn.Linear


def register_handler(config_type: type, accepts: Callable[[nn.Module, QuantConfig], bool] = _is_plain_linear):
    """Decorator: ``fn(name, module, config, stats) -> (new_module, LayerReport)`` quantizes the modules
    that ``accepts(module, config)`` (default: plain ``nn.Linear``) for configs of type ``config_type``."""

    def wrap(fn: Handler) -> Handler:
        _HANDLERS[config_type] = _Registered(fn, accepts)
        return fn

    return wrap


def registered(config: QuantConfig) -> _Registered:
    """The registry entry of ``type(config)``, refused with the registered types named."""
    entry = _HANDLERS.get(type(config))
    if entry is None:
        raise ConfigError(
            f"no quantizer registered for config type {type(config).__name__} "
            f"(registered: {sorted(t.__name__ for t in _HANDLERS)})"
        )
    return entry


def handler_for(config: QuantConfig) -> Handler:
    """The handler registered for ``type(config)``, refused with the registered types named."""
    return registered(config).handler


def layer_report(name: str, weight: torch.Tensor, module: nn.Module, result: RefineResult | None = None) -> LayerReport:
    """Errors of ``module.dequantized_weight()`` against ``weight``, floats stored, the refinement curve."""
    # float64: a float32 weight near its range (1e38) squares past float32's, which would report inf / nan
    w = weight.detach().double()
    w_hat = module.dequantized_weight().to(w.device, torch.float64)
    if not torch.isfinite(w_hat).all():
        raise NumericsError(f"{name}: the quantized weight is not finite (weights beyond what its scales can hold)")
    err = (w - w_hat).pow(2).sum()
    return LayerReport(
        name,
        tuple(w.shape),
        float(err),
        float(w.pow(2).sum()),
        module.float_params(),
        getattr(module, "rank", None),
        [] if result is None else result.losses,
        getattr(module, "bits", None),
    )


@dataclass(frozen=True)
class ScaleMethod:
    """A quantizer whose layer is ``grid[Q] ⊙ S(θ)``: how to start the scale module from a weight, and how to
    build the layer from a weight and a scale. As a handler: init, Algorithm 1 when ``config.refine`` is set,
    build, report."""

    init_scale: Callable[[torch.Tensor, QuantConfig, str], nn.Module]
    """``(weight (n, m), config, layer name) -> scale module`` (see ``lords.scales``)."""
    build: Callable[[torch.Tensor, nn.Module, QuantConfig, torch.Tensor, torch.Tensor | None], nn.Module]
    """``(weight, scale, config, grid, bias) -> quantized module``."""

    def start(self, name: str, linear: nn.Linear, config):
        """``(weight, grid, initial scale)`` of a layer."""
        weight = linear.weight.detach()
        check_weight(weight, f"{name}.weight")
        grid = make_grid(config.grid, config.bits).to(weight.device)
        return weight, grid, self.init_scale(weight, config, name)

    def __call__(self, name: str, linear: nn.Linear, config, stats: LayerStats | None):
        weight, grid, scale = self.start(name, linear, config)
        result = None
        if config.refine is not None and config.refine.steps > 0:
            result = refine(weight, scale, grid, config.refine, stats)
        return self.complete(name, linear, config, weight, grid, scale, result)

    def complete(self, name, linear, config, weight, grid, scale, result: RefineResult | None):
        """The quantized layer from a (refined) scale, and its report."""
        if not all(torch.isfinite(p).all() for p in scale.parameters()):
            raise NumericsError(f"{name}: scales became non-finite (lower refine.lr?)")
        bias = None if linear.bias is None else linear.bias.detach()
        module = self.build(weight, scale, config, grid, bias)
        return module, layer_report(name, weight, module, result)


def scale_method(config: QuantConfig) -> ScaleMethod:
    """The :class:`ScaleMethod` of a leaf config (refused for methods that have no trainable scale)."""
    handler = handler_for(config)
    if not isinstance(handler, ScaleMethod):
        raise ConfigError(
            f"{type(config).__name__} is not a codes-times-scales method: it cannot be refined or trained"
        )
    return handler


register_handler(LordsConfig)(
    ScaleMethod(
        init_scale=lambda w, c, name: LowRankScale.from_weight(w, c.block_size, c.rank_for(*w.shape), where=name),
        build=LoRDSLinear.from_scale,
    )
)
register_handler(BlockwiseConfig)(
    ScaleMethod(init_scale=lambda w, c, name: BlockScale.from_weight(w, c.block_size), build=BlockLinear.from_scale)
)
