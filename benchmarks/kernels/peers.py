"""What the benchmarks time, beside the timing itself: random LoRDS layers, cuBLAS fp16 weights, bitsandbytes NF4 and
gemlite w4 (the optional peers: a missing one is named in the output, never fatal), and the bytes each reads per call.

Weights are random: timings do not depend on the values (zeros are avoided on purpose). The module makers used by the
decode benchmark scale every variant's dequantized weight to a standard deviation near 0.02, as for the fp16 weights,
so that a 32-layer random model stays finite in fp16.

Block sizes: the peers quantize with one scale per ``block`` inputs (bnb ``blocksize``, gemlite ``group_size``); LoRDS
takes the parity rank of that block size (``lords.lowrank.parity_rank``: the same number of scale floats), at least 1.
"""

from __future__ import annotations

import os
import types

import torch
from torch import nn

from lords.lowrank import parity_rank

BLOCK = 64  # the default float budget: block-wise scales of 64 inputs, like the NF4 and gemlite peers
KINDS = ("fp16", "bnb_nf4", "gemlite_w4", "lords")


def lords_rank(N: int, K: int, block: int = BLOCK) -> int:
    """LoRDS rank for a layer ``N × K`` (out × in) at the float budget of ``block``-wise scales (at least 1)."""
    return max(1, parity_rank(N, K, block))


def weight_bytes(kind: str, N: int, K: int, block: int | None = BLOCK, bits: int = 4) -> int:
    """Bytes of weight data one call of an ``N × K`` layer reads.

    - ``fp16``: ``2·N·K``.
    - ``bnb_nf4``: 4-bit codes + one fp32 absmax per block (no double quantization): ``N·K/2 + 4·N·K/block``.
    - ``gemlite_w4``: 4-bit codes + an fp16 scale and an fp16 zero per group: ``N·K/2 + 4·N·K/block``.
    - ``lords``: ``bits``-bit codes + ``B (N, r)`` and ``A (r, K)`` in fp16 at the parity rank of ``block``.
    """
    if kind == "fp16":
        return 2 * N * K
    if kind in ("bnb_nf4", "gemlite_w4"):
        return N * K // 2 + 4 * (N * K // block)
    if kind == "lords":
        return N * K * bits // 8 + 2 * lords_rank(N, K, block) * (N + K)
    raise ValueError(f"kind={kind!r} is not one of {KINDS}")


def lords_bytes(N: int, K: int, bits: int, block: int = BLOCK) -> int:
    return weight_bytes("lords", N, K, block, bits)


def lords_layers(torch, N, K, bits, copies, dtype, r=None, device="cuda"):
    """``copies`` random LoRDS layers (namespaces the Triton backend accepts) of rank ``r`` (default: parity at block
    64) on ``device``."""
    from lords.grids import make_grid
    from lords.packing import pack_codes

    r = r or lords_rank(N, K)
    grid = make_grid("nf", bits).to(device)
    layers = []
    for i in range(copies):
        g = torch.Generator(device=device).manual_seed(i)
        codes = torch.randint(0, 2**bits, (N, K), device=device, generator=g, dtype=torch.uint8)
        layers.append(
            types.SimpleNamespace(
                qweight=pack_codes(codes, bits),
                grid=grid,
                bits=bits,
                in_features=K,
                out_features=N,
                bias=None,
                B=(torch.randn(N, r, device=device, generator=g) / r**0.5).to(dtype),
                A=(torch.rand(r, K, device=device, generator=g) + 0.5).to(dtype),
            )
        )
    return layers


class Peers:
    """The optional peers, imported once: ``missing`` names those that are not importable (and why)."""

    def __init__(self, device: str = "cuda"):
        self.device = device
        self.missing = {}
        try:
            import bitsandbytes  # noqa: F401
            import bitsandbytes.functional as bf

            self.bnb, self.bf = bitsandbytes, bf
        except Exception as e:  # a peer, optional: report and go on
            self.bnb = None
            self.missing["bnb_nf4"] = repr(e)[:200]
        self.gemlite = None
        if device != "cuda":
            self.missing["gemlite_w4"] = "gemlite runs on CUDA only"
            return
        try:
            import gemlite
            from gemlite.core import DType, GemLiteLinear

            cfg = os.path.join(os.path.dirname(gemlite.__file__), "configs", "h100.json")
            if os.path.exists(cfg):
                gemlite.load_config(cfg)
            self.gemlite, self.GemLiteLinear, self.DType = gemlite, GemLiteLinear, DType
        except Exception as e:
            self.missing["gemlite_w4"] = repr(e)[:200]

    # ------------------------------------------------------------------ quantized weights
    def bnb_quantize(self, torch, N, K, block=BLOCK, std=1.0):
        """``(qW, quant_state)``: NF4 of a random ``N × K`` fp16 weight, ``blocksize=block``, no double quant."""
        W = torch.randn(N, K, dtype=torch.float16, device=self.device) * std
        qW, st = self.bf.quantize_4bit(W, blocksize=block, quant_type="nf4", compress_statistics=False)
        return qW, st

    def gemlite_layer(self, torch, N, K, block=BLOCK, scale=None):
        """A packed ``GemLiteLinear(4, group_size=block)`` with random codes; ``scale`` sets the group scales
        (default: uniform in [1e-3, 1.1e-2], as the kernel benchmark always used)."""
        lin = self.GemLiteLinear(
            4,
            group_size=block,
            in_features=K,
            out_features=N,
            input_dtype=self.DType.FP16,
            output_dtype=self.DType.FP16,
        )
        W_q = torch.randint(0, 16, (N, K), dtype=torch.uint8, device=self.device)
        if scale is None:
            scales = (torch.rand(N, K // block, device=self.device) * 0.01 + 1e-3).half()
        else:
            scales = torch.full((N, K // block), scale, device=self.device).half()
        zeros = torch.full((N, K // block), 7.5, device=self.device).half()
        lin.pack(W_q, scales, zeros, bias=None)
        return lin

    # ------------------------------------------------------------------ call lists for the kernel benchmark
    def bnb_fns(self, torch, N, K, cur, copies, block=BLOCK):
        objs = [self.bnb_quantize(torch, N, K, block) for _ in range(copies)]
        return [(lambda qW=qW, st=st: self.bnb.matmul_4bit(cur["x"], qW.t(), quant_state=st)) for qW, st in objs]

    def gemlite_fns(self, torch, N, K, cur, copies, block=BLOCK):
        layers = [self.gemlite_layer(torch, N, K, block) for _ in range(copies)]
        return [(lambda lin=lin: lin(cur["x"])) for lin in layers]


# ---------------------------------------------------------------------------------- modules for the decode benchmark


def make_module(kind: str, N: int, K: int, block: int | None, peers: Peers, std: float = 0.02):
    """One random ``N × K`` linear layer (no bias) of ``kind`` as an ``nn.Module`` taking fp16 ``x (..., K)``.

    LoRDS is a real ``lords.linear.LoRDSLinear`` (4 bits, NF grid, ``B``/``A`` fp16 at the parity rank of ``block``):
    the caller hands the model to ``lords_kernels.use_triton`` so that it runs the project's public path."""
    dev = peers.device
    if kind == "fp16":
        lin = nn.Linear(K, N, bias=False, dtype=torch.float16, device=dev)
        with torch.no_grad():
            lin.weight.normal_(0.0, std)
        return lin
    if kind == "bnb_nf4":
        if peers.bnb is None:
            raise RuntimeError(f"bitsandbytes is not importable: {peers.missing.get('bnb_nf4')}")
        return _BnbNF4(peers, *peers.bnb_quantize(torch, N, K, block, std=std))
    if kind == "gemlite_w4":
        if peers.gemlite is None:
            raise RuntimeError(f"gemlite is not importable: {peers.missing.get('gemlite_w4')}")
        return peers.gemlite_layer(torch, N, K, block, scale=std / 4.6)  # (code - 7.5) has std 4.6 on 0..15
    if kind == "lords":
        from lords.grids import make_grid
        from lords.linear import LoRDSLinear

        r = lords_rank(N, K, block)
        with torch.device(dev):
            layer = LoRDSLinear(K, N, r, 4, make_grid("nf", 4), dtype=torch.float16)
        with torch.no_grad():  # random bytes are random 4-bit codes; NF codes have std 0.58, A ≈ 1
            layer.qweight.copy_(torch.randint(0, 256, layer.qweight.shape, dtype=torch.uint8, device=dev))
            layer.B.normal_(0.0, std / 0.58 / r**0.5)
            layer.A.uniform_(0.5, 1.5)
        return layer
    raise ValueError(f"kind={kind!r} is not one of {KINDS}")


class _BnbNF4(nn.Module):
    """``bnb.matmul_4bit`` on one NF4 weight (what ``bnb.nn.Linear4bit`` calls at inference)."""

    def __init__(self, peers: Peers, qW, state):
        super().__init__()
        self.matmul_4bit = peers.bnb.matmul_4bit
        self.register_buffer("qweight", qW)
        self.state = state

    def forward(self, x):
        return self.matmul_4bit(x, self.qweight.t(), quant_state=self.state)
