"""docs/results.md, the sections past PTQ: QAT, PEFT and serving, kernels, scale."""

from results_common import NAMES, REP, TEXTS, both, compare, load, missing, pick, ratio, section, table, vs


def qat(reports):
    out, rows = section("qat"), load(reports, "tables/qat.json")
    if rows is None:
        return out + missing("tables/qat.json")
    fp, bits = pick(rows, method="fp"), sorted({r["bits"] for r in rows if r["bits"]}, reverse=True)
    t0 = next(r for r in rows if r.get("train_source"))
    out += [
        f"![QAT]({REP}/tables/qat.png) ![QAT curves]({REP}/tables/qat_curves.png)",
        "",
        f"Each QAT run trains on {t0['train_tokens']:,} tokens of `{t0['train_source']}` ({t0['train_steps']} "
        f"steps, weight lr {t0['lr_weight']:g}), one seed, from the data-free init or from the calibrated PTQ "
        f"model (one calibration sample). Cells: perplexity licences / Genesis. Float model: {both(fp)}.",
        "",
    ]
    start = lambda m: ("QAT, " if "qat" in m else "PTQ, ") + ("calibrated" if m.endswith("calibrated") else "data-free")
    lr = lambda m: f"{pick(rows, method=m)['lr_scale']:g}" if "qat" in m else ""
    out += table(
        ["method", "start", "scale lr"] + [f"{b} bits" for b in bits],
        [
            [m, start(m), lr(m)] + [both(pick(rows, method=m, bits=b)) for b in bits]
            for m in dict.fromkeys(r["method"] for r in rows if r["bits"])
        ],
    )
    out.append("The paper: QAT recovers ultra-low bits (Table 4). Here (licences / Genesis; one seed, no spread):")
    calib = True
    for b in bits:
        lc, bc, ld, bd, lp = (
            pick(rows, method=m, bits=b)
            for m in (
                "lords_qat_calibrated",
                "blockwise_qat_calibrated",
                "lords_qat",
                "blockwise_qat",
                "lords_calibrated",
            )
        )
        calib &= all(lc["ppl"][t] < bc["ppl"][t] for t in TEXTS)
        out.append(
            f"- **{b} bits**: from the calibrated start LoRDS QAT {vs(lc, bc)} block-wise QAT and ends "
            f"{ratio(lc, fp)} the float model (its PTQ start: {ratio(lp, fp)}); from the data-free start it "
            f"{vs(ld, bd)}."
        )
    sweep = {}
    for r in rows:
        if r["bits"] == bits[0] and "qat" in r["method"] and not r["method"].endswith("calibrated"):
            sweep.setdefault(r["lr_scale"], {})[r["method"].startswith("lords")] = r["ppl"]["licenses"]
    lost = [f"{k:g}" for k, p in sorted(sweep.items()) if p[True] > p[False]]
    last = pick(rows, method="lords_qat_calibrated", bits=bits[-1])
    return out + [
        f"- Data-free start, {bits[0]} bits: block-wise QAT is lower on the licences at {len(lost)} of "
        f"{len(sweep)} scale learning rates ({', '.join(lost) or 'none'}).",
        f"- Verdict: **{'holds from a calibrated start' if calib else 'does not hold'}** — from its "
        f"calibrated PTQ model LoRDS QAT {'beats' if calib else 'does not beat'} block-wise QAT on both "
        f"texts at every width; at {bits[-1]} bits it stays {ratio(last, fp)} the float model (Genesis "
        "shares the training text's domain).",
        "",
    ]


def peft_task(task, got):
    """Table rows and the verdict line of one PEFT task; accuracy, or perplexity for domain adaptation."""
    acc = f"{task}/acc" in got[0]
    val = (
        lambda r: (r[f"{task}/acc"], r[f"{task}/acc_std"])
        if acc
        else (r["ppl"]["kjv_genesis"], r["ppl_std"]["kjv_genesis"])
    )
    pre = lambda r: r["before"][f"{task}/acc"] if acc else r["before"]["ppl"]["kjv_genesis"]
    fmt = (lambda x: f"{x:.3f}") if acc else (lambda x: f"{x:.2f}")
    score = {r["method"]: val(r) for r in got}
    body = [
        [
            task,
            "accuracy" if acc else "ppl kjv_genesis",
            r["method"],
            f"{r['trainable_floats']:,}",
            f"{r['lr']:g}",
            fmt(pre(r)),
            "{} ± {}".format(*map(fmt, val(r))),
            len(r["seed"]),
        ]
        for r in got
    ]
    worse = [r["method"] for r in got if compare(*val(r), pre(r), 0, lower=not acc) == "loses to"]
    lo = score.pop("lords_peft")
    best = (max if acc else min)(score, key=lambda m: score[m][0])
    diff = lambda m: f"{(lo[0] - score[m][0]) * 100:+.1f} points" if acc else f"ppl {lo[0] - score[m][0]:+.2f}"
    said = lambda m: f"{compare(*lo, *score[m], lower=not acc)} {m} ({diff(m)})"
    line = f"- **{task}**: lords_peft {said('qlora')}" + (
        "; QLoRA is also the best other method" if best == "qlora" else f"; against the best other it {said(best)}"
    )
    line += f"; training leaves {', '.join(worse)} below the untrained base." if worse else "."
    return body, line, (lo[0] - score["qlora"][0]) * 100 if acc else None


def peft(reports):
    out, rows = section("peft"), load(reports, "tables/peft.json")
    if rows is None:
        return out + missing("tables/peft.json") + serving(reports)
    out += [
        "Learning rate chosen on validation from a grid, then mean ± std over the seeds; `before`: the quantized "
        "base untrained; a tie: the mean ± std intervals overlap. The paper (Table 5, Commonsense-170k, "
        "Llama3-8B): LoRDS 87.68 vs LoftQ 83.49 vs QLoRA 78.08 (+9.6 points over QLoRA), 84M trainable floats "
        "against 193M.",
        "",
    ]
    body, lines, leads = [], [], {}
    for task in dict.fromkeys(r["task"] for r in rows):
        b, line, lead = peft_task(task, [r for r in rows if r["task"] == task])
        body, lines = body + b, lines + [line]
        leads.update({} if lead is None else {task: lead})
    out += table(["task", "score", "method", "trainable floats", "lr", "before", "test score", "seeds"], body) + lines
    top = max(leads, key=leads.get)
    out += [
        f"- Verdict on the paper's +9.6 points over QLoRA: **{'holds' if leads[top] >= 9.6 else 'not reproduced'}"
        f"** — LoRDS beats QLoRA beyond one std on {sum('beats qlora' in v for v in lines)} of {len(lines)} "
        f"tasks; its largest accuracy lead is {leads[top]:+.1f} points ({top}).",
        "",
    ]
    return out + serving(reports)


def serving(reports):
    rows, out = load(reports, "tables/peft_serving.json"), ["### Serving after PEFT", ""]
    if rows is None:
        return out + missing("tables/peft_serving.json")
    v = {r["variant"]: r for r in rows}
    out += [
        f"SmolLM2 on {rows[0]['device']}: batch-1 greedy decode (eager PyTorch) and a 2048-token prefill, median "
        f"of {rows[0]['rounds']} rounds (spread = max − min). Details: "
        f"[peft_serving.md]({REP}/tables/peft_serving.md).",
        "",
    ]
    out += table(
        ["variant", "decode ms/token", "spread", "prefill tok/s", "weights MiB"],
        [
            [
                k,
                f"{r['decode_ms_per_token']:.1f}",
                f"{r['decode_ms_spread']:.1f}",
                f"{r['prefill_tokens_per_s']:,.0f}",
                f"{r['weights_mib']:.1f}",
            ]
            for k, r in v.items()
        ],
    )
    lp = v["lords_peft"]
    for o in (v["qlora"], v["qlora_merged"]):
        overlap = min(o["times"]["decode_ms"]) <= max(lp["times"]["decode_ms"])
        out.append(
            f"- lords_peft decodes {o['decode_ms_per_token'] / lp['decode_ms_per_token']:.2f}× as fast as "
            f"{o['variant']} ({lp['decode_ms_per_token']:.1f} against {o['decode_ms_per_token']:.1f} "
            f"ms/token; the rounds' ranges {'overlap' if overlap else 'do not overlap'})."
        )
    return out + [""]


def kernels(reports):
    out, k = section("kernels"), load(reports, "kernels.json")
    if k is None:
        return out + missing("kernels.json")
    sel = [
        r
        for r in k["rows"]
        if (r["N"], r["K"]) == (14336, 4096) and (r["bits"], r["block_size"]) in ((4, 64), (16, None))
    ]
    impls = sorted({r["impl"] for r in sel}, key=lambda i: list(NAMES).index(i) if i in NAMES else len(NAMES))
    us = {(r["impl"], r["M"]): r["us_graph"] for r in sel}
    out += [
        f"![kernels]({REP}/kernels.png)",
        "",
        f"One 14336×4096 linear (N×K), 4-bit, block 64, on {k['device']}: µs per call in a CUDA graph with cold "
        "L2 (lower is better); M = tokens in the batch.",
        "",
    ]
    ms = sorted({r["M"] for r in sel})
    out += table(["M"] + [NAMES.get(i, i) for i in impls], [[m] + [f"{us[i, m]:.1f}" for i in impls] for m in ms])
    l1, b1, g1, f1 = (us[i, 1] for i in ("lords", "bnb_nf4", "gemlite_w4", "fp16"))
    at_m1 = ", ".join(
        f"{l1 / o:.2f}× the time of {NAMES[i]} ({o:.1f})"
        for i, o in (("bnb_nf4", b1), ("gemlite_w4", g1), ("fp16", f1))
    )
    wins = "; than ".join(
        f"{NAMES[i]} at M = " + (", ".join(str(m) for m in ms if us["lords", m] < us[i, m]) or "none")
        for i in ("bnb_nf4", "gemlite_w4")
    )
    out.append(
        "The paper (Table 6, RTX 4090): 1.5× faster than QLoRA's adapter path, about 8% slower than plain "
        f"bnb NF4. Here at M = 1 LoRDS takes {l1:.1f} µs, {at_m1}. LoRDS is faster than {wins}."
    )
    d = load(reports, "decode.json")
    if d is None:
        return out + [""] + missing("decode.json")
    tps = {(r["kind"], r["block_size"], r["batch"]): r["tokens_per_s"] for r in d["rows"]}
    out += ["", f"End to end: {d['layers']} Llama-3-8B-shaped layers on {d['device']}, tokens/s:", ""]
    out += table(
        ["kind", "block", "batch 1", "batch 16", "prefill (2048)"],
        [
            [NAMES.get(kd, kd), bs or "—"] + [f"{tps[kd, bs, b]:,.1f}" for b in (1, 16, "prefill")]
            for kd, bs in dict.fromkeys((r["kind"], r["block_size"]) for r in d["rows"])
        ],
    )
    out += [
        f"- Batch {b}, block 64: LoRDS {tps['lords4', 64, b]:,.1f} tokens/s, "
        + ", ".join(
            f"{tps['lords4', 64, b] / tps[kd, 64, b] - 1:+.0%} against {NAMES[kd]}" for kd in ("bnb_nf4", "gemlite_w4")
        )
        + "."
        for b in (1, 16)
    ]
    s = load(reports, "tables/peft_serving.json")
    if s:
        v = {r["variant"]: r["decode_ms_per_token"] for r in s}
        out.append(
            f"- Against QLoRA's adapter path (SmolLM2 after PEFT, section 4): "
            f"{v['qlora'] / v['lords_peft']:.2f}× as fast (the paper: 1.5×)."
        )
    e2e = "faster" if tps["lords4", 64, 1] > tps["bnb_nf4", 64, 1] else "slower"
    out.append(
        f"- Verdict: at batch 1 LoRDS is {'faster' if l1 < b1 else 'slower'} than bnb NF4 per layer and {e2e} "
        f"end to end (the paper: about 8% slower), {'faster' if l1 < g1 else 'slower'} than gemlite per layer."
    )
    return out + [""]


SCALE_GOALS = {
    "ptq_8b_minutes": ("< 30", lambda x: x < 30),
    "ptq_peak_gb": ("< 24", lambda x: x < 24),
    "speedup_2gpu": ("≥ 1.8", lambda x: x >= 1.8),
}  # the project's goals, as scale.md states them


def scale(reports):
    out, s = section("scale"), load(reports, "scale.json")
    if s is None:
        return out + missing("scale.json")
    m = s["measured"]
    figs = [
        ("ptq_8b_minutes", s["ptq_8b_minutes"], s["ptq_8b_minutes_is"].split(" (")[0]),
        ("ptq_peak_gb", s["ptq_peak_gb"], s["ptq_peak_gb_is"].split(" (")[0]),
        ("speedup_2gpu", s["speedup_2gpu"], "measured: the smaller of QAT's and PEFT's 2-GPU speed-ups"),
        ("qat_speedup_2gpu", m["qat_speedup_2gpu"], "measured: QAT tokens/s on 2 GPUs over one, 1.1B Llama"),
        ("peft_speedup_2gpu", m["peft_speedup_2gpu"], "measured: PEFT tokens/s on 2 GPUs over one, 1.1B Llama"),
        ("ptq_2gpu_speedup_float", s["ptq_2gpu_speedup_float"], "measured: streamed PTQ wall time, 1 GPU over 2"),
    ]
    met = {k: SCALE_GOALS[k][1](v) for k, v, _ in figs if k in SCALE_GOALS}
    out += table(
        ["figure", "value", "how", "goal", ""],
        [
            [
                f"`{k}`",
                f"{v:.2f}",
                how,
                SCALE_GOALS[k][0] if k in met else "",
                {True: "met", False: "not met"}.get(met.get(k), ""),
            ]
            for k, v, how in figs
        ],
    )
    return out + [
        f"Goals met: {', '.join(k for k in met if met[k]) or 'none'}; not met: "
        f"{', '.join(k for k in met if not met[k]) or 'none'}. Random weights: time and memory, not "
        "quality.",
        "",
    ]
