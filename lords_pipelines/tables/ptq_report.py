"""The main job: the PTQ table of a causal LM at equal float budget, LoRDS against block-wise NF.

    python -m lords_pipelines.tables.ptq_report                    # → outputs/runs/ptq_report/<time>/ptq_table.{md,json}
    python -m lords_pipelines.tables.ptq_report --out outputs/reports/ptq_smollm2      # refresh the committed report
    python -m lords_pipelines.tables.ptq_report model=tiny-llama quant.block_size=16   # Hydra overrides for every row

Every row is one run of the Hydra ``ptq`` stage, composed from its own experiment file
(``conf/experiment/ptq_table/<row>.yaml``) plus ``quant.bits`` and the overrides given here; each run writes its
``metrics.json`` under the report's run folder. Rows: ``fp``; per bit width ``nf`` (block absmax),
``nf_calibrated`` (the same block scales refined by Algorithm 1 on the calibrated objective), ``lords_init`` (SVD
of the block scales), ``lords_refined`` (Algorithm 1 on weight MSE, data-free) and ``lords_calibrated``
(Algorithm 1 on the better calibrated objective, picked at the first bit width on held-out calibration text,
never on the evaluation text, and reused for the others and for ``nf_calibrated``).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

from lords_pipelines import CONF
from lords_pipelines.tables.runner import commit, cpu_name

import torch

GGUF_NOTE = ("weights come from a Q4_1 GGUF (4-bit, block 32) dequantized to float: 3-bit results are fair, "
             "4-bit ones are biased towards grids that contain the original 4-bit points")
ORDER = ["fp", "nf", "nf_calibrated", "lords_init", "lords_refined", "lords_calibrated"]


def stage_run(row: str, out: Path, overrides: list[str]) -> dict:
    """One row: compose ``ptq`` + ``experiment=ptq_table/<row>`` + overrides, run the stage, return its metrics."""
    from hydra import compose, initialize_config_dir

    from lords_pipelines.stages import ptq
    from lords_pipelines.stages.settings import settings_from_cfg

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("ptq", overrides=[f"experiment=ptq_table/{row}", f"out_dir={out}", *overrides])
    s = settings_from_cfg(cfg)
    metrics, _ = ptq.run(s)
    return {"metrics": metrics, "settings": s.to_dict()}


def _row(name: str, bits, rec: dict, objective: str | None) -> dict:
    m, s = rec["metrics"], rec["settings"]
    return dict(method=name, bits=bits, objective=objective, float_params=m["float_params"] or None, ppl=m["ppl"],
                tokens=m["ppl_tokens"], weight_rel_error=m["weight_rel_error"], quant_seconds=m["quant_seconds"],
                model=s["model"]["name"], corpus=s["eval"]["corpus"], calib_corpus=s["data"]["calib_source"],
                block_size=(s["quant"] or {}).get("block_size"), calib_tokens=(s["quant"] or {}).get("calib_tokens"),
                steps=(((s["quant"] or {}).get("refine")) or {}).get("steps"),
                lr=(((s["quant"] or {}).get("refine")) or {}).get("lr"))


def run(bits: list[int], objectives: list[str], out: Path, overrides: list[str]) -> tuple[list[dict], dict]:
    t_start = time.time()
    rows = []
    total = 1 + len(bits) * 4 + len(objectives) + len(bits) - 1
    done = []

    def go(row, b, extra=(), label=None, objective=None):
        done.append(row)
        print(f"[{len(done)}/{total}] {label or row}, {b} bits", flush=True)
        run_dir = out / "runs" / f"{label or row}_{b}bit"
        shutil.rmtree(run_dir, ignore_errors=True)
        given = [o for o in overrides if b != 16 or not o.lstrip("+~").startswith("quant.")]  # fp has no quant
        rec = stage_run(row, run_dir, [*([f"quant.bits={b}"] if b != 16 else []), *extra, *given])
        m = rec["metrics"]
        print(f"{label or row} {b}b: ppl {m['ppl']:.2f}, weight rel. error {m['weight_rel_error']:.4f}, "
              f"floats {m['float_params']}, {m['quant_seconds']:.0f} s", flush=True)
        return rec

    fp = go("fp", 16)
    rows.append(dict(_row("fp", 16, fp, None), weight_rel_error=0.0, quant_seconds=0.0, float_params=None))
    chosen = None
    for b in bits:
        candidates = objectives if chosen is None else [chosen]
        recs = {o: go("lords_calibrated", b, [f"quant.refine.objective={o}"], f"lords_calibrated_{o}", o)
                for o in candidates}
        val = {o: r["metrics"]["heldout_calib_ppl"] for o, r in recs.items()}
        for o, v in val.items():
            print(f"  lords {b}b objective {o}: held-out calibration ppl {v:.2f}", flush=True)
        chosen = min(val, key=val.get)
        best = recs[chosen]
        rows.append(dict(_row("lords_calibrated", b, best, chosen), val_ppl=val,
                         val_tokens=best["metrics"]["heldout_calib_tokens"]))
        for name, extra, objective in [("nf", [], None),
                                       ("nf_calibrated", [f"quant.refine.objective={chosen}"], chosen),
                                       ("lords_init", [], None), ("lords_refined", [], "weight")]:
            rows.append(_row(name, b, go(name, b, extra), objective))
    rows.sort(key=lambda r: (-r["bits"], ORDER.index(r["method"])))
    meta = dict(steps=rows[-1]["steps"], lr=rows[-1]["lr"], grid="nf", objectives=objectives,
                total_seconds=time.time() - t_start, torch_threads=torch.get_num_threads(),
                machine=platform.machine(), cpu=cpu_name(), torch=torch.__version__, commit=commit(),
                note=GGUF_NOTE, overrides=overrides)
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
        lines.append(f"| {r['bits']} | {r['method']} | {r['objective'] or ''} | {fl} | "
                     f"{r['weight_rel_error']:.4f} | {r['ppl']:.2f} | {gap} |")
    sel = [r for r in rows if r["method"] == "lords_calibrated"]
    lines += ["", "Objective selection for `lords_calibrated` (perplexity on held-out calibration text, "
              f"{sel[0]['val_tokens'] if sel else 0} tokens after the calibration tokens):", ""]
    for r in sel:
        scores = ", ".join(f"{k} {v:.2f}" for k, v in r["val_ppl"].items())
        lines.append(f"- {r['bits']} bits: {scores} → `{r['objective']}`")
    lines += ["", f"Total wall time {meta['total_seconds'] / 60:.1f} min on {meta['torch_threads']} torch threads "
              f"({meta['cpu']}, {meta['machine']}); torch {meta['torch']}, commit {meta['commit']}."]
    return "\n".join(lines) + "\n"


def write_reports(rows: list[dict], meta: dict, out: Path) -> None:
    """``<out>.md`` and ``<out>.json`` (a list of rows, each carrying the run's settings, so any row reads alone)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: meta[k] for k in ("steps", "lr", "grid", "total_seconds", "torch", "cpu", "commit")}
    out.with_suffix(".json").write_text(json.dumps([dict(r, **settings) for r in rows], indent=1))
    out.with_suffix(".md").write_text(markdown(rows, meta))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, nargs="+", default=[3, 4],
                   help="bit widths; the calibrated objective is picked at the first and reused for the rest")
    p.add_argument("--objectives", nargs="+", default=["act_diag", "act"], help="calibrated objectives to compare")
    p.add_argument("--out", default=None, help="also write <out>.md/.json (e.g. outputs/reports/ptq_smollm2)")
    p.add_argument("--run-dir", default=None, help="run folder (default outputs/runs/ptq_report/<time>)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every row (e.g. model=tiny-llama)")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir or f"outputs/runs/ptq_report/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    rows, meta = run(args.bits, args.objectives, run_dir, args.overrides)
    write_reports(rows, meta, run_dir / "ptq_table")
    if args.out:
        write_reports(rows, meta, Path(args.out))
    print(markdown(rows, meta))
    print(f"written: {run_dir / 'ptq_table'}.md / .json" + (f", {args.out}.md / .json" if args.out else ""))


if __name__ == "__main__":
    main()
