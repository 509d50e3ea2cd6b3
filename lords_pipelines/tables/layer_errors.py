"""Why a PTQ table orders its methods as it does: each layer's output error on held-out calibration tokens.

    python -m lords_pipelines.tables.layer_errors ptq_bits --bits 3 --block-size 64 --model /tmp/m/smol.gguf \
        --journal outputs/reports/tables/rows/ptq_bits.jsonl --out outputs/reports/tables

For the best and the worst method of the table at one width and block (by the summed mean log-perplexity of its
rows in the journal; ``--methods`` names them instead), the model is quantized again exactly as its table row was
(calibration sample 0) and every quantized linear layer's relative output error

    ‖(W − Ŵ) Xᵀ‖ / ‖W Xᵀ‖        X: the float model's inputs to that layer

is measured on tokens of the calibration text that no sample saw (``[samples·T, (samples+1)·T)``). Writes
``<out>/<table>_layers.{json,md,png}``. AWQ folds a rescaling of each layer's inputs into the norms before it, so its
layers do not see the float model's ``X``: it is refused here rather than charged a meaningless error.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import torch
from torch import nn

from lords import quantize_
from lords_pipelines.tables.aggregate import aggregate
from lords_pipelines.tables.rows import Row, load_spec, peer_of

CANDIDATES = ("nf", "nf_calibrated", "lords_calibrated", "gptq", "hqq", "blockwise_gptq", "lords_gptq", "awq")
UNMEASURABLE = {"awq": "AWQ rescales each layer's inputs (folded into the norms): W and Ŵ see different X"}


@torch.no_grad()
def layer_output_errors(float_model: nn.Module, quant_model: nn.Module, ids: torch.Tensor) -> dict[str, float]:
    """``{layer name: ‖(W − Ŵ)Xᵀ‖ / ‖WXᵀ‖}`` for every linear layer of ``float_model`` (the LM head aside) whose
    module in ``quant_model`` differs from it; ``ids (1, T)``. Each quantized module runs on the float model's own
    input to that layer, captured by a hook as the float model runs, so no activations are stored."""
    sums: dict[str, list[float]] = {}
    hooks = []
    for name, module in float_model.named_modules():
        if not isinstance(module, nn.Linear) or name.endswith("lm_head"):
            continue
        quant = quant_model.get_submodule(name)

        def hook(mod, args, out, name=name, quant=quant):
            ref = out if mod.bias is None else out - mod.bias
            got = quant(args[0].to(next(quant.parameters()).dtype)).float()
            got = got if getattr(quant, "bias", None) is None else got - quant.bias.float()
            acc = sums.setdefault(name, [0.0, 0.0])
            acc[0] += float((got - ref.float()).pow(2).sum())
            acc[1] += float(ref.float().pow(2).sum())

        hooks.append(module.register_forward_hook(hook))
    try:
        float_model(input_ids=ids.to(next(float_model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return {name: math.sqrt(e / n) for name, (e, n) in sums.items()}


def quantized_model(float_model: nn.Module, tok, spec, row: Row, calib: torch.Tensor) -> nn.Module:
    """The model of ``row`` as the table quantizes it (library config, or the peer's library)."""
    from lords_pipelines.tables.peers import quantize_peer
    from lords_pipelines.tables.ptq import quant_config

    if peer_of(spec, row.method):
        return quantize_peer(float_model, peer_of(spec, row.method), row.bits, row.block_size, calib, tok).model
    model = copy.deepcopy(float_model)
    quantize_(model, quant_config(spec, row), calib_ids=calib if row.sample is not None else None, progress=False)
    return model.eval()


def best_and_worst(journal: Path, bits: float, block_size: int, steps: int) -> tuple[str, str]:
    """The methods (of :data:`CANDIDATES` with rows in the journal at ``bits``/``block_size``, refined rows at the
    table's ``steps``) with the lowest and the highest summed mean log-perplexity; AWQ is passed over (see
    :data:`UNMEASURABLE`)."""
    records = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    rows = [
        r
        for r in aggregate(records)
        if r["method"] in CANDIDATES
        and r["method"] not in UNMEASURABLE
        and (r["bits"], r["block_size"]) == (bits, block_size)
        and r["steps"] in (0, steps)
    ]
    if len(rows) < 2:
        raise SystemExit(f"{journal}: fewer than two methods at {bits} bits, block {block_size}")
    rows.sort(key=lambda r: sum(r["log_ppl"].values()))
    return rows[0]["method"], rows[-1]["method"]


def row_of(spec, method: str, bits: float, block_size: int) -> Row:
    from lords_pipelines.tables.rows import table_rows

    for r in table_rows(spec):
        if (r.method, r.bits, r.block_size, r.rule) == (method, bits, block_size, None) and r.sample in (None, 0):
            return r
    raise SystemExit(f"no row of {method} at {bits} bits, block {block_size} in the table's spec")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4.5))
    for method, errors in result["errors"].items():
        ax.plot(range(len(errors)), list(errors.values()), marker=".", lw=1, label=method)
    names = list(next(iter(result["errors"].values())))
    ax.set_xticks(range(0, len(names), 7), [n.split(".")[2] if n.count(".") > 2 else n for n in names[::7]])
    ax.set_xlabel("decoder layer (ticks at each layer's first linear; q, k, v, o, gate, up, down in order)")
    ax.set_ylabel("‖(W − Ŵ)Xᵀ‖ / ‖WXᵀ‖")
    ax.set_yscale("log")
    ax.set_title(f"{result['model']}: per-layer output error, {result['bits']} bits, block {result['block_size']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(result: dict) -> str:
    """The mean error of each projection kind (q, k, v, o, gate, up, down) per method, and the worst layer."""
    kinds = sorted({n.rsplit(".", 1)[-1] for e in result["errors"].values() for n in e}, key=_ORDER.index)
    lines = [
        f"# Per-layer output error: {result['model']}, {result['bits']} bits, block {result['block_size']}",
        "",
        f"‖(W − Ŵ)Xᵀ‖ / ‖WXᵀ‖ per linear layer on {result['held_out_tokens']:,} held-out tokens of "
        f"`{result['source']}` (X: the float model's inputs to the layer); rows {', '.join(result['rows'])}. "
        "Mean over the decoder layers per projection:",
        "",
        "| method | " + " | ".join(kinds) + " | all | worst layer |",
        "|" + "---|" * (len(kinds) + 3),
    ]
    for method, errors in result["errors"].items():
        by = {k: [v for n, v in errors.items() if n.endswith("." + k)] for k in kinds}
        worst = max(errors, key=errors.get)
        lines.append(
            f"| {method} | "
            + " | ".join(f"{sum(v) / len(v):.4f}" for v in by.values())
            + f" | {sum(errors.values()) / len(errors):.4f} | {worst} ({errors[worst]:.3f}) |"
        )
    return "\n".join(lines) + "\n"


_ORDER = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def render(result: dict, out: Path, table: str) -> None:
    """``<out>/<table>_layers.{json,md,png}``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{table}_layers.json").write_text(json.dumps(result, indent=1))
    (out / f"{table}_layers.md").write_text(markdown(result))
    plot(result, out / f"{table}_layers.png")
    print(markdown(result))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table")
    p.add_argument("--bits", type=float, default=3)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--methods", nargs="*", help="methods to measure (default: the journal's best and worst)")
    p.add_argument("--journal", type=Path, help="the table's rows.jsonl (to pick the best and the worst)")
    p.add_argument("--model", default=None)
    p.add_argument("--out", type=Path, default=Path("outputs/reports/tables"))
    args = p.parse_args(argv)
    bits = int(args.bits) if float(args.bits).is_integer() else args.bits
    spec = load_spec(args.table)
    methods = args.methods or list(best_and_worst(args.journal, bits, args.block_size, spec.refine.steps))
    refused = [m for m in methods if m in UNMEASURABLE]
    if refused:
        raise SystemExit(f"{refused[0]}: {UNMEASURABLE[refused[0]]}")
    rows = [row_of(spec, m, bits, args.block_size) for m in methods]

    from lords_pipelines.models import load_model
    from lords_pipelines.tables.ptq import calibration_sample

    model, tok = load_model(args.model or spec.model)
    model = model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    cache: dict = {}
    calib = calibration_sample(tok, spec, 0, cache)
    held = spec.calib.samples  # the first tokens after every sample
    from lords_pipelines.data.texts import corpus_text, tokenize

    t = spec.calib.tokens
    ids = tokenize(tok, corpus_text(spec.calib.source), t * (held + 1))[:, held * t : (held + 1) * t]
    errors = {}
    for row in rows:
        errors[row.method] = layer_output_errors(model, quantized_model(model, tok, spec, row, calib), ids)
        print(f"{row.key}: mean layer error {sum(errors[row.method].values()) / len(errors[row.method]):.4f}")
    name = str(args.model or spec.model)
    result = {
        "model": "SmolLM2-135M-Instruct" if "smol" in name.lower() else name,
        "bits": bits,
        "block_size": args.block_size,
        "rows": [r.key for r in rows],
        "held_out_tokens": int(ids.shape[1]),
        "source": spec.calib.source,
        "errors": errors,
    }
    render(result, args.out, Path(args.table).stem)


if __name__ == "__main__":
    main()
