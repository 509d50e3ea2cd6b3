"""Frozen, validated configuration dataclasses; saved as JSON beside every checkpoint.

The config's *type* picks the quantizer (``LordsConfig`` → low-rank scales, ``BlockwiseConfig`` →
block scales), never a string switch read back out of a path.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

CONFIG_VERSION = 1
OBJECTIVES = ("weight", "act_diag", "act")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {tuple(choices)}")


def _check_positive(name: str, value, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name}={value!r} must be a {'non-negative' if allow_zero else 'positive'} number")


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
        _check_positive("refine.steps", self.steps, allow_zero=True)
        if not isinstance(self.steps, int):
            raise ConfigError(f"refine.steps={self.steps!r} must be an integer")
        _check_positive("refine.lr", self.lr)
        _check_choice("refine.objective", self.objective, OBJECTIVES)

    @property
    def needs_calibration(self) -> bool:
        return self.steps > 0 and self.objective != "weight"


@dataclass(frozen=True)
class _QuantConfig:
    bits: int = 4
    """Bits per weight code: 2, 3 or 4."""
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
    """Seed for every random choice (calibration row sample)."""
    version: int = CONFIG_VERSION
    """Format version of this config, checked on load."""

    def __post_init__(self):
        from .grids import GRIDS, SUPPORTED_BITS

        _check_choice("bits", self.bits, SUPPORTED_BITS)
        if not isinstance(self.block_size, int) or isinstance(self.block_size, bool) or self.block_size < 1:
            raise ConfigError(f"block_size={self.block_size!r} must be a positive integer")
        _check_choice("grid", self.grid, GRIDS)
        if isinstance(self.refine, dict):
            object.__setattr__(self, "refine", RefineConfig(**self.refine))
        if self.refine is not None and not isinstance(self.refine, RefineConfig):
            raise ConfigError(f"refine={self.refine!r} must be a RefineConfig or None")
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        _check_positive("calib_tokens", self.calib_tokens)
        _check_positive("sample_tokens", self.sample_tokens, allow_zero=True)
        if self.version != CONFIG_VERSION:
            raise ConfigError(f"version={self.version} is not the supported config version {CONFIG_VERSION}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        d["method"] = self.method
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        d = dict(d)
        d.pop("method", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s): {sorted(unknown)}")
        return cls(**d)

    @property
    def needs_calibration(self) -> bool:
        return self.refine is not None and self.refine.needs_calibration


@dataclass(frozen=True)
class BlockwiseConfig(_QuantConfig):
    """Block-wise absmax quantization (NF4 at block 64 is QLoRA's format); optionally refined scales."""

    double_quant: bool = False
    """Store block scales as int8 (bitsandbytes-style double quantization)."""

    method = "blockwise"


@dataclass(frozen=True)
class LordsConfig(_QuantConfig):
    """LoRDS: codes times a continuous low-rank scale ``S = B·A``, at the block-wise float budget."""

    rank: int | None = None
    """Explicit rank of ``B·A``; None takes the parity rank floor(n·m / (block_size·(n+m)))."""
    scale_dtype: str = "float32"
    """Dtype of ``B, A`` in the quantized module: 'float32', 'float16' or 'bfloat16'."""

    method = "lords"

    def __post_init__(self):
        super().__post_init__()
        if self.rank is not None and (not isinstance(self.rank, int) or self.rank < 1):
            raise ConfigError(f"rank={self.rank!r} must be a positive integer or None")
        _check_choice("scale_dtype", self.scale_dtype, ("float32", "float16", "bfloat16"))


def config_from_dict(d: dict[str, Any]) -> _QuantConfig:
    """Rebuild the config a checkpoint was made with, by its saved ``method``."""
    kinds = {"lords": LordsConfig, "blockwise": BlockwiseConfig}
    method = d.get("method")
    if method not in kinds:
        raise ConfigError(f"method={method!r} is not one of {tuple(kinds)}")
    return kinds[method].from_dict(d)
