"""Serving speed of ``model.generate``: float, bitsandbytes NF4 and LoRDS (blocks 64 and 128), eager and compiled.

    python benchmarks/serving/generate.py --model smol.gguf --out-dir outputs/reports        # GPU
    python benchmarks/serving/generate.py --smoke --out-dir /tmp/serving                      # CPU, tiny model

Variants, each a copy of one float model in ``--dtype`` (fp16):
- ``float``: the model as loaded;
- ``bnb_nf4``: every decoder ``nn.Linear`` replaced by ``bitsandbytes.nn.Linear4bit`` (NF4, blocksize 64, no double
  quantization, fp16 compute: ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")``'s layers);
- ``lords``: ``lords.quantize_(model, LordsConfig(bits=4, block_size=B))`` then ``lords_kernels.use_triton(model)``;
  the scales stay fp32 as ``quantize_`` stores them (the kernels round them to fp16 as they load them).
The LM head stays float in every variant.

Modes: ``eager`` is ``generate`` as it comes (dynamic KV cache, no compile); ``compiled`` is
``generate(cache_implementation="static")`` with transformers' own compile of the decode step
(``CompileConfig(fullgraph=True, dynamic=False, mode="reduce-overhead")``: inductor + CUDA graphs; bnb falls back
to ``fullgraph=False`` if it breaks). ``quantize_`` attaches the lords HF quantizer, whose ``is_compileable`` is
False, so ``generate`` would silently run the LoRDS model eagerly: this script detaches it from its copies
(``hf_quantizer`` serves ``save_pretrained`` only) and records that in the JSON.

Timing: greedy, ``min_new_tokens = max_new_tokens`` (no early stop). ``ms_per_token = (t(long) − t(short)) /
(long − short)`` with ``t(n)`` the wall time of one ``generate`` of ``n`` new tokens after a ``--prompt``-token
prompt (CUDA synchronised), so the prefill and the per-call setup cancel. Every cell is warmed up first (compiles,
CUDA-graph recording, Triton JIT); then ``--rounds`` rounds, each timing every cell once in a fixed interleaved order;
the row holds the median over rounds and the spread (max − min). Eager and compiled greedy outputs are compared per
variant and batch (``same_tokens_as_eager``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------- variants


def to_bnb_nf4(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Every ``nn.Linear`` but the LM head → ``bnb.nn.Linear4bit`` NF4 (quantized on the move to CUDA)."""
    import bitsandbytes as bnb

    device = next(model.parameters()).device
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is nn.Linear and "lm_head" not in full:
                q = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    compute_dtype=dtype,
                    compress_statistics=False,
                    quant_type="nf4",
                    device="cpu",
                )
                q.weight = bnb.nn.Params4bit(
                    child.weight.data.to("cpu", dtype),
                    requires_grad=False,
                    compress_statistics=False,
                    quant_type="nf4",
                    blocksize=64,
                )
                if child.bias is not None:
                    q.bias = nn.Parameter(child.bias.data.to("cpu", dtype), requires_grad=False)
                setattr(mod, child_name, q.to(device))
    return model


def to_lords(model: nn.Module, block: int) -> nn.Module:
    import lords
    import lords_kernels

    lords.quantize_(model, lords.LordsConfig(bits=4, block_size=block), progress=False)
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        lords_kernels.use_triton(model)
    return model


def detach_uncompileable_quantizer(model: nn.Module) -> bool:
    """Drop an HF quantizer that vetoes generate's compile (see the module docstring); True if one was dropped."""
    q = getattr(model, "hf_quantizer", None)
    if q is not None and not q.is_compileable:
        del model.hf_quantizer
        return True
    return False


def build_variants(float_model: nn.Module, dtype: torch.dtype, kinds: list[str]) -> dict[str, dict]:
    out = {}
    for kind in kinds:
        t0 = time.perf_counter()
        m = copy.deepcopy(float_model)
        block = None
        if kind == "bnb_nf4":
            m, block = to_bnb_nf4(m, dtype), 64
        elif kind.startswith("lords"):
            block = int(kind[len("lords") :])
            m = to_lords(m, block)
        elif kind != "float":
            raise ValueError(kind)
        dropped = detach_uncompileable_quantizer(m)
        out[kind] = dict(
            model=m.eval(),
            kind="lords" if kind.startswith("lords") else kind,
            block_size=block,
            quantizer_detached=dropped,
            build_s=round(time.perf_counter() - t0, 2),
        )
    return out


# ----------------------------------------------------------------------------------------------- timing


def _generate(model, ids, n, compiled: bool, fullgraph: bool, dtype):
    from transformers import CompileConfig

    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    if compiled:
        cc = CompileConfig(fullgraph=fullgraph, dynamic=False, mode="reduce-overhead")
        if not torch.cuda.is_available():  # the CPU smoke run: dynamo's eager backend
            cc = CompileConfig(fullgraph=fullgraph, dynamic=False, backend="eager", mode=None)
            cc._compile_all_devices = True
        kw.update(cache_implementation="static", compile_config=cc)
    else:
        kw.update(disable_compile=True)
    with torch.no_grad():
        return model.generate(ids, **kw)


def _timed(model, ids, n, compiled, fullgraph, dtype):
    _sync()
    t0 = time.perf_counter()
    out = _generate(model, ids, n, compiled, fullgraph, dtype)
    _sync()
    return time.perf_counter() - t0, out


def run(args) -> dict:
    torch._dynamo.config.recompile_limit = 256
    torch._dynamo.config.accumulated_recompile_limit = 4096
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    if args.smoke:
        from lords_pipelines.models import tiny_llama

        float_model = tiny_llama(seed=0, hidden=256, intermediate=512).to(device=device, dtype=dtype)
        vocab, model_name = 512, "tiny_llama(hidden=256)"
    else:
        from lords_pipelines.models import load_model

        float_model, _tok = load_model(args.model, dtype=dtype, device=device)
        vocab, model_name = float_model.config.vocab_size, Path(args.model).name
    load_s = time.perf_counter() - t0
    kinds = [k for k in args.kinds if k != "bnb_nf4" or _has_bnb()]
    variants = build_variants(float_model, dtype, kinds)
    del float_model
    g = torch.Generator().manual_seed(0)
    prompts = {b: torch.randint(100, vocab - 1, (b, args.prompt), generator=g).to(device) for b in args.batches}
    cells = [(k, b, c) for b in args.batches for k in variants for c in (False, True) if c or not args.compiled_only]
    fullgraph = {k: True for k in variants}
    notes, outs, errors = {}, {}, {}
    start = time.perf_counter()
    # warm-up: long first, so a static cache is sized once
    for k, b, c in cells:
        m = variants[k]["model"]
        try:
            try:
                _t, out = _timed(m, prompts[b], args.long, c, fullgraph[k], dtype)
            except Exception as e:  # noqa: BLE001
                if not c or not fullgraph[k]:
                    raise
                notes[k] = (
                    f"fullgraph=True failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); fullgraph=False"
                )
                fullgraph[k] = False
                torch._dynamo.reset()
                _t, out = _timed(m, prompts[b], args.long, c, fullgraph[k], dtype)
            _timed(m, prompts[b], args.short, c, fullgraph[k], dtype)
            outs[(k, b, c)] = out.cpu()
        except Exception as e:  # noqa: BLE001
            errors[(k, b, c)] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        print(f"warm {k} b={b} compiled={c} {time.perf_counter() - start:.0f}s", flush=True)
    cells = [cell for cell in cells if cell not in errors]
    times: dict = {cell: [] for cell in cells}
    for rnd in range(args.rounds):
        for cell in cells:
            k, b, c = cell
            m = variants[k]["model"]
            ts, _ = _timed(m, prompts[b], args.short, c, fullgraph[k], dtype)
            tl, _ = _timed(m, prompts[b], args.long, c, fullgraph[k], dtype)
            times[cell].append((tl - ts) / (args.long - args.short) * 1000)
        print(f"round {rnd + 1} {time.perf_counter() - start:.0f}s", flush=True)
        if args.save is not None:  # a partial report after every round: a call cut short keeps what it had
            args.save(_report(args, model_name, load_s, variants, cells, times, outs, fullgraph, notes, errors))
        if rnd + 1 >= args.min_rounds and time.perf_counter() - start > args.budget_s:
            break
    return _report(args, model_name, load_s, variants, cells, times, outs, fullgraph, notes, errors)


def _report(args, model_name, load_s, variants, cells, times, outs, fullgraph, notes, errors) -> dict:
    rows = []
    for cell in cells:
        k, b, c = cell
        v = times[cell]
        if not v:
            continue
        same = None
        if (k, b, False) in outs and (k, b, True) in outs:
            same = bool(torch.equal(outs[(k, b, False)], outs[(k, b, True)]))
        rows.append(
            dict(
                kind=variants[k]["kind"],
                batch=b,
                block_size=variants[k]["block_size"],
                compiled=c,
                ms_per_token=round(statistics.median(v), 4),
                spread=round(max(v) - min(v), 4),
                rounds=len(v),
                samples=[round(t, 4) for t in v],
                variant=k,
                cache="static" if c else "dynamic",
                fullgraph=fullgraph[k] if c else None,
                same_tokens_as_eager=same if c else None,
            )
        )
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (smoke: timings meaningless)"
    import transformers
    import triton

    env = dict(gpu=gpu, torch=torch.__version__, triton=triton.__version__, transformers=transformers.__version__)
    try:
        import bitsandbytes

        env["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        env["bitsandbytes"] = None
    return dict(
        model=model_name,
        dtype=args.dtype,
        prompt_tokens=args.prompt,
        short=args.short,
        long=args.long,
        load_s=round(load_s, 1),
        env=env,
        rows=rows,
        notes=notes,
        errors={f"{k} b={b} compiled={c}": e for (k, b, c), e in errors.items()},
        variants={k: {kk: vv for kk, vv in v.items() if kk != "model"} for k, v in variants.items()},
        command=" ".join(sys.argv),
    )


def _has_bnb() -> bool:
    try:
        import bitsandbytes  # noqa: F401

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def render(report: dict) -> str:
    lines = [
        f"# Serving: `model.generate`, {report['model']}, {report['dtype']}, {report['env']['gpu']}",
        "",
        f"ms per new token = (t({report['long']}) − t({report['short']})) / {report['long'] - report['short']}"
        f" after a {report['prompt_tokens']}-token prompt; median of rounds, spread = max − min; greedy. "
        f"Eager: dynamic cache, no compile. Compiled: static cache, inductor reduce-overhead (CUDA graphs).",
        "",
        f"Versions: {report['env']}",
        "",
        "| kind | block | batch | compiled | ms/token | spread | rounds | × float (same mode) | tokens = eager |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = {(r["batch"], r["compiled"]): r["ms_per_token"] for r in report["rows"] if r["kind"] == "float"}
    for r in sorted(report["rows"], key=lambda r: (r["batch"], r["compiled"], r["variant"])):
        f = base.get((r["batch"], r["compiled"]))
        ratio = f"{r['ms_per_token'] / f:.2f}" if f else "—"
        same = "" if r["same_tokens_as_eager"] is None else str(r["same_tokens_as_eager"])
        lines.append(
            f"| {r['kind']} | {r['block_size'] or '—'} | {r['batch']} | {r['compiled']} | "
            f"{r['ms_per_token']:.3f} | {r['spread']:.3f} | {r['rounds']} | {ratio} | {same} |"
        )
    for k, v in report["notes"].items():
        lines.append(f"\nNote, {k}: {v}")
    for k, v in report["errors"].items():
        lines.append(f"\nError, {k}: {v}")
    lines.append(f"\nCommand: `{report['command']}`")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", default=None, help="a GGUF path, local folder or hub id (lords_pipelines.models.load_model)"
    )
    p.add_argument("--out-dir", default="outputs/reports")
    p.add_argument("--name", default="serving")
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    p.add_argument("--kinds", nargs="+", default=["float", "bnb_nf4", "lords64", "lords128"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--short", type=int, default=8)
    p.add_argument("--long", type=int, default=40)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--min-rounds", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=1e9, help="stop adding rounds past this (after --min-rounds)")
    p.add_argument("--compiled-only", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny random model (CPU: interpreter, dynamo eager backend)")
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds = args.min_rounds = min(args.rounds, 2)
        args.short, args.long, args.prompt = 2, 4, 8
        args.batches = [b for b in args.batches if b <= 2] or [1]
    elif args.model is None:
        p.error("--model is required (or --smoke)")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def save(report):
        (out / f"{args.name}.json").write_text(json.dumps(report, indent=1) + "\n")
        md = render(report)
        (out / f"{args.name}.md").write_text(md)
        return md

    args.save = save
    print(save(run(args)))


if __name__ == "__main__":
    main()
