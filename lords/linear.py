"""Quantized linear modules: ``LoRDSLinear`` (codes ⊙ B·A) and ``BlockLinear`` (codes ⊙ block scales).

Both hold packed codes, never the float weight, and each owns its checkpoint layout (``lords.layouts``): registered
under the kind ``"lords"`` / ``"blockwise"``, described by :meth:`QuantizedLinear.layout_meta`, rebuilt empty by
:meth:`QuantizedLinear.from_meta`. ``LoRDSLinear`` computes its forward through a
backend set per module by an explicit call: the torch reference below (the default, any device) or a
function handed over by ``set_backend`` (``lords_kernels.use_triton(model)`` does it for a whole model).
Nothing is registered process-wide and importing a package switches nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .blockwise import dequantize, double_dequantize, double_quantize, expand_blocks, quantize_with_scale
from .errors import CheckpointError, ConfigError, ShapeError
from .grids import SUPPORTED_BITS
from .layouts import register_layout
from .packing import pack_codes, packed_width, unpack_codes

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

Backend = Callable[["LoRDSLinear", torch.Tensor], torch.Tensor]
"""``fn(layer, x) -> y``; its ``__name__`` (or a ``backend_name`` attribute) is what ``layer.backend`` shows."""


class QuantizedLinear(nn.Module):
    """What quantized layers share: packed codes ``qweight (out, packed)`` uint8, the ``grid (2^bits,)``, an optional
    ``bias (out,)``, and the checkpoint layout of a subclass registered with ``lords.layouts.register_layout``."""

    layout_fields: ClassVar[tuple[str, ...]] = ()
    """Positive-integer constructor arguments a checkpoint records besides the sizes and bits (``("rank",)``)."""

    def __init__(self, in_features: int, out_features: int, bits: int, grid: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        if grid.shape != (2**bits,):
            raise ShapeError(f"grid must have shape ({2**bits},) at {bits} bits, got {tuple(grid.shape)}")
        self.register_buffer("qweight", torch.zeros(out_features, packed_width(in_features, bits), dtype=torch.uint8))
        self.register_buffer("grid", grid.detach().float().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.cache_weight = False
        self._cache = None

    def codes(self) -> torch.Tensor:
        """Unpacked codes ``(out, in)`` uint8."""
        return unpack_codes(self.qweight, self.bits, self.in_features)

    def set_codes(self, codes: torch.Tensor) -> None:
        if codes.shape != (self.out_features, self.in_features):
            raise ShapeError(f"codes {tuple(codes.shape)} do not match ({self.out_features}, {self.in_features})")
        self.qweight.copy_(pack_codes(codes.to(self.qweight.device), self.bits))

    def scale_matrix(self) -> torch.Tensor:
        raise NotImplementedError

    def weight_for(self, dtype: torch.dtype) -> torch.Tensor:
        """``W_hat`` in ``dtype`` for the torch path; reused while ``cache_weight`` is on, nothing
        needs gradients and no stored tensor has changed (inference-only speed-up, costs W's memory)."""
        key = (dtype, self.qweight._version, *(p._version for p in self.parameters()))
        if self.cache_weight and not torch.is_grad_enabled() and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        weight = self.grid[self.codes().long()].to(dtype) * self.scale_matrix_in(dtype)
        if self.cache_weight and not torch.is_grad_enabled():
            self._cache = (key, weight)
        return weight

    def scale_matrix_in(self, dtype: torch.dtype) -> torch.Tensor:
        return self.scale_matrix().to(dtype)

    def dequantized_weight(self) -> torch.Tensor:
        """``W_hat = grid[Q] ⊙ S``, ``(out, in)`` float32 (for tests and reference math)."""
        return dequantize(self.codes(), self.scale_matrix(), self.grid)

    def float_params(self) -> int:
        """Floats stored besides the codes (scale parameters; bias excluded)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, bias={self.bias is not None}"

    def layout_meta(self) -> dict[str, Any]:
        """The JSON fields a checkpoint records to rebuild this module empty: sizes, bits, bias, the scales' dtype
        and ``layout_fields`` (``lords.layouts.module_meta`` adds the registered kind)."""
        meta = dict(
            in_features=self.in_features,
            out_features=self.out_features,
            bits=self.bits,
            bias=self.bias is not None,
            dtype=str(self.scale_dtype).removeprefix("torch."),
        )
        meta.update({field: getattr(self, field) for field in self.layout_fields})
        return meta

    @classmethod
    def check_meta(cls, meta: dict[str, Any]) -> None:
        """Refuse, naming the field, a layout entry this class cannot be built from (``CheckpointError``)."""
        for key in ("in_features", "out_features", *cls.layout_fields):
            value = meta.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CheckpointError(f"{key}={value!r} is not a positive integer")
        if type(meta.get("bits")) is not int or meta.get("bits") not in SUPPORTED_BITS:
            raise CheckpointError(f"bits={meta.get('bits')!r} is not one of {SUPPORTED_BITS}")
        if meta.get("dtype") not in DTYPES:
            raise CheckpointError(f"dtype={meta.get('dtype')!r} is not one of {tuple(DTYPES)}")
        if not isinstance(meta.get("bias"), bool):
            raise CheckpointError(f"bias={meta.get('bias')!r} is not true or false")

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> QuantizedLinear:
        """An empty module (zeros) of the layout ``meta`` describes (checked by :meth:`check_meta`), on the current
        default device: ``cls(in_features=, out_features=, bits=, grid=, bias=, dtype=, **layout_fields)``. A subclass
        whose constructor takes other arguments overrides this."""
        dtype = DTYPES[meta["dtype"]]
        bias = torch.zeros(meta["out_features"], dtype=dtype) if meta["bias"] else None
        return cls(
            in_features=meta["in_features"],
            out_features=meta["out_features"],
            bits=meta["bits"],
            grid=torch.zeros(2 ** meta["bits"]),
            bias=bias,
            dtype=dtype,
            **{field: meta[field] for field in cls.layout_fields},
        )


@register_layout("lords")
class LoRDSLinear(QuantizedLinear):
    """``y = x · (grid[Q] ⊙ (B·A))ᵀ + bias``; ``qweight (out, packed)``, ``B (out, r)``, ``A (r, in)``."""

    layout_fields = ("rank",)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bits: int,
        grid: torch.Tensor,
        bias: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(in_features, out_features, bits, grid, bias)
        self.rank = rank
        self.B = nn.Parameter(torch.zeros(out_features, rank, dtype=dtype), requires_grad=False)
        self.A = nn.Parameter(torch.zeros(rank, in_features, dtype=dtype), requires_grad=False)
        self._backend: Backend | None = None

    @classmethod
    def from_scale(
        cls, weight: torch.Tensor, scale: nn.Module, config, grid: torch.Tensor, bias: torch.Tensor | None
    ) -> LoRDSLinear:
        """The layer for ``weight (n, m)`` under a ``LowRankScale``: nearest codes of ``W ⊘ (B·A)`` (float32),
        then ``B (n, r)``, ``A (r, m)`` stored in ``config.scale_dtype``."""
        B, A = scale.B.detach(), scale.A.detach()
        dtype = DTYPES[config.scale_dtype]
        (n, r), m = B.shape, A.shape[1]
        module = cls(m, n, r, config.bits, grid, bias, dtype=dtype).to(B.device)
        module.B.data.copy_(B.to(dtype))
        module.A.data.copy_(A.to(dtype))
        module.set_codes(quantize_with_scale(weight.float(), B @ A, grid))
        return module

    @property
    def scale_dtype(self) -> torch.dtype:
        return self.B.dtype

    def scale_matrix(self) -> torch.Tensor:
        return self.B.float() @ self.A.float()

    def float_params(self) -> int:
        return self.B.numel() + self.A.numel()

    def scale_matrix_in(self, dtype: torch.dtype) -> torch.Tensor:
        return self.B.to(dtype) @ self.A.to(dtype)

    @property
    def backend(self) -> str:
        """'torch' (the reference) or the name of the function set by :meth:`set_backend`."""
        fn = self._backend
        return "torch" if fn is None else getattr(fn, "backend_name", getattr(fn, "__name__", "custom"))

    def set_backend(self, backend: str | Backend) -> LoRDSLinear:
        """Run this layer through ``backend``: 'torch' (the reference) or ``fn(layer, x) -> y``; returns self."""
        if backend == "torch":
            self._backend = None
        elif callable(backend):
            self._backend = backend
        else:
            raise ConfigError(
                f"backend={backend!r} is not 'torch' or a function fn(layer, x) "
                "(lords_kernels.use_triton(model) sets the Triton one)"
            )
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self._backend or lords_forward_reference)(self, x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rank={self.rank}, backend={self.backend}"


def lords_forward_reference(layer: LoRDSLinear, x: torch.Tensor) -> torch.Tensor:
    """The specification: dequantize in the activation dtype, then one matmul. Gradients reach x, B, A."""
    if x.shape[-1] != layer.in_features:
        raise ShapeError(f"input has {x.shape[-1]} features, layer expects {layer.in_features}")
    weight = layer.weight_for(x.dtype)
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return F.linear(x, weight, bias)


@register_layout("blockwise")
class BlockLinear(QuantizedLinear):
    """Block-wise baseline: ``y = x · (grid[Q] ⊙ expand(scales))ᵀ + bias``; ``scales (out, ceil(in/block))``."""

    layout_fields = ("block_size",)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        block_size: int,
        bits: int,
        grid: torch.Tensor,
        bias: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(in_features, out_features, bits, grid, bias)
        self.block_size = block_size
        nb = -(-in_features // block_size)
        self.scales = nn.Parameter(torch.zeros(out_features, nb, dtype=dtype), requires_grad=False)

    @classmethod
    def from_scale(
        cls, weight: torch.Tensor, scale: nn.Module, config, grid: torch.Tensor, bias: torch.Tensor | None
    ) -> BlockLinear:
        """The layer for ``weight (n, m)`` under a ``BlockScale`` (after an int8 round trip of the scales if
        ``config.double_quant``, so quality reflects double quantization) and the nearest codes under it."""
        scales = scale.scales.detach()
        n, m = weight.shape
        if getattr(config, "double_quant", False):
            scales = double_dequantize(*double_quantize(scales), shape=scales.shape).to(weight.device)
        module = cls(m, n, config.block_size, config.bits, grid, bias).to(weight.device)
        module.scales.data.copy_(scales)
        module.set_codes(quantize_with_scale(weight.float(), expand_blocks(scales, m, config.block_size), grid))
        return module

    @property
    def scale_dtype(self) -> torch.dtype:
        return self.scales.dtype

    def scale_matrix(self) -> torch.Tensor:
        return expand_blocks(self.scales.float(), self.in_features, self.block_size)

    def float_params(self) -> int:
        return self.scales.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ShapeError(f"input has {x.shape[-1]} features, layer expects {self.in_features}")
        weight = self.weight_for(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", block_size={self.block_size}"


class cached_weights:
    """Context manager: quantized modules of ``model`` reuse their dequantized weight under no_grad
    (inference on CPU runs once per forward otherwise); the cache is dropped on exit."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]

    def __enter__(self):
        for m in self.layers:
            m.cache_weight = True
        return self

    def __exit__(self, *exc):
        for m in self.layers:
            m.cache_weight, m._cache = False, None
