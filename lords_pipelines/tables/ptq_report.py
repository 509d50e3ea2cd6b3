"""The main job: the PTQ table of a causal LM at equal float budget, LoRDS against block-wise NF, as the jobs of a
Hydra multirun (``lords_pipelines.stages.table``; ``make demo``, ``make reproduce-ptq``):

    python -m lords_pipelines.stages.table -m table=ptq_smollm2                   # → outputs/runs/tables/<time>/
    python -m lords_pipelines.stages.table -m table=ptq_smollm2 out=outputs/reports    # refresh the committed report
    python -m lords_pipelines.stages.table -m table=ptq_smollm2 +spec.bits=[4] spec.model=tiny-llama

The table is the spec ``conf/tables/ptq_smollm2.yaml``: its methods are those of ``conf/tables/methods.yaml`` (quant
group and objective). Every row is one run of the Hydra ``ptq`` stage, composed from ``ptq`` plus the overrides the
spec's row gives (``rows.overrides``, the same as every PTQ table's) and the stage's evaluation settings; each run
writes its ``metrics.json`` (and its logger's run) in its job folder. Rows: ``fp``; per bit width ``nf`` (block
absmax), ``nf_calibrated`` (the same block scales refined by Algorithm 1 on the calibrated objective), ``lords_init``
(SVD of the block scales), ``lords_refined`` (Algorithm 1 on weight MSE, data-free) and ``lords_calibrated``
(Algorithm 1 on the better calibrated objective, picked at the first bit width on held-out calibration text, never
on the evaluation text, and reused for the others and for ``nf_calibrated``). The jobs run in that order: a job
that reuses the picked objective reads it from the journal's candidate rows when it starts.
"""

from __future__ import annotations

import json
import platform
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig

from lords.errors import ConfigError
from lords_pipelines.tables.journal import check_only, commit, cpu_name, read_journal
from lords_pipelines.tables.rows import CALIBRATED, Row, overrides

if TYPE_CHECKING:  # annotations only: the settings module imports Hydra-side validation
    from lords_pipelines.stages.settings import RunSettings

GGUF_NOTE = (
    "weights come from a Q4_1 GGUF (4-bit, block 32) dequantized to float: 3-bit results are fair, "
    "4-bit ones are biased towards grids that contain the original 4-bit points"
)
ORDER = ["fp", "nf", "nf_calibrated", "lords_init", "lords_refined", "lords_calibrated"]
PICKED = "<picked>"
"""A job's objective placeholder: the calibrated objective picked at the first bit width."""


def row_overrides(spec: DictConfig, method: str, bits: int | None, objective: str | None = None) -> list[str]:
    """The ``ptq`` stage overrides of one row: the spec's model and evaluation, then the row's quant config as every
    PTQ table builds it (``rows.overrides``: the method's quant group at ``bits`` and the spec's block size,
    calibration and seed, Algorithm 1 on the method's objective, a calibrated one replaced by ``objective``)."""
    d = spec.method_defs[method]
    common = [
        f"model={spec.model}",
        "stage.save=false",
        "stage.journal=false",
        "stage.progress=true",
        f"eval.perplexity_tokens={spec.eval.tokens}",
    ]
    row = Row(method, bits, spec.block_sizes[0], steps=spec.refine.steps if d.objective else 0)
    out = [*common, *overrides(spec, row, objective)]
    if d.objective in CALIBRATED and d.quant == "lords":  # the objective's judge: held-out calibration text
        out.append(f"eval.heldout_calib_tokens={spec.eval.heldout_calib_tokens}")
    return out


def compose_row(overrides: list[str], out: Path) -> RunSettings:
    from lords_pipelines.stages.launch import compose
    from lords_pipelines.stages.settings import settings_from_cfg

    return settings_from_cfg(compose("ptq", [*overrides, f"out_dir={out}"]))


def stage_run(overrides: list[str], out: Path) -> dict:
    """One row: compose ``ptq`` with ``overrides``, run the stage, return its metrics and settings."""
    from lords_pipelines.stages import ptq

    s = compose_row(overrides, out)
    metrics, _ = ptq.run(s)
    return {"metrics": metrics, "settings": s.to_dict()}


def _lords_calibrated(spec: DictConfig) -> list[str]:
    defs = spec.method_defs
    return [m for m in spec.methods if defs[m].objective in CALIBRATED and defs[m].quant == "lords"]


def plan(spec: DictConfig) -> dict[str, tuple[str, int | None, str | None]]:
    """``{job: (method, bits, objective)}`` in run order: ``fp``, then per width the calibrated LoRDS rows (every
    candidate objective at the first width, the picked one after), then the other methods."""
    lords_cal = _lords_calibrated(spec)
    out: dict = {"fp_16bit": ("fp", None, None)} if "fp" in spec.methods else {}
    for i, b in enumerate(spec.bits):
        for m in lords_cal:
            if i == 0:
                out.update({f"{m}_{o}_{b}bit": (m, b, o) for o in spec.objectives})
            else:
                out[f"{m}_{b}bit"] = (m, b, PICKED)
        for m in spec.methods:
            if m != "fp" and m not in lords_cal:
                objective = spec.method_defs[m].objective
                out[f"{m}_{b}bit"] = (m, b, PICKED if objective in CALIBRATED else objective)
    return out


def picked(spec: DictConfig, done: dict) -> str | None:
    """The calibrated objective with the lower held-out calibration perplexity at the first width (the spec's first
    objective when it has no calibrated LoRDS row); None while a candidate has not run."""
    lords_cal = _lords_calibrated(spec)
    if not lords_cal:
        return spec.objectives[0]
    recs = {o: done.get(f"{lords_cal[-1]}_{o}_{spec.bits[0]}bit") for o in spec.objectives}
    if any(r is None for r in recs.values()):
        return None
    return min(recs, key=lambda o: recs[o]["metrics"]["heldout_calib_ppl"])


def check(spec: DictConfig) -> None:
    """Every row's ``ptq`` config composes and validates (about 2 s, before anything loads), else ``ConfigError``."""
    from lords_pipelines.stages.launch import check_overrides

    unknown = [o for o in spec.objectives if o not in CALIBRATED]
    if unknown:
        raise ConfigError(f"spec.objectives: {unknown[0]!r} is not one of {CALIBRATED}")
    for method, bits, _ in plan(spec).values():
        reason = check_overrides("ptq", row_overrides(spec, method, bits, spec.objectives[0]))
        if reason is not None:
            raise ConfigError(reason)


def jobs(spec: DictConfig, only: str | None) -> list[str]:
    """The jobs in run order that ``only`` selects (``fp_16bit`` always)."""
    keys = list(plan(spec))
    check_only(only, [k for k in keys if k != "fp_16bit"], "rows")
    return [k for k in keys if k == "fp_16bit" or not only or re.search(only, k)]


def journal_key(spec: DictConfig, job: str, done: dict) -> str:
    return job


def run_job(spec: DictConfig, job: str, table_dir: Path, memo: dict, stage_overrides: list[str]) -> dict | str:
    """The journal record of job ``job``: its ``ptq`` stage run's metrics and settings (its logger from
    ``stage_overrides``), or why it cannot run yet (the picked objective's candidates have not run)."""
    method, bits, objective = plan(spec)[job]
    if objective == PICKED:
        objective = picked(spec, read_journal(table_dir / "rows.jsonl", spec.eval.tokens))
        if objective is None:
            return f"it reuses the objective picked at {spec.bits[0]} bits, whose candidate rows have not run"
    t = time.time()
    rec = stage_run([*row_overrides(spec, method, bits, objective), *stage_overrides], table_dir / "jobs" / job)
    rec = json.loads(json.dumps(rec, default=str))
    head = {"key": job, "eval_tokens": spec.eval.tokens, "method": method, "bits": bits, "objective": objective}
    return head | rec | {"seconds": time.time() - t}


def summary(record: dict) -> str:
    m = record["metrics"]
    return (
        f"ppl {m['ppl']:.2f}, weight rel. error {m['weight_rel_error']:.4f}, floats {m['float_params']}, "
        f"{m['quant_seconds']:.0f} s quantizing"
    )


def render(name: str, spec: DictConfig, done: dict, keys: list[str], notes: dict, dests: list[Path]) -> str:
    """``<dest>/<name>.{md,json}`` from the journal's records of ``keys``, in the order the table prints them."""
    done = {k: r for k, r in done.items() if k in keys}
    rows = []
    if "fp_16bit" in done:
        fp = _row("fp", 16, done["fp_16bit"], None)
        rows.append(dict(fp, weight_rel_error=0.0, quant_seconds=0.0, float_params=None))
    lords_cal = _lords_calibrated(spec)
    for i, b in enumerate(spec.bits):
        for m in lords_cal:
            names = [f"{m}_{o}_{b}bit" for o in spec.objectives] if i == 0 else [f"{m}_{b}bit"]
            recs = {done[k]["objective"]: done[k] for k in names if k in done}
            if not recs or len(recs) < len(names):
                continue
            val = {o: r["metrics"]["heldout_calib_ppl"] for o, r in recs.items()}
            best = min(val, key=val.get)
            tokens = recs[best]["metrics"]["heldout_calib_tokens"]
            rows.append(dict(_row(m, b, recs[best], best), val_ppl=val, val_tokens=tokens))
        for m in spec.methods:
            if m != "fp" and m not in lords_cal and f"{m}_{b}bit" in done:
                rec = done[f"{m}_{b}bit"]
                rows.append(_row(m, b, rec, rec["objective"]))
    missing = [k for k in keys if k not in done]
    if missing:
        print(f"{name}: {len(missing)} rows not run yet (first: {missing[0]}); rendering the rest", flush=True)
    if not any(r["method"] == "fp" for r in rows) or len(rows) < 2:
        raise ConfigError(f"{name}: the journal holds no float row and quantized row yet: nothing to draw")
    rows.sort(key=lambda r: (-r["bits"], ORDER.index(r["method"]) if r["method"] in ORDER else len(ORDER)))
    meta = dict(
        steps=spec.refine.steps,
        lr=spec.refine.lr,
        grid="nf",
        objectives=list(spec.objectives),
        total_seconds=sum(r.get("seconds", 0.0) for r in done.values()),
        torch_threads=torch.get_num_threads(),
        machine=platform.machine(),
        cpu=cpu_name(),
        torch=torch.__version__,
        commit=commit(),
        note=GGUF_NOTE,
    )
    for dest in dests:
        write_reports(rows, meta, dest / name)
    return markdown(rows, meta)


def _row(name: str, bits, rec: dict, objective: str | None) -> dict:
    m, s = rec["metrics"], rec["settings"]
    return dict(
        method=name,
        bits=bits,
        objective=objective,
        float_params=m["float_params"] or None,
        ppl=m["ppl"],
        tokens=m["ppl_tokens"],
        weight_rel_error=m["weight_rel_error"],
        quant_seconds=m["quant_seconds"],
        model=s["model"]["name"],
        corpus=s["eval"]["corpus"],
        calib_corpus=s["data"]["calib_source"],
        block_size=(s["quant"] or {}).get("block_size"),
        calib_tokens=(s["quant"] or {}).get("calib_tokens"),
        steps=(((s["quant"] or {}).get("refine")) or {}).get("steps"),
        lr=(((s["quant"] or {}).get("refine")) or {}).get("lr"),
    )


def markdown(rows: list[dict], meta: dict) -> str:
    fp = next(r for r in rows if r["method"] == "fp")
    q = next(r for r in rows if r["method"] != "fp")
    lines = [
        f"# PTQ of {fp['model']} at equal float budget (block {q['block_size']})",
        "",
        f"Perplexity on {fp['tokens']} tokens of `{fp['corpus']}` (GPL-3, Apache-2.0, MPL-2.0, LGPL-2.1 as Debian "
        f"ships them; 2048-token windows); calibration on {q['calib_tokens']} tokens of `{q['calib_corpus']}` "
        f"(Python's pydoc topics). Refinement: Algorithm 1, T = {meta['steps']}, Adam lr {meta['lr']}, one step per "
        f"nearest-code re-pick, best iterate kept; the same for block scales and LoRDS. Grid: {meta['grid']}.",
        f"Note: {meta['note']}.",
        "",
        "| bits | method | objective | float params | weight rel. error | perplexity | gap closed vs nf |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        nf = next((x for x in rows if x["method"] == "nf" and x["bits"] == r["bits"]), None)
        gap = ""
        if nf and r["method"] not in ("fp", "nf"):
            gap = f"{(nf['ppl'] - r['ppl']) / (nf['ppl'] - fp['ppl']) * 100:+.0f}%"
        fl = "" if r["float_params"] is None else f"{r['float_params']:,}"
        lines.append(
            f"| {r['bits']} | {r['method']} | {r['objective'] or ''} | {fl} | "
            f"{r['weight_rel_error']:.4f} | {r['ppl']:.2f} | {gap} |"
        )
    sel = [r for r in rows if r["method"] == "lords_calibrated"]
    lines += [
        "",
        "Objective selection for `lords_calibrated` (perplexity on held-out calibration text, "
        f"{sel[0]['val_tokens'] if sel else 0} tokens after the calibration tokens):",
        "",
    ]
    for r in sel:
        scores = ", ".join(f"{k} {v:.2f}" for k, v in r["val_ppl"].items())
        lines.append(f"- {r['bits']} bits: {scores} → `{r['objective']}`")
    lines += [
        "",
        f"Total run time {meta['total_seconds'] / 60:.1f} min (the rows' runs summed) on {meta['torch_threads']} torch threads "
        f"({meta['cpu']}, {meta['machine']}); torch {meta['torch']}, commit {meta['commit']}.",
    ]
    return "\n".join(lines) + "\n"


def write_reports(rows: list[dict], meta: dict, out: Path) -> None:
    """``<out>.md`` and ``<out>.json`` (a list of rows, each carrying the run's settings, so any row reads alone)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: meta[k] for k in ("steps", "lr", "grid", "total_seconds", "torch", "cpu", "commit")}
    out.with_suffix(".json").write_text(json.dumps([dict(r, **settings) for r in rows], indent=1))
    out.with_suffix(".md").write_text(markdown(rows, meta))
