"""LoftQ-style mixed precision, which the paper compares against: high bits in some decoder layers, low in the rest.

A composite config like ``LayerwiseConfig``: ``quantize_`` asks it for each layer's leaf config. Its 'sensitivity' rule
measures the model first (``lords.allocate``) and resolves into a ``LayerwiseConfig``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from .allocate import allocate_bits
from .calibration import collect_stats
from .config import QuantConfig, ScaleConfig, check_choice
from .errors import ConfigError
from .layerwise import num_decoder_layers
from .quantize import plan

MIXED_BITS = (2.25, 2.5, 3.0)
RULES = ("loftq", "sensitivity")


@dataclass(frozen=True)
class MixedPrecisionConfig(QuantConfig):
    """LoftQ's mixed precision, which the paper compares against: ``high_bits`` in the first
    ``round(L·(bits − low)/(high − low))`` of ``L`` decoder layers, ``low_bits`` in the rest (2.5 bits on 32
    layers: 4 bits in layers 0–7); layers outside the decoder stack get ``low_bits``."""

    base: ScaleConfig = None
    """The leaf config both widths derive from (its ``bits`` is replaced)."""
    bits: float = 2.5
    """Average code bits over the decoder layers: 2.25, 2.5 or 3.0."""
    high_bits: int = 4
    low_bits: int = 2
    rule: str = "loftq"
    """'loftq': high bits in the first layers; 'sensitivity': in the layers where they buy the most error
    (``lords.allocate``; needs calibration tokens, resolved by ``quantize_`` into a ``LayerwiseConfig``)."""

    method: ClassVar[str] = "mixed"

    def __post_init__(self):
        if not isinstance(self.base, ScaleConfig):
            raise ConfigError(f"base={self.base!r} must be a leaf config such as LordsConfig or BlockwiseConfig")
        check_choice("bits", self.bits, MIXED_BITS)
        check_choice("rule", self.rule, RULES)
        if not self.low_bits < self.bits < self.high_bits:
            raise ConfigError(
                f"bits={self.bits} must lie between low_bits={self.low_bits} and high_bits={self.high_bits}"
            )
        for b in (self.high_bits, self.low_bits):
            dataclasses.replace(self.base, bits=b)  # validates both widths now

    def high_layers(self, num_layers: int) -> int:
        """How many leading decoder layers get ``high_bits``."""
        return round(num_layers * (self.bits - self.low_bits) / (self.high_bits - self.low_bits))

    def resolve(self, model, calib_ids=None):
        if self.rule == "loftq":
            return self
        if calib_ids is None:
            raise ConfigError("rule='sensitivity' measures each layer on calibration tokens: pass calib_ids")
        linears = {n: m for n, (m, _) in plan(model, self.base).items()}
        calib_tokens, _, seed = self.base.calibration
        stats = collect_stats(model, calib_ids[:, :calib_tokens], linears, 0, seed=seed)
        # The same budget as LoftQ's rule spends (it rounds: 2.5 bits over 30 layers gives 8 layers 4 bits, 2.533
        # bits), so the two rules differ only in which layers get the high width.
        layers = num_decoder_layers(model)
        spent = self.low_bits + (self.high_bits - self.low_bits) * self.high_layers(layers) / layers
        return allocate_bits(model, self.base, spent, stats, self.high_bits, self.low_bits)

    @property
    def needs_calibration(self) -> bool:
        return self.rule == "sensitivity" or super().needs_calibration

    def config_for(self, name, layer_index=None, num_layers=0):
        if self.rule != "loftq":
            raise ConfigError(
                f"rule={self.rule!r} depends on the model: quantize_ resolves it (config.resolve(model, "
                "calib_ids)) before asking layer by layer"
            )
        high = layer_index is not None and layer_index < self.high_layers(num_layers)
        leaf = dataclasses.replace(self.base, bits=self.high_bits if high else self.low_bits)
        return leaf.config_for(name, layer_index, num_layers)

    def leaves(self):
        return [dataclasses.replace(self.base, bits=b) for b in (self.high_bits, self.low_bits)]

    @property
    def calibration(self):
        return self.base.calibration
