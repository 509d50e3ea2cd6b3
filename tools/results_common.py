"""What every section of docs/results.md uses: loading the committed reports, number formats, comparisons."""

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REP = "../outputs/reports"  # links are relative to docs/
TEXTS = ("licenses", "kjv_genesis")
COLLAPSED = 1e3  # a perplexity above this is shown in scientific notation, marked collapsed
NAMES = {
    "lords": "LoRDS (Triton)",
    "lords4": "LoRDS 4-bit",
    "bnb_nf4": "bnb NF4",
    "gemlite_w4": "gemlite W4",
    "fp16": "cuBLAS fp16",
    "floor": "4-bit memory floor",
}  # also the kernels' column order
SECTIONS = {  # title, reports (under outputs/reports/), the make target, links
    "main": (
        "1. Main job: LoRDS against NF at 4 and 3 bits",
        "`ptq_smollm2.json`",
        "`make reproduce-ptq` (CPU; `make demo` writes to outputs/runs/)",
        ["ptq_smollm2.md"],
    ),
    "ptq": (
        "2. PTQ tables: 4 → 2 bits, blocks 64 and 128",
        "`tables/ptq_{bits,refine_ablation,rank_ablation}.json`",
        "`make reproduce-tables` (GPU)",
        ["tables/ptq_bits.md"],
    ),
    "qat": (
        "3. QAT: LoRDS against block-wise QAT",
        "`tables/qat.json`",
        "`make reproduce-tables` (GPU)",
        ["tables/qat.md"],
    ),
    "peft": (
        "4. PEFT at 4 bits, matched trainable floats",
        "`tables/peft.json`, `tables/peft_serving.json`",
        "`make reproduce-tables-peft` (GPU)",
        ["tables/peft.md", "tables/peft.png"],
    ),
    "kernels": (
        "5. Kernels and decode speed",
        "`kernels.json`, `decode.json`",
        "`make reproduce-kernels` (GPU; `make render-kernels` redraws the md/png)",
        ["kernels.md", "decode.md", "docs/kernels.md"],
    ),
    "scale": (
        "6. Scale: an 8B model and two GPUs",
        "`scale.json`",
        "`make reproduce-scale` (2 GPUs)",
        ["scale.md", "docs/scale.md"],
    ),
}


# ---- helpers -------------------------------------------------------------------------------------------------------
def load(reports, name):
    path = os.path.join(reports, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def section(key):
    title, _, cmd, links = SECTIONS[key]
    href = lambda p: p[5:] if p.startswith("docs/") else f"{REP}/{p}"
    refs = ", ".join(f"[{p}]({href(p)})" for p in links)
    return [f"## {title}", "", f"Regenerate: {cmd}. Details: {refs}.", ""]


def missing(name):
    return [f"*`outputs/reports/{name}` is not committed: nothing to show here.*", ""]


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows] + [""]


def sci(v):
    m, e = f"{v:.1e}".split("e")
    return f"{m}e{int(e)}"


def ppl(v, s=0.0):
    """Perplexity to 2 decimals (± std when given); above 1e3 in scientific notation and marked collapsed."""
    if v >= COLLAPSED:
        return sci(v) + (f" ± {sci(s)}" if s else "") + " (collapsed)"
    return f"{v:.2f}" + (f" ± {s:.2f}" if s else "")


def sd(r, text):  # a row's std on one text, only where it averages several calibration samples
    return (r["ppl_std"][text] or 0.0) if r.get("samples", 0) > 1 else 0.0  # None: collapsed (log scale)


def both(r):  # "licences / Genesis"
    return " / ".join(ppl(r["ppl"][t], sd(r, t)) for t in TEXTS) if r else "—"


def pct(a, b):  # a relative to b: a percentage near 1, a ratio far from it, b's value where b collapsed
    if b >= COLLAPSED:
        return f"against {sci(b)}"
    return f"{(a / b - 1) * 100:+.1f}%" if 0.5 <= a / b <= 2 else f"{a / b:.2g}×"


def ratio(a, b):  # a's perplexity over b's, licences / Genesis
    return " / ".join(f"{a['ppl'][t] / b['ppl'][t]:.2f}×" for t in TEXTS)


def compare(a, sa, b, sb, lower=True):
    """a against b: 'beats', 'loses to', or 'ties' when the mean ± std intervals overlap."""
    d = (b - a) if lower else (a - b)
    return "ties" if abs(d) <= sa + sb else ("beats" if d > 0 else "loses to")


def vs(a, b):  # per text: "beats (-6.7%) / ties (+1.0%)"
    return " / ".join(
        f"{compare(a['ppl'][t], sd(a, t), b['ppl'][t], sd(b, t))} ({pct(a['ppl'][t], b['ppl'][t])})" for t in TEXTS
    )


def pick(rows, **kw):
    return next((r for r in rows if all(r.get(k) == v for k, v in kw.items())), None)
