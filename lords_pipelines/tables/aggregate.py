"""Journal records → table rows: PTQ/QAT rows aggregated over calibration samples (mean ± std), PEFT rows over
seeds at the learning rate chosen on validation, and the serving benchmark's decode times added to PEFT rows."""

from __future__ import annotations

import math
import statistics

from lords_pipelines.tables.peft_runs import choose_lr
from lords_pipelines.tables.stats import collapsed, item_scores, log_ppl, paired_bootstrap


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


GROUP = ("method", "bits", "block_size", "rule", "steps", "rank_scale", "calib_tokens")


QAT_FIELDS = (
    "trainable_floats",
    "train_steps",
    "train_tokens",
    "train_source",
    "train_distinct_tokens",
    "lr_weight",
    "lr_scale",
    "train_seconds",
    "train_tokens_per_s",
)


def aggregate(records: list[dict]) -> list[dict]:
    """One row per method setting; calibrated rows carry the mean and std over their samples and the runs. On a text
    where a run collapsed (perplexity above ``stats.COLLAPSED``) the row's ``ppl`` is the exponential of the mean
    log-perplexity (``ppl_std`` None, ``log_ppl_std`` its spread) and ``ppl_collapsed`` marks it. Each row's
    ``zero_shot_paired`` compares it with the best LoRDS row of its bits and block on the same items."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r.get(k) for k in GROUP), []).append(r)
    rows = []
    for runs in groups.values():
        first = runs[0]
        texts = list(first["ppl"])
        tasks = [k[: -len("/acc")] for k in first if k.endswith("/acc")]
        row = {k: first.get(k) for k in ("model", *GROUP, "rank", "float_params", "bits_per_weight", "code_bits")}
        row["objective"] = (
            (first.get("config") or {}).get("refine")
            or ((first.get("config") or {}).get("base") or {}).get("refine")
            or {}
        ).get("objective")
        row["seed"] = first.get("seed", 0)
        row["samples"] = len(runs) if first["sample"] is not None else 0
        ppl = {t: mean_std([r["ppl"][t] for r in runs]) for t in texts}
        logs = {t: log_ppl([r["ppl"][t] for r in runs]) for t in texts}
        row["ppl_collapsed"] = {t: collapsed([r["ppl"][t] for r in runs]) for t in texts}
        row["ppl"] = {t: math.exp(logs[t][0]) if row["ppl_collapsed"][t] else m for t, (m, _) in ppl.items()}
        row["ppl_std"] = {t: None if row["ppl_collapsed"][t] else s for t, (_, s) in ppl.items()}
        row["log_ppl"] = {t: m for t, (m, _) in logs.items()}
        row["log_ppl_std"] = {t: s for t, (_, s) in logs.items()}
        row["ppl_tokens"] = first["ppl_tokens"]
        for key in ("weight_rel_error", "zero_shot_mean", "quant_seconds"):
            if key in first:
                row[key], row[f"{key}_std"] = mean_std([r[key] for r in runs])
        row["seconds"] = sum(r["seconds"] for r in runs)
        row["zero_shot_ci95"] = first.get("zero_shot_ci95")
        for task in tasks:
            row[f"{task}/acc"] = statistics.fmean(r[f"{task}/acc"] for r in runs)
            row[f"{task}/items"] = first[f"{task}/items"]
        # `steps`/`tokens`: what the row trained (0 for PTQ rows); `refine_steps`: Algorithm 1's T before it
        row["refine_steps"], row["steps"], row["tokens"] = row["steps"], first.get("train_steps", 0), 0
        if "train_steps" in first:  # a QAT row: what it trained, at what budget
            row.update({k: first.get(k) for k in QAT_FIELDS}, tokens=first.get("train_tokens"))
        row["runs"] = [
            {"sample": r["sample"], "ppl": r["ppl"], "zero_shot_mean": r.get("zero_shot_mean")} for r in runs
        ]
        row["_items"] = item_scores(runs, tasks)
        rows.append(row)
    add_paired(rows)
    return rows


def add_paired(rows: list[dict]) -> None:
    """``zero_shot_paired`` of every row with per-item scores: ``{vs, delta, ci95, items}``, its zero-shot accuracy
    minus that of the best LoRDS row (lowest summed log-perplexity) of the same bits and block, by a paired bootstrap
    over the items both answered; None for that LoRDS row itself and where either lacks per-item scores."""
    for row in rows:
        row["zero_shot_paired"] = None
    for cell in {(r["bits"], r["block_size"], r["calib_tokens"]) for r in rows if r["method"] != "fp"}:
        group = [r for r in rows if (r["bits"], r["block_size"], r["calib_tokens"]) == cell]
        lords = [r for r in group if r["method"].startswith("lords") and r["_items"] is not None]
        if not lords:
            continue
        best = min(lords, key=lambda r: sum(r["log_ppl"].values()))
        for r in group:
            if r is best or r["_items"] is None or r["_items"].shape != best["_items"].shape:
                continue
            delta, low, high = paired_bootstrap(r["_items"], best["_items"])
            vs = f"{best['method']}" + (f" ({best['rule']})" if best["rule"] else "")
            r["zero_shot_paired"] = {"vs": vs, "delta": delta, "ci95": [low, high], "items": r["_items"].numel()}
    for row in rows:
        del row["_items"]


COPIED = ("model", "task", "method", "bits", "block_size", "base", "init", "rank", "trainable_floats", "alpha_ratio")


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def aggregate_peft(records: list[dict], spec: dict) -> list[dict]:
    """One row per (task, method) in the spec's order: ``seed`` (the seeds), ``<task>/acc`` (mean) and
    ``<task>/acc_std``, ``ppl`` / ``ppl_std`` (text → value), ``decode_ms_per_token`` (mean over the seeds' runs),
    ``decode_ms_per_token_merged``, ``lr`` (chosen), ``lr_grid`` (lr → validation score), ``before`` (the untrained
    base's scores) and ``runs`` (every journal record of the row)."""
    by_key = {r["key"]: r for r in records}
    rows = []
    for task in spec["tasks"]:
        for method in spec["methods"]:
            mine = [r for r in records if r["task"] == task and r["method"] == method]
            if not mine:
                continue
            lr = choose_lr(by_key, _Spec(spec), task, method)
            runs = [r for r in mine if r["lr"] == lr and r["seed"] in spec["seeds"]]
            before = next(r for r in mine if r["lr"] is None)
            first = runs[0]
            row = {k: first[k] for k in COPIED}
            row.update(
                lr=lr,
                lr_grid={f"{r['lr']:g}": r["val_score"] for r in mine if r["phase"] == "grid"},
                steps=first["steps"],
                tokens=first["tokens"],
                loss_tokens=first["loss_tokens"],
                seed=[r["seed"] for r in runs],
            )
            acc = f"{task}/acc"
            if acc in first:
                row[acc], row[f"{acc}_std"] = mean_std([r[acc] for r in runs])
                row[f"{task}/items"] = first.get(f"{task}/items")
            ppl = {t: mean_std([r["ppl"][t] for r in runs]) for t in first["ppl"]}
            row["ppl"], row["ppl_std"] = {t: m for t, (m, _) in ppl.items()}, {t: s for t, (_, s) in ppl.items()}
            row["val_score"] = mean_std([r["val_score"] for r in runs])[0]
            for key in ("decode_ms_per_token", "decode_ms_per_token_merged", "train_seconds"):
                row[key] = _mean([r.get(key) for r in runs])
            merged = [r.get("merged") for r in runs]
            row["merged"] = None
            if all(merged):  # the LoRA methods merged into their 4-bit base, as they are deployed
                row["merged"] = {k: _mean([m.get(k) for m in merged]) for k in (acc, "val_score") if k in merged[0]}
                row["merged"]["ppl"] = {t: _mean([m["ppl"][t] for m in merged]) for t in merged[0]["ppl"]}
            row["spectrum"] = next((r["spectrum"] for r in runs if r.get("spectrum")), None)
            row["before"] = {
                k: before.get(k)
                for k in (acc, "ppl", "val_score", "decode_ms_per_token", "decode_ms_per_token_merged")
                if k in before
            }
            row["runs"] = mine
            rows.append(row)
    return rows


class _Spec(dict):
    """Attribute access over the plain spec dict, as ``choose_lr`` reads an OmegaConf spec."""

    def __getattr__(self, name):
        return self[name]


def add_serving(rows: list[dict], serving: list[dict]) -> None:
    """Fill each row's decode times from the serving benchmark (``peft_serving``: every variant timed alone on
    one GPU, interleaved) where the row's own runs were not timed: the method's variant, its ``_merged`` variant,
    and for ``lords_peft`` the ``lords_before`` variant as the untrained base (the LoRA methods' bases were not timed
    apart from their adapters: their ``before`` stays empty rather than repeating the trained figure)."""
    by = {r["variant"]: r["decode_ms_per_token"] for r in serving}
    for row in rows:
        if row["decode_ms_per_token"] is None:
            row["decode_ms_per_token"] = by.get(row["method"])
            row["decode_ms_per_token_merged"] = by.get(f"{row['method']}_merged")
            if row["method"] == "lords_peft":
                row["before"]["decode_ms_per_token"] = row["before"].get("decode_ms_per_token") or by.get(
                    "lords_before"
                )
            row["decode_source"] = "peft_serving"
