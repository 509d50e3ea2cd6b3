"""Prefill and backward through cuBLAS: ``W_hat = grid[Q] ⊙ (B·A)`` written once into one scratch buffer shared by
every layer of the process, then ``torch.mm``.

At large M the fused kernel's per-weight work (LUT, rank-R rebuild, multiply) is repeated for every M-tile, while
here it is paid once per call and the GEMM runs at cuBLAS speed. The dequantize is a memory-bound pass: it reads the
codes (``N·K·bits/8`` bytes) and ``B``, ``A`` and writes ``2·N·K`` bytes; its floor is that traffic over the copy
bandwidth. Below the crossover (``tuning.dequant_min_m``) the fused kernels win.

**The scratch buffer.** One per ``(device, dtype)``, grown to the largest ``N·K`` it has been asked for and reused
by every layer (same stream: a layer's GEMM is queued before the next layer's dequantize overwrites the buffer).
Peak memory added = ``2 bytes · max over layers of N·K`` per activation dtype in use: 112 MiB for a Llama-3-8B MLP
layer (14336 × 4096), 1.0 GiB for a 128256 × 4096 LM head if that were quantized. The backward reuses the same buffer
for ``dyᵀx`` after ``dx``'s GEMM. :func:`scratch_bytes` reports what is held; :func:`release_scratch` frees it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .code_tables import prmt_table
from .layout import KernelCodes, group_size
from .primitives import INTERPRET, _code_values, _load_codes, _mm, _row_tile
from .tuning import DEQUANT_CONFIG, TileConfig, rank_pad

_SCRATCH: dict = {}


@triton.jit(do_not_specialize=["r"])
def _dequant_kernel(
    lo_ptr,
    hi_ptr,
    grid_ptr,
    tab_ptr,
    B_ptr,
    A_ptr,
    w_ptr,
    N,
    K,
    r,
    n_groups,
    stride_lo,
    stride_hi,
    stride_bn,
    stride_ar,
    stride_wn,
    BITS: tl.constexpr,
    T: tl.constexpr,
    F: tl.constexpr,
    R: tl.constexpr,
    BN: tl.constexpr,
    GROUPS: tl.constexpr,
    EVEN: tl.constexpr,
    PRMT: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """``W_hat[rows, groups]`` for ``BN`` rows and ``GROUPS`` code groups: the ``B`` tile is loaded once; per
    ``T``-wide field ``S = B_tile · A_tile`` on the tensor cores times the code values, stored in ``w_ptr``'s dtype.
    ``EVEN``: ``N % BN == 0`` and ``K`` a multiple of ``GROUPS`` groups (no masks)."""
    pid_n = tl.program_id(0)
    g0 = tl.program_id(1) * GROUPS
    cdt = tl.float32 if DOT_FP32 else w_ptr.dtype.element_ty
    offs_n, n_mask, offs_j, offs_r, r_mask = _row_tile(pid_n, N, r, BN, T, R)
    b = tl.load(
        B_ptr + offs_n[:, None] * stride_bn + offs_r[None, :], mask=n_mask[:, None] & r_mask[None, :], other=0.0
    ).to(cdt)  # (BN, R), kept for every group of the program
    g1 = tl.minimum(g0 + GROUPS, n_groups)
    for g in range(g0, g1):
        lo, hi = _load_codes(
            lo_ptr, hi_ptr, offs_n, n_mask, g, offs_j, stride_lo, stride_hi, True, BITS, T, not EVEN, PRMT and BITS != 3
        )
        for f in tl.static_range(F):
            q = _code_values(lo, hi, f, grid_ptr, tab_ptr, w_ptr, BITS, PRMT)  # (BN, T)
            k = g * (F * T) + f * T + offs_j
            if EVEN:
                a = tl.load(A_ptr + offs_r[:, None] * stride_ar + k[None, :], mask=r_mask[:, None], other=0.0)
            else:
                a = tl.load(
                    A_ptr + offs_r[:, None] * stride_ar + k[None, :], mask=r_mask[:, None] & (k < K)[None, :], other=0.0
                )
            s = _mm(b, a.to(cdt), DOT_FP32)  # (BN, T) fp32
            w = (q.to(tl.float32) * s).to(w_ptr.dtype.element_ty)
            w_p = w_ptr + offs_n[:, None] * stride_wn + k[None, :]
            if EVEN:
                tl.store(w_p, w)
            else:
                tl.store(w_p, w, mask=n_mask[:, None] & (k < K)[None, :])


def scratch(device: torch.device, dtype: torch.dtype, numel: int) -> torch.Tensor:
    """The process's one dequantize buffer for ``(device, dtype)``, at least ``numel`` elements."""
    key = (device.type, device.index, dtype)
    buf = _SCRATCH.get(key)
    if buf is None or buf.numel() < numel:
        _SCRATCH.pop(key, None)  # the old buffer goes back to the allocator before the larger one is taken
        buf = _SCRATCH[key] = torch.empty(numel, dtype=dtype, device=device)
    return buf


def scratch_bytes() -> int:
    """Bytes held by the dequantize buffers (the peak memory this path adds)."""
    return sum(b.numel() * b.element_size() for b in _SCRATCH.values())


def release_scratch() -> None:
    """Drop the dequantize buffers (the next prefill allocates again)."""
    _SCRATCH.clear()


def dequant_launch(codes: KernelCodes, N: int, r: int, cfg: TileConfig | None = None):
    """``(grid, constexprs)`` of :func:`_dequant_kernel` for a layer: what a cached plan keeps."""
    cfg = cfg or DEQUANT_CONFIG
    bits = codes.bits
    n_groups = codes.k_pad // group_size(bits)
    gpp = max(1, min(cfg.GROUPS, n_groups))
    even = N % cfg.BN == 0 and codes.K % (gpp * group_size(bits)) == 0 and n_groups % gpp == 0
    prmt = bits != 3 and not INTERPRET and cfg.PRMT is not False
    meta = dict(
        BITS=bits,
        T=64,
        F=8 // (2 if bits == 3 else bits),
        R=rank_pad(r),
        BN=cfg.BN,
        GROUPS=gpp,
        EVEN=even,
        PRMT=prmt,
        DOT_FP32=INTERPRET,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return (triton.cdiv(N, cfg.BN), triton.cdiv(n_groups, gpp)), n_groups, meta


def dequantize(
    codes: KernelCodes,
    grid: torch.Tensor,
    B: torch.Tensor,
    A: torch.Tensor,
    dtype: torch.dtype,
    out: torch.Tensor | None = None,
    cfg: TileConfig | None = None,
) -> torch.Tensor:
    """``W_hat (N, K)`` in ``dtype``: into ``out`` (``N·K`` elements) or the shared scratch buffer.
    ``B (N, r)``, ``A (r, K)`` in ``dtype`` (fp16/bf16); ``grid`` float32."""
    N, r = B.shape
    K = codes.K
    w = (out if out is not None else scratch(B.device, dtype, N * K))[: N * K].view(N, K)
    hi = codes.hi if codes.bits == 3 else codes.lo
    A = A if A.stride(-1) == 1 else A.contiguous()
    B = B if B.stride(-1) == 1 else B.contiguous()
    launch, n_groups, meta = dequant_launch(codes, N, r, cfg)
    tab = prmt_table(grid, dtype) if meta["PRMT"] else grid
    _dequant_kernel[launch](
        codes.lo,
        hi,
        grid,
        tab,
        B,
        A,
        w,
        N,
        K,
        r,
        n_groups,
        codes.lo.stride(0),
        hi.stride(0),
        B.stride(0),
        A.stride(0),
        w.stride(0),
        **meta,
    )
    return w
