"""Dimensions of Llama-style decoders, the arithmetic on them that needs no torch, and Llama-3-8B / 70B.

Used by the cost model (``benchmarks.scale.cost_model``: storage, PTQ and training cost) and by the kernels' decode
benchmark (``benchmarks.kernels.decode``: a Llama-3-8B-shaped model with fused projections)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """A Llama-style decoder: ``hidden``, ``layers`` blocks, grouped-query attention, gated MLP."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool = False
    """Embedding and head share one matrix."""

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linears(self) -> dict[str, tuple[int, int]]:
        """The quantized linears of one block: ``{name: (out, in)}``."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        i = self.intermediate
        return {
            "q_proj": (h, h),
            "k_proj": (kv, h),
            "v_proj": (kv, h),
            "o_proj": (h, h),
            "gate_proj": (i, h),
            "up_proj": (i, h),
            "down_proj": (h, i),
        }

    def fused_linears(self) -> dict[str, tuple[int, int]]:
        """The same block as a server runs it, Q/K/V and gate/up each one matrix: ``{name: (out, in)}``."""
        h, kv, i = self.hidden, self.kv_heads * self.head_dim, self.intermediate
        return {"qkv": (h + 2 * kv, h), "o": (h, h), "gate_up": (2 * i, h), "down": (h, i)}

    @property
    def block_weights(self) -> int:
        return sum(n * m for n, m in self.linears().values())

    @property
    def linear_weights(self) -> int:
        """Weights that LoRDS quantizes (every decoder linear; the head stays in float, as ``lords``' default)."""
        return self.layers * self.block_weights

    @property
    def float_weights(self) -> int:
        """Embedding, head and norms: kept in float."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + (2 * self.layers + 1) * self.hidden

    @property
    def params(self) -> int:
        return self.linear_weights + self.float_weights


LLAMA3_8B = Shape("Llama-3-8B", 4096, 32, 32, 8, 14336, 128256)
LLAMA3_70B = Shape("Llama-3-70B", 8192, 80, 64, 8, 28672, 128256)
