"""Frozen, validated configuration dataclasses; saved as JSON beside every checkpoint.

The config's *type* picks the quantizer (``LordsConfig`` → low-rank scales, ``BlockwiseConfig`` → block
scales; see ``lords.quantize.register_handler``), never a string switch read back out of a path. Every
config answers one question, :meth:`QuantConfig.config_for`: which leaf config quantizes the linear layer of
this name (None: keep it in float). Composite configs (``lords.layerwise``, ``lords.qat``) answer it by
delegating to the leaves they hold.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import ConfigError
from .grids import GRIDS, SUPPORTED_BITS
from .lowrank import parity_rank

CONFIG_VERSION = 1
OBJECTIVES = ("weight", "act_diag", "act")
_CONFIG_TYPES: dict[str, type] = {}


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {tuple(choices)}")


def check_positive(name: str, value, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name}={value!r} must be a finite {'non-negative' if allow_zero else 'positive'} number")


def check_int(name: str, value, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer ≥ {minimum}")


@dataclass(frozen=True)
class RefineConfig:
    """Algorithm 1's settings (the same for LoRDS and block-wise scales)."""

    steps: int = 100
    """T: Adam steps, each after one nearest-code re-pick of Q (0 = no refinement)."""
    lr: float = 1e-3
    """Adam learning rate on the scale parameters."""
    objective: str = "weight"
    """'weight' (data-free ‖W − S⊙Q‖²), 'act_diag' (error weighted by E[x_j²]) or 'act' (‖(W − S⊙Q)Xᵀ‖²)."""

    def __post_init__(self):
        check_int("refine.steps", self.steps, minimum=0)
        check_positive("refine.lr", self.lr)
        check_choice("refine.objective", self.objective, OBJECTIVES)

    @property
    def needs_calibration(self) -> bool:
        return self.steps > 0 and self.objective != "weight"


class QuantConfig:
    """Base of every quantization config: a frozen dataclass with a class-level ``method`` name.

    Subclasses register themselves by ``method`` so :func:`config_from_dict` rebuilds a saved config.
    """

    method: ClassVar[str] = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.__dict__.get("method"):
            _CONFIG_TYPES[cls.method] = cls

    def config_for(self, name: str, layer_index: int | None, num_layers: int) -> QuantConfig | None:
        """The leaf config for the linear layer ``name`` (in decoder layer ``layer_index`` of ``num_layers``)."""
        raise NotImplementedError

    def resolve(self, model, calib_ids=None) -> QuantConfig:
        """This config made concrete for ``model`` (a rule that needs the model or calibration data applied)."""
        return self

    @property
    def stored_config(self) -> QuantConfig:
        """What a checkpoint of the quantized model records (QAT records the config it converts to)."""
        return self

    def leaves(self) -> list[QuantConfig]:
        """Every leaf config this config can hand out (for checks that need no model)."""
        return [self]

    @property
    def needs_calibration(self) -> bool:
        """True when some layer's refinement objective needs calibration activations."""
        return any(
            getattr(leaf, "refine", None) is not None and leaf.refine.needs_calibration for leaf in self.leaves()
        )

    @property
    def calibration(self) -> tuple[int, int, int]:
        """``(calib_tokens, sample_tokens, seed)`` used to collect calibration statistics."""
        return self.calib_tokens, self.sample_tokens, self.seed

    def to_dict(self) -> dict[str, Any]:
        d = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = _to_plain(v)
        d["method"] = self.method
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        d = dict(d)
        d.pop("method", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s): {sorted(unknown)} (known: {sorted(known)})")
        return cls(**{k: _from_plain(v) for k, v in d.items()})


def _to_plain(v):
    if isinstance(v, QuantConfig):
        return v.to_dict()
    if dataclasses.is_dataclass(v):
        return dataclasses.asdict(v)
    if isinstance(v, tuple):
        return [_to_plain(x) for x in v]
    return v


def _from_plain(v):
    if isinstance(v, dict) and "method" in v:
        return config_from_dict(v)
    if isinstance(v, list):
        return tuple(_from_plain(x) for x in v)
    return v


def config_from_dict(d: dict[str, Any]) -> QuantConfig:
    """Rebuild a saved config by its ``method``. Anything malformed (a field of the wrong type, a list where a
    mapping belongs, nesting too deep) is a ``ConfigError``, never a raw ``TypeError``."""
    if not isinstance(d, dict):
        raise ConfigError(f"a config is a mapping with a 'method', got {type(d).__name__}")
    method = d.get("method")
    if not isinstance(method, str) or method not in _CONFIG_TYPES:
        raise ConfigError(f"method={method!r} is not one of {tuple(_CONFIG_TYPES)}")
    try:
        return _CONFIG_TYPES[method].from_dict(d)
    except ConfigError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, RecursionError, OverflowError) as e:
        raise ConfigError(f"{method} config is malformed: {type(e).__name__}: {str(e)[:200]}") from None


@dataclass(frozen=True)
class ScaleConfig(QuantConfig):
    """What every codes-times-scales quantizer shares: the grid, the float budget, Algorithm 1, selection."""

    bits: int = 4
    """Bits per weight code: 2, 3 or 4 (mixed precision 2.25 / 2.5: ``lords.MixedPrecisionConfig``)."""
    block_size: int = 64
    """Inputs per block for block scales; for LoRDS it sets the float budget (and the SVD init)."""
    grid: str = "nf"
    """Codebook: 'nf' (NormalFloat, QLoRA's) or 'int' (symmetric round-to-nearest)."""
    refine: RefineConfig | None = None
    """Algorithm 1 after the init; None keeps the init as is."""
    include: tuple[str, ...] = ()
    """Module-name substrings to quantize (empty: every nn.Linear)."""
    exclude: tuple[str, ...] = ("lm_head",)
    """Module-name substrings to keep in float (the LM head by default)."""
    calib_tokens: int = 2048
    """Calibration tokens used when the refinement objective needs activations."""
    sample_tokens: int = 512
    """Rows of calibration inputs kept per layer for the 'act' objective."""
    seed: int = 0
    """Seed for every random choice (calibration row sample, per-layer torch seed)."""
    version: int = CONFIG_VERSION
    """Format version of this config, checked on load."""

    def __post_init__(self):
        if type(self.bits) is not int or self.bits not in SUPPORTED_BITS:  # 4.0 would pass `in` and fail later
            raise ConfigError(
                f"bits={self.bits!r} is not one of {SUPPORTED_BITS}; mixed precision 2.25, 2.5 or 3.0 "
                f"averages: MixedPrecisionConfig (Hydra: quant=lords_mixed or nf_mixed)"
            )
        check_int("block_size", self.block_size)
        check_choice("grid", self.grid, GRIDS)
        if isinstance(self.refine, dict):
            unknown = sorted(set(self.refine) - {f.name for f in dataclasses.fields(RefineConfig)})
            if unknown:
                raise ConfigError(f"refine.{unknown[0]}: unknown key (known: steps, lr, objective)")
            object.__setattr__(self, "refine", RefineConfig(**self.refine))
        if self.refine is not None and not isinstance(self.refine, RefineConfig):
            raise ConfigError(f"refine={self.refine!r} must be a RefineConfig or None")
        for name in ("include", "exclude"):
            value = getattr(self, name)
            value = (value,) if isinstance(value, str) else value
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a string or a list of strings")
            object.__setattr__(self, name, tuple(value))
        check_int("calib_tokens", self.calib_tokens)
        check_int("sample_tokens", self.sample_tokens, minimum=0)
        check_int("seed", self.seed, minimum=0)
        if self.version != CONFIG_VERSION:
            raise ConfigError(f"version={self.version} is not the supported config version {CONFIG_VERSION}")

    def config_for(self, name, layer_index=None, num_layers=0):
        if self.include and not any(s in name for s in self.include):
            return None
        return None if any(s in name for s in self.exclude) else self

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        d = dict(d)
        if isinstance(d.get("refine"), dict):
            d["refine"] = RefineConfig(**d["refine"])
        return super().from_dict(d)


@dataclass(frozen=True)
class BlockwiseConfig(ScaleConfig):
    """Block-wise absmax quantization (NF4 at block 64 is QLoRA's format); optionally refined scales."""

    double_quant: bool = False
    """Store block scales as int8 (bitsandbytes-style double quantization)."""

    method: ClassVar[str] = "blockwise"


@dataclass(frozen=True)
class LordsConfig(ScaleConfig):
    """LoRDS: codes times a continuous low-rank scale ``S = B·A``, at the block-wise float budget."""

    rank: int | None = None
    """Explicit rank of ``B·A``; None takes the parity rank floor(n·m / (block_size·(n+m))) times ``rank_scale``."""
    rank_scale: float = 1.0
    """Multiple of the parity rank when ``rank`` is None (the rank ablation: 0.5, 1, 2, 4); the init still starts
    from the block scales at ``block_size``."""
    scale_dtype: str = "float32"
    """Dtype of ``B, A`` in the quantized module: 'float32', 'float16' or 'bfloat16'."""

    method: ClassVar[str] = "lords"

    def __post_init__(self):
        super().__post_init__()
        if self.rank is not None:
            check_int("rank", self.rank)
        check_positive("rank_scale", self.rank_scale)
        check_choice("scale_dtype", self.scale_dtype, ("float32", "float16", "bfloat16"))

    def rank_for(self, out_features: int, in_features: int) -> int:
        """The rank of a layer ``(out, in)``: ``rank``, else ``round(rank_scale · parity rank)`` (0 is refused later)."""
        if self.rank is not None:
            return self.rank
        return round(self.rank_scale * parity_rank(out_features, in_features, self.block_size))
