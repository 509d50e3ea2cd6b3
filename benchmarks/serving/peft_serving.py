"""Serving speed after PEFT (the paper's Table 6): batch-1 decode and 2048-token prefill of each method's
model as a user serves it, every variant in one process on one GPU, timed interleaved.

    python -m benchmarks.serving.peft_serving peft --model _model/smol.gguf --out outputs/reports/tables   # GPU

Variants (``conf/tables/peft.yaml``'s bits, block and methods; the float model first):
- ``float``: the unquantized model (its own dtype: what the quantized variants' other layers run in too);
- ``lords_before``: LoRDS at the table's bits through its kernels (``apply_backend('auto')``), before PEFT;
- ``lords_peft``: the same model after ``serving.train_steps`` PEFT steps on ``lords_roman`` (only ``B, A`` moved:
  same modules, same kernels; the table's goal is zero added latency over ``lords_before``);
- ``<lora method>``: bitsandbytes NF4 base + peft LoRA after the same steps, adapter unmerged (peft's bnb 4-bit LoRA
  layer), and ``<lora method>_merged``: ``merge_and_unload`` (re-quantized NF4, no adapter).
The trained values do not change any variant's speed; training first makes "after PEFT" literal. Timing: round
robin over the variants, ``serving.rounds`` rounds; per round and variant, ``new_tokens`` cached greedy decode steps
after a ``prompt_tokens`` prompt (ms per token) and one forward of ``prefill_tokens`` tokens at batch 1 (tokens/s;
only the last position's logits, as a server computes them); the report gives each variant's median over rounds
and the spread (max − min). CUDA is synchronised around every timed region. On the CPU it runs (a test), but its
numbers are no speed comparison.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from lords_pipelines.evaluation.latency import _decode, _sync


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (packed codes as stored, scales, adapters, float layers). On CUDA a
    LoRDS model serves from its kernels' copy of the codes (K padded to 128 or 256 codes: up to ~11% more at
    SmolLM2's K = 576), the stored one in host memory."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


@torch.no_grad()
def prefill_seconds(model: nn.Module, ids: torch.Tensor) -> float:
    """Seconds of one batch-1 forward over ``ids (1, T)`` without a cache, computing the last position's logits."""
    _sync(ids.device)
    start = time.perf_counter()
    try:
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
    except TypeError:  # a model whose forward lacks logits_to_keep
        model(input_ids=ids, use_cache=False)
    _sync(ids.device)
    return time.perf_counter() - start


def build_variants(float_model: nn.Module, tok, spec) -> dict[str, nn.Module]:
    """``{variant: model}`` in the order the report lists them (see the module docstring)."""
    from lords_pipelines.peft_methods import merged, prepare
    from lords_pipelines.stages.common import apply_backend
    from lords_pipelines.tables.peft_tasks import load_task
    from lords_pipelines.tables.peft_train import train

    cfg = spec.serving
    items = load_task(cfg.task, tok, spec.data).train
    cuda = next(float_model.parameters()).is_cuda
    precision = spec.precision if cuda else "32-true"
    variants: dict[str, nn.Module] = {"float": float_model}
    for method in spec.methods:
        p = prepare(float_model, method, spec.bits, spec.block_size, 0, spec.alpha_ratio, spec.loftq_iters)
        if p.base == "lords":
            variants["lords_before"] = copy.deepcopy(p.model)  # the same quantized model, never trained
            apply_backend(p.model, "auto")
        train(p.model, items, tok, cfg.train_steps, cfg.batch_size, cfg.lr, 0, precision=precision)
        variants[method] = p.model.eval()
        if p.base == "lords":
            for name in ("lords_before", method):
                if cuda:  # served as a server would: the GPU holds the codes once (kernel layout)
                    import lords_kernels

                    lords_kernels.use_triton(variants[name], cpu_fallback=True, codes_on_host=True)
                else:
                    apply_backend(variants[name], "auto")
        else:  # the same trained adapter merged (merging consumes the model it is given)
            done = merged(copy.deepcopy(p.model))
            if done is not None:
                variants[f"{method}_merged"] = done.eval()
    return variants


def measure(
    variants: dict[str, nn.Module],
    prompt: torch.Tensor,
    prefill: torch.Tensor,
    rounds: int,
    new_tokens: int,
    warmup: int,
) -> dict[str, dict]:
    """Per variant: every round's decode ms per token and prefill tokens/s, rounds interleaved over variants."""
    for model in variants.values():  # kernels compiled, caches and allocator warm before any timed round
        _decode(model, prompt, warmup)
        prefill_seconds(model, prefill)
    times = {name: {"decode_ms": [], "prefill_tps": []} for name in variants}
    for _ in range(rounds):
        for name, model in variants.items():
            times[name]["decode_ms"].append(_decode(model, prompt, new_tokens) / new_tokens * 1000)
            times[name]["prefill_tps"].append(prefill.shape[1] / prefill_seconds(model, prefill))
    return times


def rows_of(times: dict[str, dict], variants: dict[str, nn.Module], spec, device: str) -> list[dict]:
    rows = []
    for name, t in times.items():
        method = name.removesuffix("_merged")
        rows.append(
            {
                "model": spec.model_label,
                "variant": name,
                "method": method,
                "merged": name.endswith("_merged"),
                "bits": None if name == "float" else spec.bits,
                "block_size": spec.block_size,
                "decode_ms_per_token": statistics.median(t["decode_ms"]),
                "decode_ms_spread": max(t["decode_ms"]) - min(t["decode_ms"]),
                "prefill_tokens_per_s": statistics.median(t["prefill_tps"]),
                "prefill_tps_spread": max(t["prefill_tps"]) - min(t["prefill_tps"]),
                "weights_mib": weight_bytes(variants[name]) / 2**20,
                "rounds": len(t["decode_ms"]),
                "device": device,
                "torch": torch.__version__,
                "times": t,
            }
        )
    return rows


def markdown(rows: list[dict], spec) -> str:
    cfg = spec.serving
    by = {r["variant"]: r for r in rows}
    lines = [
        f"# Serving after PEFT: {rows[0]['model']}, {spec.bits}-bit bases, block {spec.block_size} "
        f"({rows[0]['device']})",
        "",
        f"Batch-1 greedy decode after a {cfg.prompt_tokens}-token prompt ({cfg.new_tokens} steps, KV cache) and "
        f"one {cfg.prefill_tokens}-token prefill at batch 1, each variant after {cfg.train_steps} PEFT steps on "
        f"`{cfg.task}` (`lords_before`: untrained); eager PyTorch as `transformers` runs it, no CUDA graphs. "
        f"Median of {rows[0]['rounds']} rounds, variants interleaved in each round; spread = max − min. "
        "`python -m benchmarks.serving.peft_serving peft`.",
        "",
        "| variant | decode ms/token | spread | × lords_peft | prefill tok/s | spread | weights MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    ref = by.get("lords_peft", rows[0])["decode_ms_per_token"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['decode_ms_per_token']:.2f} | {r['decode_ms_spread']:.2f} | "
            f"{r['decode_ms_per_token'] / ref:.2f} | {r['prefill_tokens_per_s']:,.0f} | "
            f"{r['prefill_tps_spread']:,.0f} | {r['weights_mib']:.1f} |"
        )
    if "lords_peft" in by and "lords_before" in by:
        added = by["lords_peft"]["decode_ms_per_token"] / by["lords_before"]["decode_ms_per_token"] - 1
        lines += [
            "",
            f"LoRDS after PEFT against before: {added:+.1%} decode time per token (same modules and kernels; "
            f"the before-row spread is {by['lords_before']['decode_ms_spread']:.2f} ms).",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    from lords_pipelines.tables.journal import device_name
    from lords_pipelines.tables.peft import load_spec

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", nargs="?", default="peft", help="conf/tables/<table>.yaml name or a YAML path")
    p.add_argument("--model", default=None, help="override the table's model (e.g. a GGUF path on the GPU machine)")
    p.add_argument("--out", default="outputs/reports/tables", help="writes <out>/<table>_serving.{json,md}")
    args = p.parse_args(argv)
    from lords_pipelines.models import load_model

    spec = load_spec(args.table)
    spec.model = args.model or spec.model
    spec.model_label = "SmolLM2-135M-Instruct" if "smol" in str(spec.model).lower() else str(spec.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load_model(spec.model)
    model = model.to(device).eval()
    cfg = spec.serving
    t = time.time()
    variants = build_variants(model, tok, spec)
    from lords_pipelines.evaluation.scores import corpus_ids

    ids = corpus_ids(tok, spec.eval.texts[0], max(cfg.prefill_tokens, cfg.prompt_tokens)).to(device)
    times = measure(
        variants, ids[:, : cfg.prompt_tokens], ids[:, : cfg.prefill_tokens], cfg.rounds, cfg.new_tokens, cfg.warmup
    )
    rows = rows_of(times, variants, spec, device_name())
    name = Path(args.table).stem
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}_serving.json").write_text(json.dumps(rows, indent=1))
    md = markdown(rows, spec)
    (out / f"{name}_serving.md").write_text(md)
    print(md)
    print(f"done: {out / name}_serving.{{json,md}} in {(time.time() - t) / 60:.1f} min")


if __name__ == "__main__":
    main()
