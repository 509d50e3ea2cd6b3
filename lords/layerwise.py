"""Per-layer configs: explicit rules (``LayerwiseConfig``) and LoftQ-style mixed precision.

Both are composite configs: they hold leaf configs (``LordsConfig``, ``BlockwiseConfig``, ...) and answer
``config_for(name, layer_index, num_layers)`` with the leaf that quantizes that layer, so ``quantize_``
takes them like any other config and a checkpoint saves them whole.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from .config import QuantConfig, ScaleConfig, check_choice, check_int
from .errors import ConfigError

MIXED_BITS = (2.25, 2.5, 3.0)
RULES = ("loftq", "sensitivity")


def decoder_layer_index(name: str) -> int | None:
    """The decoder layer a module name belongs to (``model.layers.7.mlp.up_proj`` → 7), else None."""
    m = re.search(r"\.(?:layers|h|blocks)\.(\d+)\.", f".{name}.")
    return None if m is None else int(m.group(1))


def num_decoder_layers(model: nn.Module) -> int:
    """``config.num_hidden_layers`` of a transformers model, else one more than the largest layer index."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    return n or 1 + max((decoder_layer_index(name) or 0) for name, _ in model.named_modules())


@dataclass(frozen=True)
class LayerwiseConfig(QuantConfig):
    """Rules ``(regex, config or None)`` tried in order on each linear's name (``re.search``); the first that
    matches decides (None: keep in float); layers no rule matches get ``default``."""

    rules: tuple[tuple[str, QuantConfig | None], ...] = ()
    """``(pattern, config)`` pairs; a leaf's own include/exclude still apply after its rule matched."""
    default: QuantConfig | None = None
    """Config of layers that no rule matches (None: keep them in float)."""
    calib_tokens: int = 2048
    sample_tokens: int = 512
    seed: int = 0

    method: ClassVar[str] = "layerwise"

    def __post_init__(self):
        rules = []
        for rule in self.rules:
            if len(rule) != 2 or not isinstance(rule[0], str):
                raise ConfigError(f"rules: {rule!r} is not a (pattern, config) pair")
            try:
                re.compile(rule[0])
            except re.error as e:
                raise ConfigError(f"rules: pattern {rule[0]!r} is not a regular expression ({e})") from None
            if rule[1] is not None and not isinstance(rule[1], QuantConfig):
                raise ConfigError(f"rules: {rule[1]!r} is not a quantization config or None")
            rules.append((rule[0], rule[1]))
        object.__setattr__(self, "rules", tuple(rules))
        for name in ("calib_tokens", "sample_tokens", "seed"):
            check_int(name, getattr(self, name), minimum=0 if name != "calib_tokens" else 1)

    def config_for(self, name, layer_index=None, num_layers=0):
        for pattern, config in self.rules:
            if re.search(pattern, name):
                return None if config is None else config.config_for(name, layer_index, num_layers)
        return None if self.default is None else self.default.config_for(name, layer_index, num_layers)

    def leaves(self):
        children = [c for _, c in self.rules if c is not None] + ([self.default] if self.default else [])
        return [leaf for c in children for leaf in c.leaves()]

    def to_dict(self):
        return {"method": self.method, "rules": [[p, None if c is None else c.to_dict()] for p, c in self.rules],
                "default": None if self.default is None else self.default.to_dict(),
                "calib_tokens": self.calib_tokens, "sample_tokens": self.sample_tokens, "seed": self.seed}

    @classmethod
    def from_dict(cls, d):
        from .config import config_from_dict

        d = dict(d)
        d.pop("method", None)
        d["rules"] = tuple((p, None if c is None else config_from_dict(c)) for p, c in d.get("rules", ()))
        d["default"] = None if d.get("default") is None else config_from_dict(d["default"])
        return cls(**d)


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
            raise ConfigError(f"bits={self.bits} must lie between low_bits={self.low_bits} and high_bits={self.high_bits}")
        for b in (self.high_bits, self.low_bits):
            dataclasses.replace(self.base, bits=b)  # validates both widths now

    def high_layers(self, num_layers: int) -> int:
        """How many leading decoder layers get ``high_bits``."""
        return round(num_layers * (self.bits - self.low_bits) / (self.high_bits - self.low_bits))

    def resolve(self, model, calib_ids=None):
        if self.rule == "loftq":
            return self
        from .allocate import allocate_bits
        from .calibration import collect_stats
        from .quantize import plan

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
            raise ConfigError(f"rule={self.rule!r} depends on the model: quantize_ resolves it (config.resolve(model, "
                              "calib_ids)) before asking layer by layer")
        high = layer_index is not None and layer_index < self.high_layers(num_layers)
        leaf = dataclasses.replace(self.base, bits=self.high_bits if high else self.low_bits)
        return leaf.config_for(name, layer_index, num_layers)

    def leaves(self):
        return [dataclasses.replace(self.base, bits=b) for b in (self.high_bits, self.low_bits)]

    @property
    def calibration(self):
        return self.base.calibration
