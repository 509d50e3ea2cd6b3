"""QAT through the verb: ``quantize_(model, QATConfig(base, "prepare"))``, train, then
``quantize_(model, QATConfig(base, "convert"))``.

``prepare`` swaps each selected ``nn.Linear`` for a ``QATLinear``: a latent weight ``W`` (the float weight)
and the scale module of ``base``'s method (``B, A`` from the SVD init for LoRDS, absmax block scales for the
block-wise baseline; refined first by Algorithm 1 when ``base`` sets ``refine``, so that QAT starts from the PTQ
model: pass ``calib_ids`` to ``quantize_`` for a calibrated objective), trained jointly through the rounding with a
straight-through estimator on ``u = W ⊘ S``: forward ``S ⊙ grid[code(u)]``, backward ``∂/∂W = 1`` and ``∂/∂S = grid[code(u)] − u`` (LSQ's
scale gradient). ``convert`` builds the method's quantized layer (``LoRDSLinear`` in ``base.scale_dtype``,
``BlockLinear``) from the trained latent weight and scales.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .blockwise import safe_scale
from .config import QuantConfig, ScaleConfig, check_choice
from .errors import ConfigError
from .grids import nearest_code
from .handlers import ScaleMethod, layer_report, register_handler, scale_method

STEPS = ("prepare", "convert")


@dataclass(frozen=True)
class QATConfig(QuantConfig):
    """QAT of ``base``'s method (any codes-times-scales method: LoRDS, block-wise) in two steps of ``quantize_``."""

    base: QuantConfig = None
    """What the model becomes after ``convert`` (a leaf or composite config, e.g. mixed precision)."""
    step: str = "prepare"
    """'prepare' (nn.Linear → QATLinear) or 'convert' (QATLinear → the quantized layer)."""

    method: ClassVar[str] = "qat"

    def __post_init__(self):
        if not isinstance(self.base, QuantConfig):
            raise ConfigError(f"base={self.base!r} must be a quantization config such as LordsConfig")
        check_choice("step", self.step, STEPS)
        for leaf in self.base.leaves():
            scale_method(leaf)  # refuses methods without a trainable scale, now

    def config_for(self, name, layer_index=None, num_layers=0):
        leaf = self.base.config_for(name, layer_index, num_layers)
        return None if leaf is None else _LayerQAT(leaf, self.step)

    def leaves(self):
        return self.base.leaves()

    def resolve(self, model, calib_ids=None):
        return QATConfig(self.base.resolve(model, calib_ids), self.step)

    @property
    def stored_config(self):
        return self.base

    @property
    def needs_calibration(self) -> bool:
        """'prepare' of a config whose refinement is calibrated: QAT starts from Algorithm 1's scales."""
        return self.step == "prepare" and self.base.needs_calibration

    @property
    def calibration(self):
        return self.base.calibration


@dataclass(frozen=True)
class _LayerQAT(QuantConfig):
    """What ``QATConfig`` hands one layer: its leaf config and the step."""

    leaf: ScaleConfig
    step: str

    @property
    def seed(self) -> int:
        return self.leaf.seed

    @property
    def refine(self):
        """The leaf's Algorithm 1 at 'prepare' (QAT starts from the refined PTQ scales), none at 'convert'."""
        return getattr(self.leaf, "refine", None) if self.step == "prepare" else None

    @property
    def needs_calibration(self) -> bool:
        return self.refine is not None and self.refine.needs_calibration


class FakeQuantize(torch.autograd.Function):
    """``Ŵ = S ⊙ (u + sg(q − u))`` with ``u = W ⊘ S`` (zeros of ``S`` divided by 1) and ``q = grid[code(u)]``: the
    straight-through fake quantization. Its values and gradients are autograd's on that expression, op for op and bit
    for bit, bf16 ``S`` (autocast) included (``∂W = g·S ⊘ S``, ``∂S = g ⊙ v − [S ≠ 0]·(g·S) ⊙ (u ⊘ S)``, each term
    rounded to ``S``'s dtype, ``v = u + (q − u)``), but backward keeps only ``S`` and the codes (5 bytes per weight
    with float32 ``S``) where autograd kept ``S``, the zero-safe ``S``, ``v`` and the zero mask (13): it recomputes
    the rest. ``W (n, m)`` float32, ``S (n, m)`` float32 or bf16, ``grid (2^bits,)``."""

    @staticmethod
    def forward(ctx, W, S, grid):
        u = W / safe_scale(S)
        codes = nearest_code(u, grid)
        q = grid[codes.long()]
        ctx.save_for_backward(W, S, codes, grid)
        return S * (u + (q - u))

    @staticmethod
    def backward(ctx, g):
        W, S, codes, grid = ctx.saved_tensors
        zero = S == 0
        safe = safe_scale(S)
        gS = g * S
        dW = gS / safe if ctx.needs_input_grad[0] else None
        dS = None
        if ctx.needs_input_grad[1]:
            u = W / safe
            v = u + (grid[codes.long()] - u)
            # each term in S's dtype before the sum, as autograd casts each edge's gradient (S is bf16 under autocast)
            dS = (g * v).to(S.dtype) + torch.where(zero, torch.zeros_like(S), (-gS * (u / safe)).to(S.dtype))
        return dW, dS, None


class QATLinear(nn.Module):
    """Latent ``weight (out, in)`` and a scale module ``scale()`` → ``S (out, in)``; forward on the fake-quantized
    weight. ``config`` is the leaf config the layer converts to; ``scale`` where PTQ left it (the method's init, or
    Algorithm 1's refinement of it when the config refines: QAT then starts from the PTQ model)."""

    def __init__(
        self,
        weight: torch.Tensor,
        scale: nn.Module,
        config: ScaleConfig,
        grid: torch.Tensor,
        bias: torch.Tensor | None = None,
        name: str = "",
    ):
        super().__init__()
        self.config, self.name = config, name
        self.out_features, self.in_features = weight.shape
        self.bits = config.bits
        self.register_buffer("grid", grid.to(weight.device))
        self.scale = scale
        self.weight = nn.Parameter(weight.detach().float().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone())

    @property
    def rank(self) -> int | None:
        B = getattr(self.scale, "B", None)
        return None if B is None else B.shape[1]

    def fake_quantized(self) -> torch.Tensor:
        return FakeQuantize.apply(self.weight, self.scale(), self.grid)

    def dequantized_weight(self) -> torch.Tensor:
        return self.fake_quantized().detach()

    def float_params(self) -> int:
        return sum(p.numel() for p in self.scale.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fake_quantized().to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))


def _accepts(module: nn.Module, config: _LayerQAT) -> bool:
    return type(module) is (nn.Linear if config.step == "prepare" else QATLinear)


@dataclass(frozen=True)
class _QATHandler(ScaleMethod):
    """'prepare' is the leaf method's PTQ with a ``QATLinear`` built instead of the quantized layer: the leaf's init,
    Algorithm 1 when it refines (stacked over same-shape layers on a GPU, as PTQ does), then latent weight + scale.
    'convert' builds the leaf method's quantized layer from the trained weight and scale."""

    def start(self, name: str, linear: nn.Linear, config: _LayerQAT):
        return scale_method(config.leaf).start(name, linear, config.leaf)

    def __call__(self, name: str, module: nn.Module, config: _LayerQAT, stats=None):
        return (
            super().__call__(name, module, config, stats)
            if config.step == "prepare"
            else _convert(name, module, config)
        )


def _qat_layer(weight, scale, config: _LayerQAT, grid, bias):
    return QATLinear(weight, scale, config.leaf, grid, bias).to(weight.device)


def _convert(name: str, module: QATLinear, config: _LayerQAT):
    """``QATLinear`` → the leaf method's quantized layer (the convert config decides storage, e.g.
    ``LordsConfig.scale_dtype``; the trained scales the values)."""
    if type(config.leaf) is not type(module.config) or config.leaf.bits != module.bits:
        raise ConfigError(
            f"{name}: prepared as {type(module.config).__name__} at {module.bits} bits, "
            f"cannot convert to {type(config.leaf).__name__} at {config.leaf.bits} bits"
        )
    with torch.no_grad():
        bias = None if module.bias is None else module.bias.detach()
        new = scale_method(config.leaf).build(module.weight.detach(), module.scale, config.leaf, module.grid, bias)
    return new, layer_report(name, module.weight, new)


register_handler(_LayerQAT, accepts=_accepts)(_QATHandler(init_scale=None, build=_qat_layer))
