"""Specification of the LoRDS matmul, in pure torch, on the *stored* format.

Shapes and dtypes (the contract with ``lords.linear.LoRDSLinear``):

- ``qweight``: uint8 ``(N, packed_width(K, bits))``, the packing of ``lords.packing`` (codes along K).
- ``grid``: float32 ``(2**bits,)``, the codebook; ``grid[code]`` is a code's value.
- ``B``: ``(N, r)``, ``A``: ``(r, K)``, fp16 / bf16 / fp32.
- ``x``: ``(..., K)``; ``bias``: ``(N,)`` or None.

``W_hat[n, k] = grid[Q[n, k]] * (B @ A)[n, k]`` and ``y = x @ W_hat.T + bias``. These functions compute in
``compute_dtype`` (float64 for tests) and return that dtype: the Triton kernels must match them up to the
rounding of their operand dtype.
"""

from __future__ import annotations

import torch

from lords.packing import unpack_codes


def dequantize(
    qweight: torch.Tensor,
    grid: torch.Tensor,
    B: torch.Tensor,
    A: torch.Tensor,
    bits: int,
    compute_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``W_hat (N, K)`` in ``compute_dtype``."""
    K = A.shape[1]
    values = grid.to(compute_dtype)[unpack_codes(qweight, bits, K).long()]
    return values * (B.to(compute_dtype) @ A.to(compute_dtype))


def lords_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    grid: torch.Tensor,
    B: torch.Tensor,
    A: torch.Tensor,
    bias: torch.Tensor | None,
    bits: int,
    compute_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``y (..., N) = x @ W_hat.T + bias`` in ``compute_dtype``."""
    w = dequantize(qweight, grid, B, A, bits, compute_dtype)
    y = x.to(compute_dtype) @ w.T
    if bias is not None:
        y = y + bias.to(compute_dtype)
    return y


def lords_matmul_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    qweight: torch.Tensor,
    grid: torch.Tensor,
    B: torch.Tensor,
    A: torch.Tensor,
    bits: int,
    compute_dtype: torch.dtype = torch.float64,
):
    """Gradients ``(dx (..., K), dB (N, r), dA (r, K))`` of ``y = lords_matmul(x, ...)`` for upstream ``dy``.

    ``dS = (dyᵀ x) ⊙ grid[Q]``, ``dB = dS Aᵀ``, ``dA = Bᵀ dS``, ``dx = dy W_hat``.
    """
    K = A.shape[1]
    values = grid.to(compute_dtype)[unpack_codes(qweight, bits, K).long()]
    B64, A64 = B.to(compute_dtype), A.to(compute_dtype)
    dy2 = dy.reshape(-1, dy.shape[-1]).to(compute_dtype)
    x2 = x.reshape(-1, K).to(compute_dtype)
    dx = (dy2 @ (values * (B64 @ A64))).reshape(*x.shape[:-1], K)
    dS = (dy2.T @ x2) * values
    return dx, dS @ A64.T, B64.T @ dS
