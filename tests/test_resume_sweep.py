"""A killed sweep resumes without redoing finished runs: a PTQ run whose metrics.json holds the same settings is
skipped; one with other settings, or never finished, runs."""

import json

from test_pipelines_stages import tiny_settings


def test_a_finished_ptq_run_is_skipped_and_an_unfinished_one_runs(tmp_path, monkeypatch):
    from lords_pipelines.stages import common, ptq

    s = tiny_settings("ptq", tmp_path, "quant=nf", "quant.bits=4", "eval.tasks=[]")
    first, objs = ptq.run(s)
    assert objs  # it ran
    calls = []
    monkeypatch.setattr(common, "load_model", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    again, objs = ptq.run(s)
    assert again == json.loads(json.dumps(first, default=str)) and objs == {} and not calls

    other = tiny_settings("ptq", tmp_path, "quant=nf", "quant.bits=3", "eval.tasks=[]")
    monkeypatch.undo()
    metrics, objs = ptq.run(other)  # same folder, other settings: not mistaken for finished
    assert objs and metrics["code_bits"] == 3
