"""The PTQ tables of the paper on one model: bit widths, the refinement ablation, the rank ablation.

    python -m lords_pipelines.tables.ptq ptq_bits ptq_refine_ablation ptq_rank_ablation --out outputs/reports/tables
    python -m lords_pipelines.tables.ptq ptq_bits_cpu                 # the CPU-sized subset (2 cores)
    python -m lords_pipelines.tables.ptq ptq_bits --model /tmp/m/smol.gguf --only 'lords_.*_b3_'

Each table is ``conf/tables/<table>.yaml`` (rows: ``lords_pipelines.tables.rows``). The model loads once; every
row quantizes a fresh copy of it with the library config that the Hydra ``quant`` group builds (the same configs
the ``ptq`` stage runs), then scores perplexity on each evaluation text and zero-shot accuracy on the shipped
tasks. Each finished row is appended to ``<run-dir>/<table>/rows.jsonl`` at once: a rerun with the same
``--run-dir`` skips the rows it holds, so a crash loses one row at most.
"""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lords import QuantConfig, QuantizedLinear, quantize_
from lords_pipelines import CONF
from lords_pipelines.data.texts import corpus_text, tokenize
from lords_pipelines.evaluation.multiple_choice import zero_shot
from lords_pipelines.evaluation.scores import corpus_ids, corpus_perplexity
from lords_pipelines.tables.render import write_table
from lords_pipelines.tables.rows import Row, load_spec, overrides, peer_of, table_rows
from lords_pipelines.tables.runner import check_only, device_name, run_dir_of, table_cli  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # annotations only: transformers loads with the model
    from transformers import PreTrainedTokenizerBase


def quant_config(spec: DictConfig, row: Row) -> QuantConfig:
    """The library config of ``row``: the ``ptq`` config composed with the row's ``quant`` overrides."""
    from hydra import compose, initialize_config_dir

    from lords_pipelines.stages.settings import build_quant

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("ptq", overrides=overrides(spec, row))
    return build_quant(OmegaConf.to_container(cfg.quant, resolve=True))


def calibration_sample(
    tok: PreTrainedTokenizerBase, spec: DictConfig, k: int, cache: dict, tokens: int | None = None
) -> torch.Tensor:
    """Tokens ``[k·T, (k+1)·T)`` of the calibration text (``T = tokens or calib.tokens``): samples never overlap."""
    t = tokens or spec.calib.tokens
    if "ids" not in cache:
        cache["ids"] = tokenize(tok, corpus_text(spec.calib.source))
    ids = cache["ids"][:, k * t : (k + 1) * t]
    if ids.shape[1] < t:
        raise ValueError(
            f"calibration text {spec.calib.source!r} holds {cache['ids'].shape[1]:,} tokens: too few for sample {k} "
            f"of {t:,}"
        )
    return ids


def evaluate_row(model: nn.Module, tok: PreTrainedTokenizerBase, spec: DictConfig, cache: dict) -> dict:
    """Perplexity on each of the spec's texts and zero-shot accuracy on its tasks."""
    ppl, tokens = {}, {}
    for text in spec.eval.texts:
        if text not in cache:
            cache[text] = corpus_ids(tok, text, spec.eval.tokens)
        ppl[text], tokens[text] = corpus_perplexity(model, tok, text, spec.eval.tokens, ids=cache[text])
    acc = zero_shot(model, tok, tuple(spec.eval.tasks), spec.eval.task_limit, spec.eval.batch_size)
    return {"ppl": ppl, "ppl_tokens": tokens, **acc}


def run_row(
    float_model: nn.Module, tok: PreTrainedTokenizerBase, spec: DictConfig, row: Row, cache: dict, out: Path
) -> dict:
    """One row's record: a fresh copy of ``float_model`` quantized (or QAT-trained) as the row says, scored."""
    from lords_pipelines.stages.common import storage_metrics

    t = time.time()
    record = {"model": spec.model_label, **row.to_dict(), "device": device_name(), "torch": torch.__version__}
    if row.method == "fp":
        model = float_model
        record.update(float_params=0, bits_per_weight=16.0, code_bits=None, weight_rel_error=0.0, rank=None)
    elif peer_of(spec, row.method):
        from lords_pipelines.tables.peers import quantize_peer

        calib = calibration_sample(tok, spec, row.sample, cache, row.calib_tokens) if row.sample is not None else None
        peer = quantize_peer(float_model, peer_of(spec, row.method), row.bits, row.block_size, calib, tok)
        model = peer.model
        record.update(
            float_params=peer.float_params,
            bits_per_weight=peer.bits_per_weight,
            code_bits=peer.code_bits,
            weight_rel_error=peer.weight_rel_error,
            rank=None,
            library=peer.library,
        )
    elif spec.method_defs[row.method].get("qat"):
        from lords_pipelines.tables.qat_rows import run_qat

        model, fields = run_qat(spec, row, out / "runs" / row.key)
        model = model.to(next(float_model.parameters()).device).eval()
        layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
        ranks = [m.rank for m in layers.values() if getattr(m, "rank", None)]
        reference = {n: float_model.get_submodule(n).weight.detach().float() for n in layers}
        err = sum(float((reference[n] - m.dequantized_weight()).pow(2).sum()) for n, m in layers.items())
        norm = sum(float(w.pow(2).sum()) for w in reference.values())
        record.update(
            fields,
            float_params=sum(m.float_params() for m in layers.values()),
            weight_rel_error=(err / norm) ** 0.5,
            rank=round(sum(ranks) / len(ranks), 2) if ranks else None,
            **storage_metrics(model),
        )
    else:
        config = quant_config(spec, row)
        model = copy.deepcopy(float_model)
        calib = calibration_sample(tok, spec, row.sample, cache, row.calib_tokens) if row.sample is not None else None
        report = quantize_(model, config, calib_ids=calib, progress=False)
        ranks = [lay.rank for lay in report.layers if lay.rank is not None]
        record.update(
            float_params=report.float_params,
            weight_rel_error=report.rel_error,
            **storage_metrics(model),
            rank=round(sum(ranks) / len(ranks), 2) if ranks else None,
            config=config.to_dict(),
        )
    record["quant_seconds"] = time.time() - t
    record.update(evaluate_row(model, tok, spec, cache))
    record["seconds"] = time.time() - t
    del model
    return record


def run_table(
    table: str, run_dir: Path, model_name: str | None, only: str | None, loaded: dict, render_only: bool = False
) -> tuple[list[dict], list[str]]:
    """``(records, missing)``: the journal's records of the table's rows in spec order, after running those it
    lacks; with ``render_only`` nothing runs and ``missing`` names the rows the journal lacks (rendered as such)."""
    from tqdm.auto import tqdm

    spec = load_spec(table)
    table = Path(table).stem
    if model_name:
        spec.model = model_name
    spec.model_label = "SmolLM2-135M-Instruct" if "smol" in str(spec.model).lower() else str(spec.model)
    rows = [r for r in table_rows(spec) if r.method == "fp" or not only or re.search(only, r.key)]
    out = run_dir / table
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.yaml").write_text(OmegaConf.to_yaml(spec))
    journal = out / "rows.jsonl"
    done = {}
    if journal.is_file():
        done = {
            r["key"]: r
            for r in map(json.loads, journal.read_text().splitlines())
            if r.get("eval_tokens") == spec.eval.tokens
        }
    todo = [r for r in rows if r.key not in done]
    if render_only:
        if todo:
            print(
                f"{journal}: {len(todo)} rows of the spec not run yet (first: {todo[0].key}); rendering the rest",
                flush=True,
            )
        return [done[r.key] for r in rows if r.key in done], [r.key for r in todo]
    print(f"{table}: {len(rows)} rows, {len(rows) - len(todo)} already in {journal}", flush=True)
    if todo and spec.model not in loaded:
        from lords_pipelines.models import load_model

        device = "cuda" if torch.cuda.is_available() else "cpu"
        model, tok = load_model(spec.model)
        loaded[spec.model] = (model.to(device).eval(), tok)
    cache: dict = {}
    skipped = []
    for row in [r for r in todo if peer_of(spec, r.method)]:
        from lords_pipelines.tables.peers import unavailable

        reason = unavailable(peer_of(spec, row.method), loaded[spec.model][0], row.block_size)
        if reason:  # kept in the report as not run, with the reason
            print(f"  {row.key}: not run: {reason}", flush=True)
            skipped.append(f"{row.key} ({reason})")
            todo.remove(row)
    bar = tqdm(todo, desc=table, unit="row")
    for row in bar:
        bar.set_postfix_str(row.key)
        model, tok = loaded[spec.model]
        record = run_row(model, tok, spec, row, cache, out) | {"key": row.key, "eval_tokens": spec.eval.tokens}
        with journal.open("a") as f:
            f.write(json.dumps(record) + "\n")
        done[row.key] = record
        print(
            f"  {row.key}: ppl "
            + ", ".join(f"{k} {v:.2f}" for k, v in record["ppl"].items())
            + f"; zero-shot {record.get('zero_shot_mean', float('nan')):.3f}; {record['seconds']:.0f} s",
            flush=True,
        )
    return [done[r.key] for r in rows if r.key in done], skipped


def main(argv: list[str] | None = None) -> None:
    args = table_cli(
        __doc__,
        "ptq_tables",
        "regex over row keys: run only those (the fp row always runs)",
        dict(names=["tables"], nargs="+", help="conf/tables/<table>.yaml names, e.g. ptq_bits ptq_refine_ablation"),
    ).parse_args(argv)
    check_only(args.only, [r.key for t in args.tables for r in table_rows(load_spec(t)) if r.method != "fp"], "rows")
    run_dir = run_dir_of(args, "ptq_tables")
    loaded: dict = {}
    t = time.time()
    for table in args.tables:
        t_table = time.time()
        records, missing = run_table(table, run_dir, args.model, args.only, loaded, render_only=args.render)
        spec = load_spec(table)
        table = Path(table).stem
        devices = sorted({r.get("device") or device_name() for r in records})
        meta = {
            "table": table,
            "seconds": time.time() - t_table,
            "device": " / ".join(devices),
            "torch": " / ".join(sorted({r.get("torch") or torch.__version__ for r in records})),
            "spec": OmegaConf.to_container(spec, resolve=True),
            "missing": missing,
        }
        for dest in [run_dir] + ([Path(args.out)] if args.out else []):
            md = write_table(table, records, meta, dest)
        print(md)
    print(
        f"written under {run_dir}" + (f" and {args.out}" if args.out else "") + f" in {(time.time() - t) / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
