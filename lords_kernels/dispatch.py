"""The ``"triton"`` backend of ``LoRDSLinear``: code repack cache, custom ops, autograd, per-model switch.

- :func:`triton_forward` ``(layer, x) -> y`` is the backend function that ``use_triton`` hands each layer.
- ``torch.ops.lords.matmul`` / ``torch.ops.lords.matmul_backward`` are ``torch.library.custom_op`` s with fake
  implementations, so ``torch.compile`` traces through them and CUDA graphs capture them; the forward op carries
  its autograd formula (``register_autograd``), so PEFT/QAT training runs through the same op.
- :func:`use_triton` / :func:`use_torch` set the backend of every LoRDSLinear of one model and return it.

Eager calls that need no gradient skip the custom-op dispatcher (a few µs of Python at decode) and launch the
kernel directly; the math is the same function.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .lords_matmul import triton as tk
from .lords_matmul.layout import KernelCodes, repack

_CACHE_ATTR = "_lords_kernel_codes"


def kernel_codes(layer) -> KernelCodes:
    """The layer's codes in the kernels' layout, repacked once and cached on the layer (re-made if
    ``qweight`` was written since or moved device)."""
    q = layer.qweight
    cached = getattr(layer, _CACHE_ATTR, None)
    if cached is not None and torch.compiler.is_compiling():
        return cached[1]
    key = (q.device, q.data_ptr(), q._version)
    if cached is None or cached[0] != key:
        codes = repack(q, layer.bits, layer.in_features)
        setattr(layer, _CACHE_ATTR, (key, codes))
        cached = (key, codes)
    return cached[1]


# ------------------------------------------------------------------------------------------- custom ops

@torch.library.custom_op("lords::matmul", mutates_args=())
def _matmul_op(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, grid: torch.Tensor, B: torch.Tensor,
               A: torch.Tensor, bias: Optional[torch.Tensor], bits: int, K: int) -> torch.Tensor:
    return tk.lords_matmul(x, KernelCodes(lo, hi, bits, K), grid, B.to(x.dtype), A.to(x.dtype),
                           None if bias is None else bias.to(x.dtype))


@_matmul_op.register_fake
def _(x, lo, hi, grid, B, A, bias, bits, K):
    return x.new_empty(*x.shape[:-1], B.shape[0])


@torch.library.custom_op("lords::matmul_backward", mutates_args=())
def _matmul_backward_op(dy: torch.Tensor, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, grid: torch.Tensor,
                        B: torch.Tensor, A: torch.Tensor, bits: int, K: int, need_dx: bool,
                        need_dBA: bool) -> list[torch.Tensor]:
    dx, dB, dA = tk.lords_matmul_backward(dy, x, KernelCodes(lo, hi, bits, K), grid, B.to(x.dtype),
                                          A.to(x.dtype), need_dx, need_dBA)
    empty = dy.new_empty(0)
    return [empty if dx is None else dx, empty if dB is None else dB.to(B.dtype),
            empty if dA is None else dA.to(A.dtype)]


@_matmul_backward_op.register_fake
def _(dy, x, lo, hi, grid, B, A, bits, K, need_dx, need_dBA):
    empty = dy.new_empty(0)
    return [x.new_empty(x.shape) if need_dx else empty, B.new_empty(B.shape) if need_dBA else empty,
            A.new_empty(A.shape) if need_dBA else empty]


def _setup_context(ctx, inputs, output):
    x, lo, hi, grid, B, A, bias, bits, K = inputs
    ctx.save_for_backward(x, lo, hi, grid, B, A)
    ctx.bits, ctx.K, ctx.has_bias = bits, K, bias is not None


def _backward(ctx, dy):
    x, lo, hi, grid, B, A = ctx.saved_tensors
    need_dx = ctx.needs_input_grad[0]
    need_dBA = ctx.needs_input_grad[4] or ctx.needs_input_grad[5]
    dx = dB = dA = dbias = None
    if need_dx or need_dBA:
        gx, gB, gA = _matmul_backward_op(dy.contiguous(), x, lo, hi, grid, B, A, ctx.bits, ctx.K, need_dx, need_dBA)
        dx = gx if need_dx else None
        dB, dA = (gB, gA) if need_dBA else (None, None)
    if ctx.has_bias and ctx.needs_input_grad[6]:
        dbias = dy.reshape(-1, dy.shape[-1]).sum(0)
    return dx, None, None, None, dB, dA, dbias, None, None


_matmul_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------- the backend

def lords_linear(x: torch.Tensor, codes: KernelCodes, grid: torch.Tensor, B: torch.Tensor, A: torch.Tensor,
                 bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``x @ (grid[Q] ⊙ B·A).T + bias`` on CUDA through the Triton kernels, differentiable in x, B, A, bias."""
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or B.requires_grad or A.requires_grad
                                              or (bias is not None and bias.requires_grad))
    if needs_grad or torch.compiler.is_compiling():
        return _matmul_op(x, codes.lo, codes.hi, grid, B, A, bias, codes.bits, codes.K)
    dt = x.dtype

    def cast(t):
        return t if t is None or t.dtype == dt else t.to(dt)

    return tk.lords_matmul(x, codes, grid, cast(B), cast(A), cast(bias))


def triton_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """Backend function for ``LoRDSLinear``: ``y = x @ W_hat.T + bias`` with the Triton kernels.

    ``x (..., in_features)`` fp16 or bf16 (fp32 inputs run in bf16 and come back fp32); CUDA tensors, or CPU
    tensors under ``TRITON_INTERPRET=1``."""
    if x.shape[-1] != layer.in_features:
        from lords.errors import ShapeError

        raise ShapeError(f"input has {x.shape[-1]} features, layer expects {layer.in_features}")
    if not x.is_cuda and not tk.INTERPRET:
        from lords.errors import ConfigError

        raise ConfigError("backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before importing kernels); "
                          "use backend 'torch' or 'auto' on the CPU")
    codes = kernel_codes(layer)
    if x.dtype == torch.float32:
        return lords_linear(x.to(torch.bfloat16), codes, layer.grid, layer.B, layer.A, layer.bias).float()
    return lords_linear(x, codes, layer.grid, layer.B, layer.A, layer.bias)


def _triton_or_reference(layer, x: torch.Tensor) -> torch.Tensor:
    """Triton for CUDA inputs (or under the interpreter), the torch reference for CPU inputs."""
    if x.is_cuda or tk.INTERPRET:
        return triton_forward(layer, x)
    from lords.linear import lords_forward_reference

    return lords_forward_reference(layer, x)


triton_forward.backend_name = "triton"
_triton_or_reference.backend_name = "triton-or-torch"


def _lords_layers(model: nn.Module):
    from lords.linear import LoRDSLinear

    return [m for m in model.modules() if isinstance(m, LoRDSLinear)]


def use_triton(model: nn.Module, cpu_fallback: bool = False) -> nn.Module:
    """Run every LoRDSLinear of ``model`` through the Triton kernels (repacking its codes now); returns model.

    ``cpu_fallback``: CPU inputs go to the torch reference instead of being refused (a model that moves)."""
    fn = _triton_or_reference if cpu_fallback else triton_forward
    for m in _lords_layers(model):
        m.set_backend(fn)
        kernel_codes(m)
    return model


def use_torch(model: nn.Module) -> nn.Module:
    """Run every LoRDSLinear of ``model`` through the torch reference; returns model."""
    for m in _lords_layers(model):
        m.set_backend("torch")
    return model
