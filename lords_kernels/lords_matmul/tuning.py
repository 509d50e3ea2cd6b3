"""Tile choices for the LoRDS kernels: a committed per-GPU table (``tuned_h100.json``, loaded explicitly with
:func:`load_table`) and a heuristic for shapes it does not hold. Keys are ``"M_bucket,N,K,bits,R_pad"``.

The same table may carry a ``"crossover"`` section, ``{"N,K,bits": M}``: from that many tokens a layer of that shape
dequantizes once and calls cuBLAS (forward, and ``dx`` / ``dyᵀx`` in the backward) instead of the fused kernels;
shapes not in it use :data:`DEQUANT_MIN_M` (``python -m benchmarks.kernels.bench_k16`` measures the crossover)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import triton

from .layout import group_size

KERNELS = ("gemv", "gemm_t", "dequant")
DEQUANT_MIN_M = 512
"""Default crossover: from this many tokens the forward dequantizes once and calls cuBLAS (lords_matmul.dequant).
Measured on the H100: at M = 256 the fused kernel won on the large shapes, from M = 512 the dequant
path won on all four bench shapes."""


@dataclass(frozen=True)
class TileConfig:
    """One launch choice of the forward kernels (the table's and the heuristic's unit)."""

    kernel: str
    """'gemv' (M = 1, activation-side identity, ``A ⊙ x`` made by a second kernel), 'gemm_t' (swap-AB weight-side
    form) or 'dequant' (W_hat into a shared buffer, then cuBLAS: prefill)."""
    BN: int
    """Weight rows per program."""
    BM: int = 64
    """Tokens per program (gemm_t)."""
    split_k: int = 1
    """K splits summed by the last split to arrive."""
    num_warps: int = 4
    num_stages: int = 3
    GROUP_M: int = 8
    """Program grouping along M for L2 reuse (gemm_t)."""
    PRMT: bool | None = None
    """Code values by byte permutes; None: on where the bit width has it (not 3-bit gemm_t)."""
    Q_AS_B: bool = True
    """gemv: the code values as the MMA's B operand."""
    ONES: bool = False
    """gemv, fp16: code values routed through an MMA-made tile of ones (registers instead of shared memory)."""
    S16: bool = False
    """gemm_t, fp16: fp16 accumulation of the rank sum."""
    GROUPS: int = 4
    """dequant: code groups (``G = F·T`` columns each) per program; the ``B`` tile is loaded once for all of them."""

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel={self.kernel!r} is not one of {KERNELS}")

    @classmethod
    def of(cls, value: TileConfig | dict) -> TileConfig:
        """A ``TileConfig`` from itself or a table entry (unknown keys refused, naming them)."""
        if isinstance(value, cls):
            return value
        unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown tile config keys {sorted(unknown)} in {value}")
        return cls(**value)


def rank_pad(r: int) -> int:
    return max(16, triton.next_power_of_2(r))


def swap_bm(M: int) -> int:
    """``gemm_t``'s token tile for a decode batch of M: the MMA's narrow side, a power of two, at least 16."""
    return max(16, triton.next_power_of_2(M))


def _near_pow2(x: float) -> int:
    """The power of two nearest to ``x`` in log scale (at least 1): K splits for about ``x`` programs per tile."""
    return 1 << max(0, round(math.log2(x)))


def default_config(M: int, N: int, K: int, bits: int, r: int, sms: int = 132) -> TileConfig:
    """A tile choice with no tuning table, fitted to the H200 sweep of the bench shapes (blocks 64 and 128,
    ``outputs/reports/kernels_tune_log.json``; ``python -m benchmarks.kernels.heuristic_check`` rates it per cell):
    about two programs per SM from tiles times K splits while a split keeps enough K to amortise its partials."""
    n_groups = -(-K // group_size(bits))
    if M == 1 and N >= 2048:  # below, too few row tiles for the gemv: the swap-AB kernel split 16 ways won
        split = max(1, min(n_groups, 16, (2 * sms) // -(-N // 128)))
        # code values routed through an MMA-made tile of ones, as the MMA's A operand: best or within 3% in every
        # gemv cell of the sweep (ONES applies to fp16; the runner drops it for bf16)
        return TileConfig(
            kernel="gemv", BN=128, split_k=split, num_warps=4, num_stages=3, PRMT=True, Q_AS_B=False, ONES=True
        )
    if M <= 64:  # the swap-AB kernel: weight rows on the MMA's wide side, the few tokens on its narrow side
        bm = swap_bm(M)
        tiles = -(-N // 64) * -(-M // bm)
        # splits for about two programs per SM; from 32 tokens a split's fp32 partials (M·N each) cost enough to
        # want 4+ code groups per split
        split = max(1, min(n_groups // max(1, M // 16), 16, _near_pow2(2 * sms / tiles)))
        return TileConfig(kernel="gemm_t", BM=bm, BN=64, split_k=split, num_warps=4, num_stages=3, GROUP_M=8, S16=True)
    # two warpgroups of 64 weight rows each: one's LUT work overlaps the other's MMAs (H100 sweep: 1.9x faster
    # than one warpgroup at M = 2048); 256-token tiles unless that leaves fewer than 16 tiles, split K up to 4
    # while the programs still fit one wave
    bm = 256 if M >= 256 and -(-M // 256) * -(-N // 128) >= 16 else 128
    tiles = -(-M // bm) * -(-N // 128)
    split = max(s for s in (1, 2, 4) if s == 1 or (s <= n_groups and tiles * s <= sms))
    return TileConfig(kernel="gemm_t", BM=bm, BN=128, split_k=split, num_warps=8, num_stages=3, GROUP_M=8, S16=True)


_TABLE: dict[str, TileConfig] = {}
_CROSSOVER: dict[str, int] = {}


def load_table(path: str) -> int:
    """Load a committed tuning table (JSON: ``{"configs": {"M,N,K,bits,R": config}, "crossover": {"N,K,bits": M}}``,
    or the bare configs mapping); returns the number of tile entries."""
    with open(path) as fh:
        table = json.load(fh)
    _TABLE.update({k: TileConfig.of(v) for k, v in table.get("configs", table).items()})
    cross = table.get("crossover", {}) if "configs" in table else {}
    for k, v in cross.items():
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"crossover {k!r}: {v!r} is not a token count >= 1")
    _CROSSOVER.update(cross)
    return len(_TABLE)


def m_bucket(M: int) -> int:
    return M if M <= 2 else min(triton.next_power_of_2(M), 8192)


def dequant_min_m(N: int, K: int, bits: int) -> int:
    """Tokens from which a layer of this shape goes through dequantize + cuBLAS (the table's measured crossover, else
    :data:`DEQUANT_MIN_M`)."""
    return _CROSSOVER.get(f"{N},{K},{bits}", DEQUANT_MIN_M)


DEQUANT_CONFIG = TileConfig("dequant", BN=128, GROUPS=4, num_warps=8, num_stages=2)
"""The dequant tile when the table holds none for the shape (key ``"dequant,N,K,bits,R_pad"``)."""


def dequant_config(N: int, K: int, bits: int, r: int) -> TileConfig:
    return _TABLE.get(f"dequant,{N},{K},{bits},{rank_pad(r)}") or DEQUANT_CONFIG


def pick_config(M: int, N: int, K: int, bits: int, r: int) -> TileConfig:
    if M >= dequant_min_m(N, K, bits):
        return dequant_config(N, K, bits, r)
    key = f"{m_bucket(M)},{N},{K},{bits},{rank_pad(r)}"
    return _TABLE.get(key) or default_config(M, N, K, bits, r)
