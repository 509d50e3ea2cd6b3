"""The ``"triton"`` backend of ``LoRDSLinear``: code repack cache, custom ops, autograd, per-model switch.

- :func:`triton_forward` ``(layer, x) -> y`` is the backend function that ``use_triton`` hands each layer.
- ``torch.ops.lords.matmul`` / ``torch.ops.lords.matmul_backward`` are ``torch.library.custom_op`` s with fake
  implementations, so ``torch.compile`` traces through them and CUDA graphs capture them; the forward op carries
  its autograd formula (``register_autograd``), so PEFT/QAT training runs through the same op.
- :func:`use_triton` / :func:`use_torch` set the backend of every LoRDSLinear of one model and return it.

Eager calls that need no gradient skip the custom-op dispatcher and go through the layer's :class:`LayerPlan`,
made once per layer and kept on it: the codes in the kernels' layout, ``B``/``A``/``bias`` cast to the activation
dtype (again only when a parameter is written), and per token-count bucket the tile choice with every launch
argument but ``x`` and ``y`` bound (:func:`~.lords_matmul.forward.make_runner`). Per call: a freshness check
(``qweight`` identity and version, the scales' versions), one ``torch.empty`` for ``y``, the launches.
"""

from __future__ import annotations

import torch
from torch import nn

from .lords_matmul import triton as tk
from .lords_matmul.forward import make_runner
from .lords_matmul.layout import KernelCodes, repack
from .lords_matmul.tuning import dequant_min_m, pick_config

_PLAN_ATTR = "_lords_plan"


class LayerPlan:
    """What one layer's Triton forward keeps between calls (see the module docstring). Rebuilt when ``qweight`` is
    replaced (a device move) or written; the cast scales and bound launches when ``B``, ``A`` or ``bias`` are."""

    __slots__ = ("qweight", "qversion", "codes", "grid", "N", "K", "r", "bits", "crossover", "_scales", "_runners")

    def __init__(self, layer):
        q = layer.qweight
        self.qweight, self.qversion = q, q._version
        # On the scales' device: codes kept in host memory (use_triton(codes_on_host=True)) repack to the GPU.
        self.codes = repack(q.to(layer.B.device), layer.bits, layer.in_features)
        for t in (self.codes.lo, self.codes.hi):  # cudagraph trees: fixed addresses, never copied on a replay
            torch._dynamo.mark_static_address(t)
        self.grid = layer.grid
        self.N, self.r = layer.B.shape
        self.K, self.bits = layer.in_features, layer.bits
        self.crossover = dequant_min_m(self.N, self.K, self.bits)
        self._scales: dict = {}
        self._runners: dict = {}

    def fresh(self, layer) -> bool:
        q = layer.qweight
        return q is self.qweight and q._version == self.qversion

    def scales(self, layer, dtype: torch.dtype):
        """``(B, A, bias)`` of the layer in ``dtype``, detached, cast once per write of a parameter."""
        B, A, bias = layer.B, layer.A, layer.bias
        key = (
            B._version,
            B.data_ptr(),
            A._version,
            A.data_ptr(),
            None if bias is None else (bias._version, bias.data_ptr()),
        )
        hit = self._scales.get(dtype)
        if hit is None or hit[0] != key:

            def cast(t):
                return None if t is None else t.detach().to(dtype).contiguous()

            hit = self._scales[dtype] = (key, cast(B), cast(A), cast(bias))
            self._runners = {k: v for k, v in self._runners.items() if k[1] != dtype}  # they bound the old casts
        return hit[1], hit[2], hit[3]

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor:
        """``y = x @ W_hat.T + bias`` with no autograd; ``x (..., K)`` fp16/bf16, or fp32 (computed in bf16; y in
        fp32; the batch-1 gemv takes fp32 in and out itself, other tiles between two casts)."""
        io = x.dtype
        dtype = torch.bfloat16 if io == torch.float32 else io
        B, A, bias = self.scales(layer, dtype)
        N, K = self.N, self.K
        lead = x.shape[:-1]
        x2 = x.reshape(-1, K)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        M = x2.shape[0]
        if M == 0:
            return x2.new_empty(*lead, N)
        bucket = -1 if M >= self.crossover else (M if M <= 2 else 1 << (M - 1).bit_length())
        run = self._runners.get((bucket, dtype))
        if run is None:
            cfg = pick_config(M, N, K, self.bits, self.r)
            run = self._runners[(bucket, dtype)] = make_runner(self.codes, self.grid, B, A, bias, M, dtype, cfg)
        if io != dtype and not getattr(run, "fp32_io", False):
            y = torch.empty(M, N, dtype=dtype, device=x.device)
            run(x2.to(dtype), y)
            return y.to(io).reshape(*lead, N)
        y = torch.empty(M, N, dtype=io, device=x.device)
        run(x2, y)
        return y.reshape(*lead, N)


def plan_of(layer) -> LayerPlan:
    """The layer's :class:`LayerPlan`, made on first use and kept on the layer (re-made if ``qweight`` was
    replaced or written since). It reads the tile table and the crossover when made: ``load_table`` first."""
    plan = layer.__dict__.get(_PLAN_ATTR)
    if plan is not None and (torch.compiler.is_compiling() or plan.fresh(layer)):
        return plan
    plan = LayerPlan(layer)
    layer.__dict__[_PLAN_ATTR] = plan
    return plan


def kernel_codes(layer) -> KernelCodes:
    """The layer's codes in the kernels' layout, repacked once and cached on the layer (re-made if
    ``qweight`` was written since or moved device)."""
    return plan_of(layer).codes


# ------------------------------------------------------------------------------------------- custom ops


@torch.library.custom_op("lords::matmul", mutates_args=())
def _matmul_op(
    x: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    grid: torch.Tensor,
    B: torch.Tensor,
    A: torch.Tensor,
    bias: torch.Tensor | None,
    bits: int,
    K: int,
) -> torch.Tensor:
    # B and A go in as stored: the kernels round them to x's dtype as they load them, so a compiled model's CUDA
    # graph holds no cast kernels for fp32 scales (two per layer and token otherwise)
    return tk.lords_matmul(x, KernelCodes(lo, hi, bits, K), grid, B, A, None if bias is None else bias.to(x.dtype))


@_matmul_op.register_fake
def _(x, lo, hi, grid, B, A, bias, bits, K):
    return x.new_empty(*x.shape[:-1], B.shape[0])


@torch.library.custom_op("lords::matmul_backward", mutates_args=())
def _matmul_backward_op(
    dy: torch.Tensor,
    x: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    grid: torch.Tensor,
    B: torch.Tensor,
    A: torch.Tensor,
    bits: int,
    K: int,
    need_dx: bool,
    need_dBA: bool,
) -> list[torch.Tensor]:
    dx, dB, dA = tk.lords_matmul_backward(
        dy, x, KernelCodes(lo, hi, bits, K), grid, B.to(x.dtype), A.to(x.dtype), need_dx, need_dBA
    )
    empty = dy.new_empty(0)
    return [
        empty if dx is None else dx,
        empty if dB is None else dB.to(B.dtype),
        empty if dA is None else dA.to(A.dtype),
    ]


@_matmul_backward_op.register_fake
def _(dy, x, lo, hi, grid, B, A, bits, K, need_dx, need_dBA):
    empty = dy.new_empty(0)
    return [
        x.new_empty(x.shape) if need_dx else empty,
        B.new_empty(B.shape) if need_dBA else empty,
        A.new_empty(A.shape) if need_dBA else empty,
    ]


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


def lords_linear(
    x: torch.Tensor, codes: KernelCodes, grid: torch.Tensor, B: torch.Tensor, A: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``x @ (grid[Q] ⊙ B·A).T + bias`` on CUDA through the Triton kernels, differentiable in x, B, A, bias."""
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or B.requires_grad or A.requires_grad or (bias is not None and bias.requires_grad)
    )
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
    plan = plan_of(layer)
    if x.shape[-1] != plan.K:
        from lords.errors import ShapeError

        raise ShapeError(f"input has {x.shape[-1]} features, layer expects {plan.K}")
    if not x.is_cuda and not tk.INTERPRET:
        from lords.errors import ConfigError

        raise ConfigError(
            "backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before importing kernels); "
            "use backend 'torch' or 'auto' on the CPU"
        )
    if (
        torch.is_grad_enabled()
        and (
            x.requires_grad
            or layer.B.requires_grad
            or layer.A.requires_grad
            or (layer.bias is not None and layer.bias.requires_grad)
        )
        or torch.compiler.is_compiling()
    ):
        if x.dtype == torch.float32:
            return lords_linear(x.to(torch.bfloat16), plan.codes, layer.grid, layer.B, layer.A, layer.bias).float()
        return lords_linear(x, plan.codes, layer.grid, layer.B, layer.A, layer.bias)
    return plan.forward(layer, x)  # fp32 x: handled by the plan (the gemv reads and writes fp32 without casts)


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


def _prepare_for_graphs(plan: LayerPlan, layer) -> None:
    """What a CUDA graph of a compiled model reads, made now in eager mode rather than during capture (where a
    cache miss would record its fill kernels into every replay and allocate in the graph's private pool): the
    code-value tables in both half dtypes and the shared scratch buffers."""
    from .lords_matmul.forward import _scratch, _xa_buffer, grid_as, prmt_table
    from .lords_matmul.tuning import rank_pad

    device = layer.B.device
    if device.type != "cuda":
        return
    _scratch(device, 1)
    for dt in (torch.float16, torch.bfloat16):
        grid_as(layer.grid, dt)
        prmt_table(layer.grid, dt)
        _xa_buffer(device, dt, plan.codes.k_pad * rank_pad(plan.r))


def use_triton(model: nn.Module, cpu_fallback: bool = False, codes_on_host: bool = False) -> nn.Module:
    """Run every LoRDSLinear of ``model`` through the Triton kernels (repacking its codes now); returns model.

    ``cpu_fallback``: CPU inputs go to the torch reference instead of being refused (a model that moves).
    ``codes_on_host``: serving. The kernels read only the plan's repacked codes, so each layer's stored ``qweight``
    (what ``state_dict`` saves and the torch reference reads) moves to host memory: the GPU holds the codes once,
    not twice (4 bits at 8B: ~3.5 GB less). Saving still works; a later ``model.to(device)`` brings ``qweight``
    back and rebuilds the plans (two copies again); the reference path and ``dequantized_weight`` then need the
    model on one device.

    Compiling: call this before ``torch.compile`` (or ``generate(cache_implementation="static")``) and after any
    device move; a compiled model uses the plans made here (see :func:`_prepare_for_graphs`)."""
    fn = _triton_or_reference if cpu_fallback else triton_forward
    for m in _lords_layers(model):
        m.set_backend(fn)
        plan = plan_of(m)
        _prepare_for_graphs(plan, m)
        if codes_on_host:
            m.qweight = m.qweight.to("cpu", copy=True)  # a new tensor also on the CPU: one code path, tested there
            plan.qweight, plan.qversion = m.qweight, m.qweight._version  # the plan still holds these codes
    return model


def use_torch(model: nn.Module) -> nn.Module:
    """Run every LoRDSLinear of ``model`` through the torch reference; returns model."""
    for m in _lords_layers(model):
        m.set_backend("torch")
    return model
