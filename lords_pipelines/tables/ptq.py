"""The PTQ tables of the paper on one model (bit widths, the refinement ablation, the rank ablation, QAT), as rows of
a Hydra multirun (``lords_pipelines.stages.table``):

    python -m lords_pipelines.stages.table -m table=ptq_bits out=outputs/reports/tables
    python -m lords_pipelines.stages.table -m table=ptq_bits_cpu                 # the CPU-sized subset (2 cores)
    python -m lords_pipelines.stages.table -m table=ptq_bits spec.model=/tmp/m/smol.gguf only='lords_.*_b3_'

Each table is ``conf/tables/<table>.yaml`` (rows: ``lords_pipelines.tables.rows``). The model loads once per
process; every row quantizes a fresh copy of it with the library config that the Hydra ``quant`` group builds (the
same configs the ``ptq`` stage runs), then scores perplexity on each evaluation text and zero-shot accuracy on the
shipped tasks. This module is the table kind ``ptq``: its job list, one row's run and record, its rendering.
"""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lords import QuantConfig, QuantizedLinear, quantize_
from lords_pipelines.data.texts import corpus_text, tokenize
from lords_pipelines.evaluation.multiple_choice import zero_shot
from lords_pipelines.evaluation.scores import corpus_ids, corpus_perplexity
from lords_pipelines.tables.journal import check_only, device_name, loaded_model, model_label
from lords_pipelines.tables.rows import Row, overrides, peer_of, table_rows

if TYPE_CHECKING:  # annotations only: transformers loads with the model
    from transformers import PreTrainedTokenizerBase


def quant_config(spec: DictConfig, row: Row) -> QuantConfig:
    """The library config of ``row``: the ``ptq`` config composed with the row's ``quant`` overrides."""
    from lords_pipelines.stages.launch import compose
    from lords_pipelines.stages.settings import build_quant

    cfg = compose("ptq", overrides(spec, row))
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


def jobs(spec: DictConfig, only: str | None) -> list[str]:
    """The row keys the table runs, in spec order: the float row always, the others that ``only`` selects."""
    rows = table_rows(spec)
    check_only(only, [r.key for r in rows if r.method != "fp"], "rows")
    return [r.key for r in rows if r.method == "fp" or not only or re.search(only, r.key)]


def journal_key(spec: DictConfig, job: str, done: dict) -> str:
    return job


def run_job(spec: DictConfig, job: str, table_dir: Path, memo: dict, stage_overrides: list[str]) -> dict | str:
    """The journal record of row ``job`` (with its ``key`` and ``eval_tokens``), or why it cannot run here."""
    row = next(r for r in table_rows(spec) if r.key == job)
    model, tok = loaded_model(spec, memo)
    if peer_of(spec, row.method):
        from lords_pipelines.tables.peers import unavailable

        reason = unavailable(peer_of(spec, row.method), model, row.block_size)
        if reason:  # kept in the report as not run, with the reason
            return reason
    spec.model_label = model_label(spec)
    cache = memo.setdefault(("texts", spec.model, table_dir), {})  # tokenized texts and calibration samples
    return run_row(model, tok, spec, row, cache, table_dir) | {"key": row.key, "eval_tokens": spec.eval.tokens}


def summary(record: dict) -> str:
    return (
        "ppl "
        + ", ".join(f"{k} {v:.2f}" for k, v in record["ppl"].items())
        + f"; zero-shot {record.get('zero_shot_mean', float('nan')):.3f}"
    )


def render(name: str, spec: DictConfig, done: dict, keys: list[str], notes: dict, dests: list[Path]) -> str:
    """``<dest>/<name>.{md,json,png}`` from the journal's records of ``keys`` (spec order); a key without a record is
    named as not run (with the reason a job gave, e.g. a peer library missing here)."""
    from lords_pipelines.tables.render import write_table

    records = [done[k] for k in keys if k in done]
    missing = [f"{k} ({notes[k]})" if k in notes else k for k in keys if k not in done]
    meta = {
        "table": name,
        "device": " / ".join(sorted({r.get("device") or device_name() for r in records})),
        "torch": " / ".join(sorted({r.get("torch") or torch.__version__ for r in records})),
        "spec": OmegaConf.to_container(spec, resolve=True),
        "missing": missing,
    }
    for dest in dests:
        md = write_table(name, records, meta, dest)
    return md
