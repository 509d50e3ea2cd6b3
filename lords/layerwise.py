"""Per-layer configs by explicit rules (``LayerwiseConfig``), and where a module sits in the decoder stack.

``LayerwiseConfig`` is a composite config: it holds leaf configs (``LordsConfig``, ``BlockwiseConfig``, ...) and
answers ``config_for(name, layer_index, num_layers)`` with the leaf that quantizes that layer, so ``quantize_`` takes
it like any other config and a checkpoint saves it whole. LoftQ-style mixed precision: ``lords.mixed``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from .config import QuantConfig, check_int, config_from_dict
from .errors import ConfigError


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
        if isinstance(self.rules, (str, bytes)) or not hasattr(self.rules, "__iter__"):
            raise ConfigError(f"rules={self.rules!r} is not a list of (pattern, config) pairs")
        for rule in self.rules:
            if not isinstance(rule, (list, tuple)) or len(rule) != 2 or not isinstance(rule[0], str):
                raise ConfigError(f"rules: {rule!r} is not a (pattern, config) pair")
            try:
                re.compile(rule[0])
            except (re.error, OverflowError, RecursionError) as e:
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
        return {
            "method": self.method,
            "rules": [[p, None if c is None else c.to_dict()] for p, c in self.rules],
            "default": None if self.default is None else self.default.to_dict(),
            "calib_tokens": self.calib_tokens,
            "sample_tokens": self.sample_tokens,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        d.pop("method", None)
        d["rules"] = tuple((p, None if c is None else config_from_dict(c)) for p, c in d.get("rules", ()))
        d["default"] = None if d.get("default") is None else config_from_dict(d["default"])
        return cls(**d)
