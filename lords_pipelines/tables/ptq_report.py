"""The main job: the PTQ table of a causal LM at equal float budget, LoRDS against block-wise NF.

    python -m lords_pipelines.tables.ptq_report                    # → outputs/runs/ptq_report/<time>/ptq_table.{md,json}
    python -m lords_pipelines.tables.ptq_report --out outputs/reports/ptq_smollm2      # refresh the committed report
    python -m lords_pipelines.tables.ptq_report --bits 4 model=tiny-llama quant.block_size=16   # overrides for every row

The table is the spec ``conf/tables/ptq_smollm2.yaml`` (``--spec`` names another): its methods are those of
``conf/tables/methods.yaml`` (quant group and objective). Every row is one run of the Hydra ``ptq`` stage, composed
from ``ptq`` plus the overrides the spec and the row's method give, plus the overrides given here; each run writes its
``metrics.json`` under the report's run folder. Rows: ``fp``; per bit width ``nf`` (block absmax),
``nf_calibrated`` (the same block scales refined by Algorithm 1 on the calibrated objective), ``lords_init`` (SVD
of the block scales), ``lords_refined`` (Algorithm 1 on weight MSE, data-free) and ``lords_calibrated``
(Algorithm 1 on the better calibrated objective, picked at the first bit width on held-out calibration text,
never on the evaluation text, and reused for the others and for ``nf_calibrated``).

Every row's configuration is composed and validated before the first row runs: a bad override exits with status 2
and one line, and an override that would rewrite what distinguishes the rows (``quant=``, ``quant.bits``,
``quant.refine...``) is refused with the flag to use instead.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf

from lords_pipelines import CONF
from lords_pipelines.tables.runner import commit, cpu_name

if TYPE_CHECKING:  # annotations only: the settings module imports Hydra-side validation
    from lords_pipelines.stages.settings import RunSettings

GGUF_NOTE = (
    "weights come from a Q4_1 GGUF (4-bit, block 32) dequantized to float: 3-bit results are fair, "
    "4-bit ones are biased towards grids that contain the original 4-bit points"
)
ORDER = ["fp", "nf", "nf_calibrated", "lords_init", "lords_refined", "lords_calibrated"]
CALIBRATED = ("act_diag", "act")
ROW_KEYS = {
    "quant": "a method of the spec (--spec)",
    "quant.bits": "--bits",
    "quant.refine": "--objectives, or the spec's refine",
    "quant._target_": "a method of the spec (--spec)",
}


def load_spec(name: str) -> DictConfig:
    """The main job's spec: a name in ``conf/tables`` or a YAML path, with the method definitions attached."""
    path = Path(name) if name.endswith(".yaml") else CONF / "tables" / f"{name}.yaml"
    spec = OmegaConf.load(path)
    spec.method_defs = OmegaConf.load(CONF / "tables" / "methods.yaml")
    return spec


def row_overrides(spec: DictConfig, method: str, bits: int | None, objective: str | None = None) -> list[str]:
    """The ``ptq`` stage overrides of one row: the spec's model and evaluation, the method's quant group at
    ``bits`` and the spec's block size, Algorithm 1 on the method's objective (a calibrated one: ``objective``)."""
    d = spec.method_defs[method]
    common = [
        f"model={spec.model}",
        "logger=none",
        "stage.save=false",
        "stage.journal=false",
        "stage.progress=true",
        f"eval.perplexity_tokens={spec.eval.tokens}",
    ]
    if d.quant == "none":
        return [*common, "quant=none"]
    out = [*common, f"quant={d.quant}", f"quant.bits={bits}", f"quant.block_size={spec.block_sizes[0]}"]
    chosen = objective if d.objective in CALIBRATED and objective else d.objective
    if chosen is None:
        out.append("quant.refine=null")
    else:
        out.append(
            f"quant.refine={{_target_:lords.RefineConfig,steps:{spec.refine.steps},lr:{spec.refine.lr},"
            f"objective:{chosen}}}"
        )
    if d.objective in CALIBRATED and d.quant == "lords":  # the objective's judge: held-out calibration text
        out.append(f"eval.heldout_calib_tokens={spec.eval.heldout_calib_tokens}")
    return out


def compose_row(overrides: list[str], out: Path) -> RunSettings:
    from hydra import compose, initialize_config_dir

    from lords_pipelines.stages.settings import settings_from_cfg

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return settings_from_cfg(compose("ptq", overrides=[*overrides, f"out_dir={out}"]))


def check_command_line(spec: DictConfig, bits: list[int], objectives: list[str], overrides: list[str]) -> None:
    """Exit 2 with one line, before any model loads, when an override rewrites what tells the rows apart or when any
    row's configuration does not compose and validate."""
    from lords_pipelines.stages.launch import check_overrides

    for o in overrides:
        key = o.lstrip("+~").split("=", 1)[0]
        for row_key, flag in ROW_KEYS.items():
            if key == row_key or (row_key != "quant" and key.startswith(row_key + ".")):
                sys.exit(_refusal(f"{o}: it would rewrite every row of the table (rows differ by it); use {flag}"))
    unknown = [o for o in objectives if o not in CALIBRATED]
    if unknown:
        sys.exit(_refusal(f"--objectives {' '.join(unknown)}: not one of {CALIBRATED}"))
    for method in spec.methods:
        for b in [None] if spec.method_defs[method].quant == "none" else bits:
            given = [o for o in overrides if b is not None or not o.lstrip("+~").startswith("quant.")]
            reason = check_overrides("ptq", [*row_overrides(spec, method, b, objectives[0]), *given])
            if reason is not None:
                sys.exit(_refusal(reason))


def _refusal(reason: str) -> int:
    print(f"config error: {reason}", file=sys.stderr)
    return 2


def stage_run(overrides: list[str], out: Path) -> dict:
    """One row: compose ``ptq`` with ``overrides``, run the stage, return its metrics and settings."""
    from lords_pipelines.stages import ptq

    s = compose_row(overrides, out)
    metrics, _ = ptq.run(s)
    return {"metrics": metrics, "settings": s.to_dict()}


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


def run(
    spec: DictConfig, bits: list[int], objectives: list[str], out: Path, overrides: list[str]
) -> tuple[list[dict], dict]:
    """Every row of ``spec`` at ``bits`` (the calibrated objective picked at the first width), in the order the
    table prints them; returns ``(rows, meta)``."""
    t_start = time.time()
    methods = list(spec.methods)
    calibrated = [m for m in methods if spec.method_defs[m].objective in CALIBRATED]
    lords_cal = [m for m in calibrated if spec.method_defs[m].quant == "lords"]
    per_width = len(methods) - ("fp" in methods)
    total = ("fp" in methods) + len(bits) * per_width + (len(objectives) - 1) * len(lords_cal)
    done: list[float] = []

    def go(method, b, objective=None, label=None):
        label = label or method
        eta = "" if not done else f", about {(total - len(done)) * sum(done) / len(done) / 60:.0f} min left"
        print(f"[{len(done) + 1}/{total}] {label}" + ("" if b is None else f", {b} bits") + eta, flush=True)
        run_dir = out / "runs" / f"{label}_{16 if b is None else b}bit"
        shutil.rmtree(run_dir, ignore_errors=True)
        given = [o for o in overrides if b is not None or not o.lstrip("+~").startswith("quant.")]  # fp: no quant
        t = time.time()
        rec = stage_run([*row_overrides(spec, method, b, objective), *given], run_dir)
        done.append(time.time() - t)
        m = rec["metrics"]
        print(
            f"{label} {16 if b is None else b}b: ppl {m['ppl']:.2f}, weight rel. error {m['weight_rel_error']:.4f}, "
            f"floats {m['float_params']}, {m['quant_seconds']:.0f} s",
            flush=True,
        )
        return rec

    rows = []
    if "fp" in methods:
        rows.append(
            dict(_row("fp", 16, go("fp", None), None), weight_rel_error=0.0, quant_seconds=0.0, float_params=None)
        )
    chosen = None
    for b in bits:
        for method in lords_cal:
            candidates = objectives if chosen is None else [chosen]
            recs = {o: go(method, b, o, f"{method}_{o}") for o in candidates}
            val = {o: r["metrics"]["heldout_calib_ppl"] for o, r in recs.items()}
            for o, v in val.items():
                print(f"  {method} {b}b objective {o}: held-out calibration ppl {v:.2f}", flush=True)
            chosen = min(val, key=val.get)
            rows.append(
                dict(
                    _row(method, b, recs[chosen], chosen),
                    val_ppl=val,
                    val_tokens=recs[chosen]["metrics"]["heldout_calib_tokens"],
                )
            )
        for method in methods:
            if method == "fp" or method in lords_cal:
                continue
            objective = spec.method_defs[method].objective
            objective = chosen or objectives[0] if objective in CALIBRATED else objective
            rows.append(_row(method, b, go(method, b, objective), objective))
    rows.sort(key=lambda r: (-r["bits"], ORDER.index(r["method"]) if r["method"] in ORDER else len(ORDER)))
    meta = dict(
        steps=spec.refine.steps,
        lr=spec.refine.lr,
        grid="nf",
        objectives=objectives,
        total_seconds=time.time() - t_start,
        torch_threads=torch.get_num_threads(),
        machine=platform.machine(),
        cpu=cpu_name(),
        torch=torch.__version__,
        commit=commit(),
        note=GGUF_NOTE,
        overrides=overrides,
    )
    return rows, meta


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
        f"Total wall time {meta['total_seconds'] / 60:.1f} min on {meta['torch_threads']} torch threads "
        f"({meta['cpu']}, {meta['machine']}); torch {meta['torch']}, commit {meta['commit']}.",
    ]
    return "\n".join(lines) + "\n"


def write_reports(rows: list[dict], meta: dict, out: Path) -> None:
    """``<out>.md`` and ``<out>.json`` (a list of rows, each carrying the run's settings, so any row reads alone)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: meta[k] for k in ("steps", "lr", "grid", "total_seconds", "torch", "cpu", "commit")}
    out.with_suffix(".json").write_text(json.dumps([dict(r, **settings) for r in rows], indent=1))
    out.with_suffix(".md").write_text(markdown(rows, meta))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="ptq_smollm2", help="conf/tables/<spec>.yaml or a YAML path (ptq_smollm2)")
    p.add_argument(
        "--bits",
        type=int,
        nargs="+",
        choices=(2, 3, 4),
        default=None,
        help="bit widths (default: the spec's); the calibrated objective is picked at the first",
    )
    p.add_argument("--objectives", nargs="+", default=None, help="calibrated objectives to compare (the spec's)")
    p.add_argument("--out", default=None, help="also write <out>.md/.json (e.g. outputs/reports/ptq_smollm2)")
    p.add_argument("--run-dir", default=None, help="run folder (default outputs/runs/ptq_report/<time>)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every row (e.g. model=tiny-llama)")
    args = p.parse_args(argv)
    spec = load_spec(args.spec)
    bits, objectives = args.bits or list(spec.bits), args.objectives or list(spec.objectives)
    check_command_line(spec, bits, objectives, args.overrides)
    run_dir = Path(args.run_dir or f"outputs/runs/ptq_report/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    rows, meta = run(spec, bits, objectives, run_dir, args.overrides)
    write_reports(rows, meta, run_dir / "ptq_table")
    if args.out:
        write_reports(rows, meta, Path(args.out))
    print(markdown(rows, meta))
    print(f"written: {run_dir / 'ptq_table'}.md / .json" + (f", {args.out}.md / .json" if args.out else ""))


if __name__ == "__main__":
    main()
