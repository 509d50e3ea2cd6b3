"""End-to-end decode speed of a Llama-3-8B-shaped model with random weights, one CUDA graph per step.

    python -m lords_kernels.decode [--layers 32] [--batches 1 16] [--ctx 512]

A hand-written minimal Llama block loop (no transformers): RMSNorm, q/k/v/o projections with grouped-query
attention (32 query heads, 8 KV heads, head dim 128) over a static KV cache of ``ctx`` positions, RoPE, SwiGLU MLP
(4096 → 14336 → 4096), final norm and an fp16 LM head (128256 × 4096, not quantized in any variant). Only the seven
linear layers of each block change between variants: cuBLAS fp16, bitsandbytes NF4 (blocksize 64, no double
quant) and LoRDS 4-bit (parity rank at block 64, NF grid, Triton kernels). Weights are random: tokens/s does not
depend on them. Reports tokens/s (batch / step time) and achieved GB/s (weights + KV cache read per step / time).
Writes outputs/reports/decode.json and decode.md.
"""
from __future__ import annotations

import argparse
import json
import os
import types

import torch
import torch.nn.functional as F

from lords_kernels.bench import BLOCK, median_replay_ms
from lords.lowrank import parity_rank

HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 4096, 14336, 32, 8, 128, 128256
LINEARS = {"q": (4096, 4096), "k": (1024, 4096), "v": (1024, 4096), "o": (4096, 4096),
           "gate": (14336, 4096), "up": (14336, 4096), "down": (4096, 14336)}




def make_linear(kind: str, N: int, K: int):
    """``(fn(x) -> y, bytes read per call)`` for one linear layer of the given kind."""
    if kind == "fp16":
        W = torch.randn(N, K, dtype=torch.float16, device="cuda") * 0.02
        return (lambda x: F.linear(x, W)), W.numel() * 2
    if kind == "bnb_nf4":
        import bitsandbytes as bnb
        import bitsandbytes.functional as bf

        W = torch.randn(N, K, dtype=torch.float16, device="cuda") * 0.02
        qW, st = bf.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=False)
        del W
        return (lambda x: bnb.matmul_4bit(x, qW.t(), quant_state=st)), qW.numel() + st.absmax.numel() * 4
    if kind == "lords4":
        import lords_kernels
        from lords.grids import make_grid
        from lords.packing import pack_codes

        r = parity_rank(N, K, BLOCK)
        layer = types.SimpleNamespace(
            qweight=pack_codes(torch.randint(0, 16, (N, K), device="cuda", dtype=torch.uint8), 4),
            grid=make_grid("nf", 4).cuda(), bits=4, in_features=K, out_features=N, bias=None,
            B=(torch.randn(N, r, device="cuda") * 0.05).half(), A=(torch.rand(r, K, device="cuda") + 0.5).half())
        lords_kernels.kernel_codes(layer)
        return (lambda x: lords_kernels.triton_forward(layer, x)), N * K // 2 + 2 * r * (N + K)
    raise ValueError(kind)


class Model:
    def __init__(self, kind: str, layers: int, batch: int, ctx: int):
        self.layers, self.bytes = [], 0
        for _ in range(layers):
            lin = {}
            for name, (N, K) in LINEARS.items():
                lin[name], nbytes = make_linear(kind, N, K)
                self.bytes += nbytes
            cache_k = torch.randn(batch, KV_HEADS, ctx, HEAD_DIM, dtype=torch.float16, device="cuda")
            cache_v = torch.randn_like(cache_k)
            self.bytes += 2 * cache_k.numel() * 2
            self.layers.append((lin, torch.ones(HIDDEN, dtype=torch.float16, device="cuda"),
                                torch.ones(HIDDEN, dtype=torch.float16, device="cuda"), cache_k, cache_v))
        self.head = torch.randn(VOCAB, HIDDEN, dtype=torch.float16, device="cuda") * 0.02
        self.bytes += self.head.numel() * 2
        self.norm = torch.ones(HIDDEN, dtype=torch.float16, device="cuda")
        inv = 1.0 / (500000.0 ** (torch.arange(0, HEAD_DIM, 2, device="cuda").float() / HEAD_DIM))
        ang = (ctx - 1) * inv
        self.cos, self.sin = ang.cos().half(), ang.sin().half()
        self.pos = torch.tensor([ctx - 1], device="cuda")

    @staticmethod
    def rms(x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).half() * w

    def rope(self, t):
        a, b = t[..., ::2], t[..., 1::2]
        return torch.stack((a * self.cos - b * self.sin, a * self.sin + b * self.cos), -1).flatten(-2)

    def step(self, h):
        """One decode step for ``h (batch, 1, hidden)`` → logits ``(batch, vocab)``."""
        B = h.shape[0]
        for lin, n1, n2, ck, cv in self.layers:
            x = self.rms(h, n1)
            q = lin["q"](x).view(B, 1, HEADS, HEAD_DIM).transpose(1, 2)
            k = lin["k"](x).view(B, 1, KV_HEADS, HEAD_DIM).transpose(1, 2)
            v = lin["v"](x).view(B, 1, KV_HEADS, HEAD_DIM).transpose(1, 2)
            q, k = self.rope(q), self.rope(k)
            ck.index_copy_(2, self.pos, k)
            cv.index_copy_(2, self.pos, v)
            att = F.scaled_dot_product_attention(q, ck, cv, enable_gqa=True)
            h = h + lin["o"](att.transpose(1, 2).reshape(B, 1, HIDDEN))
            x = self.rms(h, n2)
            h = h + lin["down"](F.silu(lin["gate"](x)) * lin["up"](x))
        return F.linear(self.rms(h, self.norm)[:, -1], self.head)


def time_step(model: Model, batch: int, reps: int = 20) -> float:
    h = torch.randn(batch, 1, HIDDEN, dtype=torch.float16, device="cuda")
    with torch.no_grad():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                model.step(h)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = model.step(h)
        g.replay()
        torch.cuda.synchronize()
        assert torch.isfinite(out.float()).all()
        ms = median_replay_ms(torch, g, reps)
    del g
    return ms * 1e-3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--kinds", nargs="+", default=["fp16", "bnb_nf4", "lords4"])
    p.add_argument("--table", default=os.path.join(os.path.dirname(__file__), "lords_matmul", "tuned_h100.json"))
    p.add_argument("--out-dir", default=os.path.join("outputs", "reports"))
    args = p.parse_args(argv)
    import lords_kernels

    if os.path.exists(args.table):
        lords_kernels.load_table(args.table)
    torch.manual_seed(0)
    rows = []
    for kind in args.kinds:
        for batch in args.batches:
            try:
                model = Model(kind, args.layers, batch, args.ctx)
                t = time_step(model, batch)
            except Exception as e:  # a missing peer: say so, go on
                print(f"{kind} batch {batch}: failed {e!r}"[:300], flush=True)
                rows.append(dict(kind=kind, batch=batch, error=repr(e)[:300]))
                continue
            row = dict(kind=kind, batch=batch, step_ms=t * 1e3, tokens_per_s=batch / t,
                       GB_per_s=model.bytes / t / 1e9, bytes_per_step=model.bytes)
            rows.append(row)
            print(f"{kind:8} batch {batch:3}: {row['step_ms']:.3f} ms/step  {row['tokens_per_s']:.1f} tok/s  "
                  f"{row['GB_per_s']:.0f} GB/s", flush=True)
            del model
            torch.cuda.empty_cache()
    out = dict(device=torch.cuda.get_device_name(), layers=args.layers, ctx=args.ctx, rows=rows,
               method="random weights; hand-written Llama-3-8B-shaped block loop; one CUDA graph per decode step, "
                      "median of replays; fp16 activations, fp16 LM head and KV cache in every variant")
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "decode.json"), "w") as fh:
        json.dump(out, fh, indent=1)
    render(out, args.out_dir)


def render(out, out_dir):
    base = {(r["batch"]): r for r in out["rows"] if r["kind"] == "fp16" and "error" not in r}
    bnb = {(r["batch"]): r for r in out["rows"] if r["kind"] == "bnb_nf4" and "error" not in r}
    lines = [f"# End-to-end decode on {out['device']}", "",
             f"{out['layers']} Llama-3-8B-shaped layers, context {out['ctx']}. {out['method']}.", "",
             "| linears | batch | ms/step | tokens/s | GB/s | × fp16 | × bnb NF4 |", "|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        if "error" in r:
            lines.append(f"| {r['kind']} | {r['batch']} | failed: {r['error'][:80]} | | | | |")
            continue
        f16, bb = base.get(r["batch"]), bnb.get(r["batch"])
        x16 = f"{r['tokens_per_s'] / f16['tokens_per_s']:.2f}" if f16 else "—"
        xbb = f"{r['tokens_per_s'] / bb['tokens_per_s']:.2f}" if bb else "—"
        lines.append(f"| {r['kind']} | {r['batch']} | {r['step_ms']:.3f} | {r['tokens_per_s']:.1f} | "
                     f"{r['GB_per_s']:.0f} | {x16} | {xbb} |")
    with open(os.path.join(out_dir, "decode.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
