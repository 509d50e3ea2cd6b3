"""End-to-end decode and prefill speed of a Llama-3-8B-shaped model with random weights, one CUDA graph per step.

    python -m benchmarks.kernels.decode [--layers 32] [--batches 1 16] [--ctx 512] [--prefill 2048] [--rounds 5]
    TRITON_INTERPRET=1 python -m benchmarks.kernels.decode --smoke --out-dir /tmp/d    # CPU: the same code, a tiny model

The model is a hand-written Llama block loop (no transformers): RMSNorm, a fused QKV projection (one 6144 × 4096
linear, split into q, k, v), grouped-query attention (32 query heads, 8 KV heads, head dim 128) over a static KV cache,
RoPE, a SwiGLU MLP with fused gate/up (one 28672 × 4096 linear, split into gate and up) and down (4096 × 14336), a
final norm and an fp16 LM head (128256 × 4096, not quantized in any variant). Weights are random: tokens/s does not
depend on their values. fp16 activations, KV cache and LM head in every variant.

Variants (only the four linear layers of each block change):

- ``fp16``: ``nn.Linear`` weights, cuBLAS.
- ``bnb_nf4`` at block 64 and 128: bitsandbytes ``quantize_4bit`` NF4, ``blocksize`` = block, no double quant,
  ``matmul_4bit``.
- ``gemlite_w4`` at block 64 and 128: ``GemLiteLinear(4, group_size=block)`` (gemlite's shipped H100 config).
- ``lords4`` at block 64 and 128: ``lords.linear.LoRDSLinear`` (4 bits, NF grid, ``B``/``A`` fp16) switched by
  ``lords_kernels.use_triton``, the project's public path: each layer's plan picks the tile table's (or the
  heuristic's) tile for the token count, dequantize + cuBLAS from the crossover.

A LoRDS layer over the concatenated QKV (or gate/up) weight is one legitimate quantized layer with its own parity rank:
``parity_rank(6144, 4096, 64) = 38`` (separate q, k, v layers would take 32 + 12 + 12), ``parity_rank(28672, 4096, 64)
= 56`` (gate and up apart: 49 + 49); each spends exactly the float budget of block-wise scales of the concatenated
weight, the budget bnb and gemlite spend on the same fused weight. At block 128 the ranks are 19 and 28.

bnb and gemlite are optional peers: a variant that cannot be built is named in ``errors``, the others run.

Steps: ``batch`` b (``--batches``, default 1 and 16): one decode step of one token per sequence, attention over a
``--ctx``-position cache (position ``ctx - 1`` written); ``"prefill"``: batch 1, ``--prefill`` tokens through every
layer in one forward, causal attention, K and V written to a prefill cache, logits for the last position only.

Protocol: every variant is built (``--layers`` blocks), warmed up eagerly on every step, then every (variant, step) is
captured in its own CUDA graph; all variants stay resident (an 8B model takes ~16 GB in fp16, ~5 GB in 4 bits).
Then ``--rounds`` rounds: each replays every graph ``--reps`` times (median) with the variants in an order rotated by
one each round; a row keeps the median over rounds and the min/max (``*_spread``). ``tokens_per_s`` = tokens per step
/ step time; ``GB_per_s`` = bytes per step / step time, bytes = the weights the step reads (``peers.weight_bytes``) +
the LM head + the KV cache read (decode) or written (prefill); activations are not counted. ``peak_mem_bytes`` =
``torch.cuda.max_memory_allocated`` over the variant's eager steps minus what was allocated before the variant was
built (other variants): its weights as stored, its caches and the steps' workspace (for LoRDS the shared dequantize
scratch, allocated again for each LoRDS variant); ``resident_bytes`` = what the built variant holds before any step.

Writes ``decode.json`` and ``decode.md`` (``python -m benchmarks.kernels.render`` re-renders the md on any machine).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time

import torch

from benchmarks.kernels import DEFAULT_TABLE
from benchmarks.kernels.decode_model import KIND_MODULE, Block, Model, Step, rms, rope  # noqa: F401
from benchmarks.kernels.peers import Peers, weight_bytes
from benchmarks.shapes import LLAMA3_8B, Shape

VARIANTS = ["fp16", "bnb_nf4@64", "bnb_nf4@128", "gemlite_w4@64", "gemlite_w4@128", "lords4@64", "lords4@128"]
"""``kind@block``; ``fp16`` has no block."""


TINY = Shape("tiny", hidden=256, layers=1, heads=4, kv_heads=2, intermediate=512, vocab=512)
"""The smoke runs' shape (head_dim 64, as Llama-3's 128 is hidden / heads)."""


def parse_variant(text: str) -> tuple[str, int | None]:
    """``"lords4@128"`` → ``("lords4", 128)``; ``"fp16"`` → ``("fp16", None)``."""
    kind, _, block = text.partition("@")
    if kind not in KIND_MODULE:
        raise ValueError(f"variant {text!r}: kind must be one of {sorted(KIND_MODULE)}")
    if kind == "fp16" and block:
        raise ValueError(f"variant {text!r}: fp16 has no block size")
    if kind != "fp16" and not block:
        raise ValueError(f"variant {text!r}: give the block size, e.g. {kind}@64")
    return kind, int(block) if block else None


def layer_weight_bytes(shape: Shape, kind: str, block: int | None) -> int:
    """Bytes of linear-layer weights one block reads per step."""
    return sum(weight_bytes(KIND_MODULE[kind], N, K, block) for N, K in shape.fused_linears().values())


def step_bytes(
    shape: Shape, layers: int, kind: str, block: int | None, batch: int | str, ctx: int, prefill: int
) -> dict:
    """Bytes one step moves: ``weights`` (the linear layers), ``head`` (fp16 LM head), ``kv`` (decode: the cache read
    at ``ctx`` positions; prefill: ``prefill`` positions written), ``total``."""
    kv_row = 2 * shape.kv_heads * shape.head_dim * 2  # K and V, fp16, one position of one sequence in one layer
    kv = layers * kv_row * (prefill if batch == "prefill" else batch * ctx)
    out = dict(weights=layers * layer_weight_bytes(shape, kind, block), head=2 * shape.vocab * shape.hidden, kv=kv)
    out["total"] = sum(out.values())
    return out


def make_row(
    kind: str,
    block: int | None,
    batch: int | str,
    tokens: int,
    step_ms: list[float],
    nbytes: dict,
    peak_mem: int | None,
    resident: int | None,
    finite: bool,
) -> dict:
    """One ``decode.json`` row from the rounds' step times (ms)."""
    ms = statistics.median(step_ms)
    return dict(
        kind=kind,
        block_size=block,
        batch=batch,
        tokens=tokens,
        step_ms=ms,
        step_ms_spread=[min(step_ms), max(step_ms)],
        tokens_per_s=tokens / (ms * 1e-3),
        GB_per_s=nbytes["total"] / (ms * 1e-3) / 1e9,
        bytes_per_step=nbytes["total"],
        weight_bytes=nbytes["weights"],
        peak_mem_bytes=peak_mem,
        resident_bytes=resident,
        rounds=len(step_ms),
        finite=finite,
    )


# ----------------------------------------------------------------------------------------------- the model


# ----------------------------------------------------------------------------------------------- timing


def _gib(nbytes: int | None) -> str:
    return "—" if nbytes is None else f"{nbytes / 2**30:.2f}"


def _mem(cuda: bool) -> int | None:
    return torch.cuda.memory_allocated() if cuda else None


def run(args) -> dict:
    from lords_kernels.lords_matmul import triton as tk
    from lords_kernels.lords_matmul.dequant import release_scratch

    cuda = torch.cuda.is_available() and not tk.INTERPRET
    dev = "cuda" if cuda else "cpu"
    shape = TINY if args.smoke else LLAMA3_8B
    if args.table and os.path.exists(args.table):
        import lords_kernels

        lords_kernels.load_table(args.table)
    else:
        args.table = None
    torch.manual_seed(0)
    peers = Peers(dev)
    variants = [parse_variant(v) for v in args.variants]
    steps = [b for b in args.batches] + (["prefill"] if args.prefill else [])
    max_batch = max(args.batches) if args.batches else 1
    out = dict(
        device=torch.cuda.get_device_name() if cuda else "cpu (smoke: timings meaningless)",
        torch=torch.__version__,
        layers=args.layers,
        ctx=args.ctx,
        prefill_tokens=args.prefill,
        shape=dict(
            hidden=shape.hidden,
            inter=shape.intermediate,
            heads=shape.heads,
            kv_heads=shape.kv_heads,
            head_dim=shape.head_dim,
            vocab=shape.vocab,
        ),
        rounds=args.rounds,
        reps=dict(decode=args.reps, prefill=args.prefill_reps),
        table=args.table,
        missing_peers=peers.missing,
        rows=[],
        errors={},
        method="random weights (timings do not depend on them); hand-written Llama block loop, QKV and "
        "gate/up fused into one linear each; one CUDA graph per (variant, step), all variants resident, "
        f"replayed in {args.rounds} alternating rounds (order rotated), median of rounds; fp16 "
        "activations, fp16 LM head and KV cache in every variant; LoRDS through use_triton with tile "
        f"table {os.path.basename(args.table) if args.table else 'none (heuristic)'}, its stored "
        "qweight in host memory (use_triton(codes_on_host=True)): the GPU holds its codes once",
    )
    t_start = time.time()
    built = {}  # name -> (model, {step: Step}, memory)
    with torch.no_grad():
        for name, (kind, block) in zip(args.variants, variants):
            try:
                if kind == "lords4":
                    release_scratch()  # each LoRDS variant's peak counts the dequantize scratch it needs
                gc.collect()
                base = _mem(cuda)
                model = Model(shape, kind, block, args.layers, peers, max_batch, args.ctx, max(args.prefill, 1))
                resident = None if base is None else _mem(cuda) - base
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                g = torch.Generator(device=dev).manual_seed(0)
                runs = {}
                for st in steps:
                    if st == "prefill":
                        inp = torch.randn(1, args.prefill, shape.hidden, generator=g, device=dev).half()
                        runs[st] = Step(model.prefill, inp, cuda)
                    else:
                        inp = torch.randn(st, 1, shape.hidden, generator=g, device=dev).half()
                        runs[st] = Step(model.decode, inp, cuda)
                    runs[st].fn(inp)  # eager warm-up: compiles, autotunes, allocates the workspace
                if cuda:
                    torch.cuda.synchronize()
                peak = None if base is None else torch.cuda.max_memory_allocated() - base
                built[name] = (model, runs, dict(peak=peak, resident=resident))
                print(
                    f"{name:<15} built: resident {_gib(resident)} GiB, peak {_gib(peak)} GiB "
                    f"({time.time() - t_start:.0f} s)",
                    flush=True,
                )
            except Exception as e:  # a missing or failing peer: say so, go on
                out["errors"][name] = repr(e)[:300]
                print(f"{name}: failed {e!r}"[:300], flush=True)
                built.pop(name, None)
                model = runs = None
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
        for name, (_, runs, _) in list(built.items()):
            for st, step in list(runs.items()):
                try:
                    step.capture()
                except Exception as e:
                    out["errors"][f"{name} {st} capture"] = repr(e)[:300]
                    del runs[st]
        print(f"captured ({time.time() - t_start:.0f} s)", flush=True)
        times = {(n, st): [] for n, (_, runs, _) in built.items() for st in runs}
        names = list(built)
        for i in range(args.rounds):
            if i and time.time() - t_start > args.budget_s:
                out["stopped"] = f"budget of {args.budget_s} s spent after {i} rounds"
                break
            shift = i % max(1, len(names))
            for name in names[shift:] + names[:shift]:
                for st, step in built[name][1].items():
                    reps = args.prefill_reps if st == "prefill" else args.reps
                    try:
                        times[(name, st)].append(step.time_ms(reps))
                    except Exception as e:
                        out["errors"].setdefault(f"{name} {st} replay", repr(e)[:300])
    for name, (kind, block) in zip(args.variants, variants):
        if name not in built:
            continue
        _, runs, mem = built[name]
        for st, step in runs.items():
            if not times[(name, st)]:
                continue
            tokens = args.prefill if st == "prefill" else st
            row = make_row(
                kind,
                block,
                st,
                tokens,
                times[(name, st)],
                step_bytes(shape, args.layers, kind, block, st, args.ctx, args.prefill),
                mem["peak"],
                mem["resident"],
                step.finite,
            )
            out["rows"].append(row)
            print(
                f"{name:<15} {str(st):>7}: {row['step_ms']:9.3f} ms  {row['tokens_per_s']:10.1f} tok/s  "
                f"{row['GB_per_s']:6.0f} GB/s",
                flush=True,
            )
    out["wall_s"] = time.time() - t_start
    del built
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "decode.json"), "w") as fh:
        json.dump(out, fh, indent=1)
    from benchmarks.kernels.render import render_decode

    render_decode(out, args.out_dir)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--batches", type=int, nargs="*", default=[1, 16])
    p.add_argument("--ctx", type=int, default=512, help="KV cache positions a decode step attends to")
    p.add_argument("--prefill", type=int, default=2048, help="prefill tokens (batch 1); 0: no prefill row")
    p.add_argument("--variants", nargs="+", default=VARIANTS, help="kind@block, e.g. lords4@128; fp16 alone")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=20, help="graph replays per decode measurement (median)")
    p.add_argument("--prefill-reps", type=int, default=5, help="graph replays per prefill measurement (median)")
    p.add_argument("--budget-s", type=float, default=1e9, help="start no new round after this many seconds")
    p.add_argument("--table", default=str(DEFAULT_TABLE))
    p.add_argument("--out-dir", default=os.path.join("outputs", "reports"))
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny model, 1 layer, batches 1 and 4, ctx 16, 512-token prefill, 1 round (CPU interpreter)",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.layers, args.batches, args.ctx, args.prefill, args.rounds, args.reps, args.prefill_reps = (
            1,
            [1, 4],
            16,
            512,
            1,
            1,
            1,
        )
    for v in args.variants:
        try:
            parse_variant(v)
        except ValueError as e:
            p.error(str(e))
    return run(args)


if __name__ == "__main__":
    main()
