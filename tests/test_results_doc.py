"""docs/results.md is written by tools/results.py from the committed JSON reports: it must equal a fresh run (so it
cannot go stale) and its figures must follow the JSON. Fast: it reads JSON and writes markdown, no model."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "outputs" / "reports"


def generate(out, reports=None):
    cmd = [sys.executable, str(ROOT / "tools" / "results.py"), "--out", str(out)]
    subprocess.run(cmd + (["--reports", str(reports)] if reports else []), check=True, capture_output=True)
    return out.read_text()


def copy_reports(tmp_path):
    dst = tmp_path / "reports"
    shutil.copytree(REPORTS, dst, ignore=lambda d, names: [n for n in names if n.endswith((".png", ".jsonl"))])
    return dst


def line_of(text, start, section="## 2. PTQ tables"):
    """The first line of `section` that starts with `start`."""
    return next(line for line in text.split(section)[1].splitlines() if line.startswith(start))


def test_committed_doc_equals_a_fresh_run(tmp_path):
    fresh = generate(tmp_path / "results.md")
    assert fresh == (ROOT / "docs" / "results.md").read_text(), "docs/results.md is stale: run `make results`"
    for word in ("issue ", "session ", "stop "):  # a document for users, not a work log
        assert word not in fresh.lower()


def test_a_figure_follows_the_json(tmp_path):
    reports = copy_reports(tmp_path)
    before = generate(tmp_path / "before.md", reports)
    path = reports / "tables" / "ptq_bits.json"
    rows = json.loads(path.read_text())
    row = next(r for r in rows if (r["method"], r["bits"], r["block_size"]) == ("lords_calibrated", 3, 64))
    nf_cal = next(r for r in rows if (r["method"], r["bits"], r["block_size"]) == ("nf_calibrated", 3, 64))
    row["ppl"]["licenses"] = nf_cal["ppl"]["licenses"] * 1.1  # now worse than block scales refined the same way
    path.write_text(json.dumps(rows))
    after = generate(tmp_path / "after.md", reports)

    new = f"{row['ppl']['licenses']:.2f} ± "
    assert new not in before and new in line_of(after, "| 3 | lords_calibrated |")
    assert line_of(after, "| 3 | nf_calibrated |") == line_of(before, "| 3 | nf_calibrated |")
    verdict_before, verdict_after = line_of(before, "- **3 bits** — "), line_of(after, "- **3 bits** — ")
    assert "not in the paper): beats (" in verdict_before
    assert "not in the paper): loses to (+10.0%)" in verdict_after


def test_a_missing_report_is_named_not_fatal(tmp_path):
    reports = copy_reports(tmp_path)
    (reports / "tables" / "qat.json").unlink()
    (reports / "kernels.json").unlink()
    text = generate(tmp_path / "results.md", reports)
    assert "*`outputs/reports/tables/qat.json` is not committed: nothing to show here.*" in text
    assert "*`outputs/reports/kernels.json` is not committed: nothing to show here.*" in text
    assert "## 4. PEFT" in text and "## 6. Scale" in text  # the sections after them still render
