"""The decode benchmark's model: a Llama-shaped stack of any linear kind (fp16, bnb, gemlite, LoRDS) with a KV
cache, and one captured CUDA graph per step."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.kernels.peers import Peers, make_module
from benchmarks.shapes import Shape

KIND_MODULE = {"fp16": "fp16", "bnb_nf4": "bnb_nf4", "gemlite_w4": "gemlite_w4", "lords4": "lords"}


def rms(x, w):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype) * w


def rope(t, cos, sin):
    a, b = t[..., ::2], t[..., 1::2]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), -1).flatten(-2)


class Block(nn.Module):
    def __init__(
        self, shape: Shape, kind: str, block: int | None, peers: Peers, max_batch: int, ctx: int, prefill: int
    ):
        super().__init__()
        dev, f16 = peers.device, torch.float16
        self.lin = nn.ModuleDict(
            {name: make_module(KIND_MODULE[kind], N, K, block, peers) for name, (N, K) in shape.fused_linears().items()}
        )
        self.n1 = nn.Parameter(torch.ones(shape.hidden, dtype=f16, device=dev), requires_grad=False)
        self.n2 = nn.Parameter(torch.ones(shape.hidden, dtype=f16, device=dev), requires_grad=False)
        kv = (shape.kv_heads, shape.head_dim)
        self.ck = torch.randn(max_batch, kv[0], ctx, kv[1], dtype=f16, device=dev)
        self.cv = torch.randn_like(self.ck)
        self.pk = torch.zeros(1, kv[0], prefill, kv[1], dtype=f16, device=dev)
        self.pv = torch.zeros_like(self.pk)


class Model(nn.Module):
    """``decode(h (B, 1, hidden)) -> logits (B, vocab)`` and ``prefill(h (1, T, hidden)) -> logits (1, vocab)``."""

    def __init__(
        self,
        shape: Shape,
        kind: str,
        block: int | None,
        layers: int,
        peers: Peers,
        max_batch: int,
        ctx: int,
        prefill: int,
    ):
        super().__init__()
        dev = peers.device
        self.shape = shape
        self.blocks = nn.ModuleList(Block(shape, kind, block, peers, max_batch, ctx, prefill) for _ in range(layers))
        self.head = nn.Parameter(
            torch.randn(shape.vocab, shape.hidden, dtype=torch.float16, device=dev) * 0.02, requires_grad=False
        )
        self.norm = nn.Parameter(torch.ones(shape.hidden, dtype=torch.float16, device=dev), requires_grad=False)
        inv = 1.0 / (500000.0 ** (torch.arange(0, shape.head_dim, 2, device=dev).float() / shape.head_dim))
        ang_d = (ctx - 1) * inv[None, :]
        ang_p = torch.arange(prefill, device=dev).float()[:, None] * inv[None, :]
        self.rope_d = (ang_d.cos().half(), ang_d.sin().half())
        self.rope_p = (ang_p.cos().half(), ang_p.sin().half())
        self.pos = torch.tensor([ctx - 1], device=dev)
        if kind == "lords4":
            import lords_kernels

            lords_kernels.use_triton(self, codes_on_host=True)  # the GPU holds the codes once, as a server would

    def _layer(self, blk: Block, h, cos, sin, prefill: bool):
        s = self.shape
        B, T, _ = h.shape
        x = rms(h, blk.n1)
        q, k, v = blk.lin["qkv"](x).split(
            [s.heads * s.head_dim, s.kv_heads * s.head_dim, s.kv_heads * s.head_dim], dim=-1
        )
        q = rope(q.view(B, T, s.heads, s.head_dim).transpose(1, 2), cos, sin)
        k = rope(k.view(B, T, s.kv_heads, s.head_dim).transpose(1, 2), cos, sin)
        v = v.view(B, T, s.kv_heads, s.head_dim).transpose(1, 2)
        if prefill:
            blk.pk[:, :, :T].copy_(k)
            blk.pv[:, :, :T].copy_(v)
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            ck, cv = blk.ck[:B], blk.cv[:B]
            ck.index_copy_(2, self.pos, k)
            cv.index_copy_(2, self.pos, v)
            att = F.scaled_dot_product_attention(q, ck, cv, enable_gqa=True)
        h = h + blk.lin["o"](att.transpose(1, 2).reshape(B, T, s.heads * s.head_dim))
        gate, up = blk.lin["gate_up"](rms(h, blk.n2)).split([s.intermediate, s.intermediate], dim=-1)
        return h + blk.lin["down"](F.silu(gate) * up)

    def decode(self, h):
        for blk in self.blocks:
            h = self._layer(blk, h, *self.rope_d, prefill=False)
        return F.linear(rms(h[:, -1], self.norm), self.head)

    def prefill(self, h):
        T = h.shape[1]
        cos, sin = self.rope_p[0][:T], self.rope_p[1][:T]
        for blk in self.blocks:
            h = self._layer(blk, h, cos, sin, prefill=True)
        return F.linear(rms(h[:, -1], self.norm), self.head)


class Step:
    """One (variant, step): a captured CUDA graph (``cuda``), or the eager call (CPU smoke: wall clock)."""

    def __init__(self, fn, inp, cuda: bool):
        self.fn, self.inp, self.cuda = fn, inp, cuda
        self.graph = None
        self.finite = True

    def capture(self):
        if not self.cuda:
            self.finite = bool(torch.isfinite(self.fn(self.inp).float()).all())
            return
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                self.fn(self.inp)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = self.fn(self.inp)
        g.replay()
        torch.cuda.synchronize()
        self.finite = bool(torch.isfinite(out.float()).all())
        self.graph = g

    def time_ms(self, reps: int) -> float:
        if self.cuda:
            from benchmarks.kernels.timing import median_replay_ms

            return median_replay_ms(torch, self.graph, reps)
        t0 = time.perf_counter()
        self.fn(self.inp)
        return 1e3 * (time.perf_counter() - t0)
