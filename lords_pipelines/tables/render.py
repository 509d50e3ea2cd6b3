"""The paper's tables as people read them: one ``write_table`` for every table runner (PTQ, QAT and PEFT) writes
``<dest>/<table>.{json,md,png}``: the aggregated rows as JSON, a markdown table with each method's baseline beside
it, and the plots."""

from __future__ import annotations

import json
from pathlib import Path

from lords_pipelines.tables.aggregate import add_serving, aggregate, aggregate_peft
from lords_pipelines.tables.peft_tasks import KINDS
from lords_pipelines.tables.plots import plot_curves, plot_peft, plot_ptq


def write_table(table: str, records: list[dict], meta: dict, dest: Path) -> str:
    """``<dest>/<table>.{json,md,png}`` (and ``<table>_curves.png`` for trained rows); returns the markdown. A PEFT
    table (its spec has ``tasks``) takes its decode times from ``<dest>/<table>_serving.{json,md}`` when present."""
    dest.mkdir(parents=True, exist_ok=True)
    peft = "tasks" in meta["spec"]
    if peft:
        rows = aggregate_peft(records, meta["spec"])
        serving = dest / f"{table}_serving.json"
        if serving.is_file():
            add_serving(rows, json.loads(serving.read_text()))
        md = peft_markdown(table, rows, meta) + not_run_note(
            table, meta.get("missing") or [], "runs", " A row's ± is over the seeds it has."
        )
        if serving.is_file():
            md += "\n" + serving.with_suffix(".md").read_text().replace("# Serving", "## Serving", 1)
    else:
        rows = aggregate(records)
        md = ptq_markdown(table, rows, meta) + not_run_note(table, meta.get("missing") or [], "rows")
    (dest / f"{table}.json").write_text(json.dumps(rows, indent=1))
    try:
        if peft:
            plot_peft(rows, meta["spec"], dest / f"{table}.png")
            spectra = {r["method"]: r["spectrum"] for r in rows if r.get("spectrum")}
            if spectra:
                from lords_pipelines.tables.peft_delta import plot_spectra

                plot_spectra(spectra, dest / f"{table}_spectrum.png")
        else:
            plot_ptq(table, rows, dest / f"{table}.png")
            if plot_curves(records, dest / f"{table}_curves.png"):
                md += f"\nTraining curves: `{table}_curves.png`.\n"
    except ImportError:  # the GPU machine has no matplotlib: `--render` redraws from the rows journal
        print(f"matplotlib missing: no {table}.png (rerun the table's runner with --render where it is installed)")
    (dest / f"{table}.md").write_text(md)
    return md


def not_run_note(table: str, missing: list[str], unit: str, after: str = "", shown: int = 12) -> str:
    """The markdown line naming what a partial journal lacks (the first ``shown`` keys), or "" when nothing."""
    if not missing:
        return ""
    keys = ", ".join(f"`{k}`" for k in missing[:shown]) + (
        f" and {len(missing) - shown} more" if len(missing) > shown else ""
    )
    return f"\nNot run yet: {len(missing)} {unit} of `conf/tables/{table}.yaml` ({keys}).{after}\n"


def _pm(mean: float, std: float, samples: int, fmt: str = ".2f") -> str:
    return f"{mean:{fmt}} ± {std:{fmt}}" if samples > 1 else f"{mean:{fmt}}"


def _ppl_cell(r: dict, text: str, n: int) -> str:
    """Mean ± std, or for a collapsed text the geometric mean with the log-perplexity's mean ± std."""
    if not r.get("ppl_collapsed", {}).get(text):
        return _pm(r["ppl"][text], r["ppl_std"][text], n)
    spread = f" ± {r['log_ppl_std'][text]:.2f}" if n > 1 else ""
    return f"{r['ppl'][text]:.1e} (collapsed; log {r['log_ppl'][text]:.2f}{spread})"


def calib_cell(r: dict, spec: dict) -> str:
    if r.get("samples", 0) == 0 and r["method"] != "fp" and not r.get("calib_tokens"):
        return "— | "  # data-free
    return f"{r.get('calib_tokens') or spec['calib']['tokens']:,} | " if r["method"] != "fp" else "— | "


def _paired_cell(r: dict) -> str:
    p = r.get("zero_shot_paired")
    if not p:
        return ""
    low, high = p["ci95"]
    mark = "*" if low > 0 or high < 0 else ""
    return f"{p['delta']:+.3f} [{low:+.3f}, {high:+.3f}]{mark}"


def ptq_markdown(table: str, rows: list[dict], meta: dict) -> str:
    spec = meta["spec"]
    texts = list(rows[0]["ppl"])
    tasks = [k[: -len("/acc")] for k in rows[0] if k.endswith("/acc")]
    fp = next(r for r in rows if r["method"] == "fp")
    sweep = any(r.get("calib_tokens") for r in rows)  # a calibration-size sweep: each row names its tokens
    scored = ", ".join(f"{fp['ppl_tokens'][t]:,} tokens of `{t}`" for t in texts)
    zs = (
        f"zero-shot accuracy on {', '.join(tasks)} ({fp[tasks[0] + '/items']} items each, lords' scorer, equal "
        f"to lm-eval's), mean over tasks with its 95% half-width (±{fp['zero_shot_ci95']:.3f} at the float model)"
        if tasks
        else "no zero-shot tasks in this table"
    )
    lines = [
        f"# `{table}`: {fp['model']}",
        "",
        f"Perplexity on {scored} (2048-token windows, BOS-led where the tokenizer adds BOS); {zs}. "
        f"Calibrated rows: mean ± std over "
        f"{spec['calib']['samples']} disjoint samples of {spec['calib']['tokens']:,} tokens of "
        f"`{spec['calib']['source']}`. Algorithm 1: Adam lr {spec['refine']['lr']}, T as listed, the same for "
        f"block scales and LoRDS. Bits per weight include every stored scale float (fp32) and LoftQ's correction. "
        "A text where a run's perplexity exceeds 1e3 is marked collapsed and summarised by the mean ± std of "
        "log-perplexity (its geometric mean shown). Δ zero-shot: the row's accuracy minus that of the best LoRDS "
        "row of the same bits and block, on the same items (averaged over samples), with the 95% interval of a "
        "paired bootstrap over items (4,000 resamples); `*` where the interval excludes 0.",
        "",
        "| bits | block | rule | method | T | rank | floats | bits/weight | weight err. | "
        + ("calib. tokens | " if sweep else "")
        + " | ".join(f"ppl {t}" for t in texts)
        + " | zero-shot | Δ zero-shot (paired 95%) | n |",
        "|" + "---|" * (12 + len(texts) + sweep),
    ]
    for r in rows:
        n = r["samples"]
        ppl = " | ".join(_ppl_cell(r, t, n) for t in texts)
        bpw = "—" if r["method"] == "fp" or r["bits_per_weight"] is None else f"{r['bits_per_weight']:.3f}"
        rank = "" if r["rank"] is None else f"{r['rank']:g}"
        zero_shot = _pm(r["zero_shot_mean"], r["zero_shot_mean_std"], n, ".3f") if "zero_shot_mean" in r else "—"
        lines.append(
            f"| {r['bits'] or 16} | {r['block_size'] or ''} | {r['rule'] or ''} | {r['method']} | "
            f"{r['refine_steps'] if r.get('objective') or r['refine_steps'] else ''} | {rank} | {r['float_params']:,} | {bpw} | "
            f"{r['weight_rel_error']:.4f} | {calib_cell(r, spec) if sweep else ''}{ppl} | {zero_shot} | {_paired_cell(r)} | {n or 1} |"
        )
    compute = sum(r["seconds"] for r in rows)
    lines += [
        "",
        f"{len(rows)} rows ({sum(max(r['samples'], 1) for r in rows)} runs): {compute / 60:.1f} min of "
        f"quantization and evaluation summed over runs on {meta['device']} (torch {meta['torch']}; model "
        f"loading excluded; per-run seconds in the JSON).",
    ]
    return "\n".join(lines) + "\n"


def _pm_or_dash(mean: float | None, std: float, n: int, fmt: str) -> str:
    if mean is None:
        return "—"
    return f"{mean:{fmt}} ± {std:{fmt}}" if n > 1 else f"{mean:{fmt}}"


def _fmt(v, fmt: str) -> str:
    return "—" if v is None else f"{v:{fmt}}"


def spectrum_lines(rows: list[dict]) -> list[str]:
    """Figure 3's table: effective ranks of ΔW after training (the run at the chosen lr, first seed)."""
    have = [r for r in rows if r.get("spectrum")]
    if not have:
        return []
    lines = [
        f"## ΔW after training on `{have[0]['task']}` (Figure 3; `peft_spectrum.png`)",
        "",
        "| method | layer | shape | trainable floats | entropy rank | 90%-energy rank |",
        "|---|---|---|---|---|---|",
    ]
    for r in have:
        for name, s in r["spectrum"].items():
            lines.append(
                f"| {r['method']} | {name} | {s['shape'][0]}×{s['shape'][1]} | {r['trainable_floats']:,} | "
                f"{s['entropy_rank']:.1f} | {s['energy_rank']} |"
            )
    return lines + [""]


def _ms(v) -> str:
    return "—" if v is None else f"{v:.2f}"


def peft_markdown(table: str, rows: list[dict], meta: dict) -> str:
    spec = meta["spec"]
    texts = list(spec["eval"]["texts"])
    lines = [
        f"# `{table}`: PEFT on {rows[0]['model']} at {spec['bits']} bits, block {spec['block_size']}",
        "",
        "Methods at matched trainable floats: every LoRA rank is LoRDS's parity rank of its layer, so each "
        "method trains the floats shown. `lords_peft` trains only B, A (codes unchanged, nothing merged); "
        "`qlora` is bitsandbytes NF4 `Linear4bit` + peft LoRA; `loftq` and `qpissa` start the LoRA from LoftQ's "
        "alternation and from PiSSA's principal directions (base = the quantized residual). Learning rate: the "
        f"grid {spec['lrs']} at seed {spec['seeds'][0]}, chosen on the validation split by the same rule for "
        f"every method; scores are mean ± std over seeds {spec['seeds']} at that lr. `before`: the quantized "
        "base untrained. Decode: batch-1 greedy ms per token after training, the model as served (LoRDS "
        "through its kernels on CUDA, nothing merged; LoRA unmerged, and merged where peft allows). "
        f"Perplexity on {spec['eval']['tokens']:,} tokens of each text. Device: {meta['device']} "
        f"(torch {meta['torch']}).",
        "",
    ]
    for task in spec["tasks"]:
        mine = [r for r in rows if r["task"] == task]
        if not mine:
            continue
        kind = KINDS[task]
        score = "test acc" if kind != "text" else f"ppl {texts[0]} (test)"
        shown = texts[1:] if kind == "text" else texts  # a text task's test is already the first perplexity
        floats = sorted({r["trainable_floats"] for r in mine})
        lines += [
            f"## `{task}` ({kind}; {mine[0]['steps']} steps, {mine[0]['tokens']:,} tokens per run; "
            f"trainable floats {', '.join(f'{f:,}' for f in floats)})",
            "",
            f"| method | rank | init | lr | {score} | before | "
            + " | ".join(f"ppl {t}" for t in shown)
            + f" | merged: {score} | "
            + " | ".join(f"merged: ppl {t}" for t in shown)
            + " | ms/token | merged ms/token | before ms/token |",
            "|" + "---|" * (10 + 2 * len(shown)),
        ]
        for r in mine:
            n = len(r["seed"])
            acc = f"{task}/acc"
            if kind == "text":
                main, before = (
                    _pm_or_dash(r["ppl"][texts[0]], r["ppl_std"][texts[0]], n, ".2f"),
                    r["before"]["ppl"][texts[0]],
                )
                before = f"{before:.2f}"
            else:
                main, before = _pm_or_dash(r[acc], r[f"{acc}_std"], n, ".3f"), f"{r['before'][acc]:.3f}"
            ppl = " | ".join(_pm_or_dash(r["ppl"][t], r["ppl_std"][t], n, ".2f") for t in shown)
            m = r.get("merged") or {}
            merged_main = (m.get("ppl") or {}).get(texts[0]) if kind == "text" else m.get(acc)
            merged = f"{_fmt(merged_main, '.2f' if kind == 'text' else '.3f')} | " + " | ".join(
                _fmt((m.get("ppl") or {}).get(t), ".2f") for t in shown
            )
            lines.append(
                f"| {r['method']} | {r['rank']:g} | {r['init']} | {r['lr']:g} | {main} | {before} | {ppl} | {merged} | "
                f"{_ms(r['decode_ms_per_token'])} | {_ms(r['decode_ms_per_token_merged'])} | "
                f"{_ms(r['before']['decode_ms_per_token'])} |"
            )
        lines.append("")
    lines += spectrum_lines(rows)
    compute = sum(run["seconds"] for r in rows for run in r["runs"])
    lines.append(
        f"{sum(len(r['runs']) for r in rows)} runs, {compute / 60:.1f} min of training and evaluation summed "
        "over runs (model loading excluded; per-run seconds in the JSON)."
    )
    return "\n".join(lines) + "\n"
