"""``outputs/reports/scale.json`` carries the issue's three figures, each labelled, and is what the generator makes of
the committed measurements today (regenerate with ``python -m lords_pipelines.scale_report``)."""
from __future__ import annotations

import json
from pathlib import Path

from lords_pipelines.scale_report import build

REPORTS = Path(__file__).resolve().parents[1] / "outputs" / "reports"
KEYS = ("ptq_8b_minutes", "ptq_peak_gb", "speedup_2gpu")


def test_scale_json_carries_the_three_figures_each_labelled_measured_or_extrapolated():
    record = json.loads((REPORTS / "scale.json").read_text())
    for key in KEYS:
        assert isinstance(record[key], float) and record[key] > 0
        assert record[f"{key}_is"].split(":")[0] in ("measured", "extrapolated")


def test_the_committed_report_is_what_the_committed_measurements_give():
    record = json.loads((REPORTS / "scale.json").read_text())
    fresh = build(REPORTS)
    assert {k: fresh[k] for k in KEYS} == {k: record[k] for k in KEYS}
    assert fresh["model"] == record["model"]
