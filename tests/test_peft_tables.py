"""The PEFT table: its spec names the four methods and the shipped tasks, every method of a task trains the same
floats, the learning rate is chosen on validation by one rule for all methods, and its Hydra multirun journals
every run, draws the table and resumes from its journal."""

import json

import pytest

pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")

from lords_pipelines.peft_methods import METHODS  # noqa: E402
from lords_pipelines.tables.peft import Run, choose_lr, grid_runs, jobs, load_spec, seed_runs  # noqa: E402

SMOKE = """model: {model}
bits: 4
block_size: 32
methods: [lords_peft, qlora]
alpha_ratio: 1.0
loftq_iters: 1
lords_refine: {{steps: 2, lr: 0.01, objective: act_diag, calib_tokens: 64}}
lrs: [1.0e-3, 1.0e-2]
seeds: [0]
precision: 32-true
tasks:
  lords_roman: {{steps: 1, batch_size: 4}}
  kjv: {{steps: 1, batch_size: 2}}
data: {{max_length: 48, window: 32, train_tokens: 64, val_tokens: 64, val_limit: 4, test_limit: 6}}
eval: {{texts: [kjv_genesis, licenses], tokens: 64, batch_size: 8}}
latency: {{tasks: [lords_roman], prompt_tokens: 8, new_tokens: 2, repeats: 1, warmup: 1}}
spectrum: {{task: lords_roman, methods: [lords_peft, qlora]}}
"""


def test_the_gpu_spec_runs_every_method_on_two_scored_tasks_and_domain_adaptation():
    spec = load_spec("peft")
    assert list(spec.methods) == list(METHODS) and spec.bits == 4
    assert set(spec.tasks) == {
        "lords_roman",
        "lords_prophets_word",
        "lords_prophets_half",
        "lords_unicode_names",
        "kjv",
    }
    assert len(spec.seeds) == 3 and len(spec.lrs) >= 3 and spec.serving.prefill_tokens == 2048
    assert spec.data.val_limit is None and spec.data.test_limit is None  # the table scores every item


def test_lr_is_the_best_validation_score_with_the_smaller_lr_on_a_tie_for_every_method():
    spec = load_spec("peft")
    lrs = list(spec.lrs)
    for method, scores, want in (("lords_peft", [0.5, 0.3, 0.5, 0.2], lrs[0]), ("qlora", [0.1, 0.0, 0.9, 0.4], lrs[2])):
        runs = grid_runs(spec, "lords_roman", method)
        assert runs[0] == Run("lords_roman", method, None, 0) and [r.lr for r in runs[1:]] == lrs
        done = {r.key: {"val_score": s} for r, s in zip(runs[1:], scores)}
        assert choose_lr(done, spec, "lords_roman", method) == pytest.approx(want)
        assert [r.seed for r in seed_runs(spec, "lords_roman", method, want)] == [0, 1, 2]


def test_the_jobs_are_each_pair_s_grid_then_one_job_per_further_seed():
    spec = load_spec("peft")
    mine = [j for j in jobs(spec, "^kjv_qlora_")]
    grid = [r.key for r in grid_runs(spec, "kjv", "qlora")]
    assert mine == [*grid, "kjv_qlora_s1", "kjv_qlora_s2"] and len(jobs(spec, None)) == len(spec.tasks) * len(
        spec.methods
    ) * (len(grid) + 2)


def test_the_multirun_pairs_methods_at_equal_floats_journals_every_run_and_resumes(
    tmp_path, model_dir, run_table, capsys
):
    spec = tmp_path / "mini.yaml"
    spec.write_text(SMOKE.format(model=model_dir))
    args = [f"table={spec}", f"run_dir={tmp_path / 'run'}", f"out={tmp_path / 'out'}"]
    run_table(*args)
    journal = (tmp_path / "run" / "mini" / "rows.jsonl").read_text().splitlines()
    assert len(journal) == 2 * 2 * 3  # tasks × methods × (before, 2 lrs at the one seed)
    rows = json.loads((tmp_path / "out" / "mini.json").read_text())
    assert [(r["task"], r["method"]) for r in rows] == [
        (t, m) for t in ("lords_roman", "kjv") for m in ("lords_peft", "qlora")
    ]
    for task in ("lords_roman", "kjv"):
        mine = [r for r in rows if r["task"] == task]
        assert len({r["trainable_floats"] for r in mine}) == 1 and mine[0]["trainable_floats"] > 0
        assert len({r["rank"] for r in mine}) == 1
        assert "Algorithm 1 (act_diag, T = 2)" in mine[0]["init"]  # lords_refine: LoRDS starts refined on pydoc
    for r in rows:
        for key in ("model", "method", "bits", "trainable_floats", "steps", "tokens", "seed", "lr", "ppl"):
            assert r[key] is not None, (r["method"], key)
        assert r["seed"] == [0] and r["steps"] == 1 and r["tokens"] > 0 and r["lr"] in (1e-3, 1e-2)
        assert set(r["ppl"]) == {"kjv_genesis", "licenses"}
        timed = r["task"] == "lords_roman"  # latency.tasks: the served model's speed does not depend on the task
        assert (r["decode_ms_per_token"] is not None) == timed
        assert (r["decode_ms_per_token_merged"] is not None) == (timed and r["method"] != "lords_peft")
        if r["task"] != "kjv":
            assert 0 <= r[f"{r['task']}/acc"] <= 1 and f"{r['task']}/acc_std" in r
        # the LoRA method is also scored merged into its NF4 base, as deployed; LoRDS has nothing to merge
        assert (r["merged"] is None) == (r["method"] == "lords_peft")
        if r["merged"]:
            assert set(r["merged"]["ppl"]) == {"kjv_genesis", "licenses"}
        assert (r["spectrum"] is not None) == (r["task"] == "lords_roman")  # Figure 3: ΔW of each trained method
    assert (tmp_path / "out" / "mini.png").stat().st_size > 0
    assert (tmp_path / "out" / "mini_spectrum.png").stat().st_size > 0
    assert "entropy rank" in (tmp_path / "out" / "mini.md").read_text()
    assert "## `kjv`" in (tmp_path / "out" / "mini.md").read_text()
    capsys.readouterr()
    run_table(*args)
    out = capsys.readouterr().out
    assert ": val " not in out and out.count("already, skipped") == len(journal)  # nothing ran again
    assert len((tmp_path / "run" / "mini" / "rows.jsonl").read_text().splitlines()) == len(journal)
    # Render-only on a journal missing runs: a task and method whose grid is incomplete is left out, the rest drawn.
    kept = [line for line in journal if json.loads(line)["key"] != "kjv_qlora_lr0.01_s0"]
    (tmp_path / "run" / "mini" / "rows.jsonl").write_text("\n".join(kept) + "\n")
    run_table(*args, "render=true", multirun=False)
    rows = json.loads((tmp_path / "out" / "mini.json").read_text())
    assert ("kjv", "qlora") not in [(r["task"], r["method"]) for r in rows] and len(rows) == 3
    assert "Not run yet: 1 runs" in (tmp_path / "out" / "mini.md").read_text()
    # A serving benchmark beside the table (peft_serving) fills the decode columns of rows not timed per run.
    serving = [
        {"variant": v, "decode_ms_per_token": ms}
        for v, ms in (("float", 9.0), ("lords_before", 5.0), ("lords_peft", 5.1), ("qlora", 8.0), ("qlora_merged", 4.0))
    ]
    (tmp_path / "out" / "mini_serving.json").write_text(json.dumps(serving))
    (tmp_path / "out" / "mini_serving.md").write_text("# Serving after PEFT: test\n")
    run_table(*args, "render=true", multirun=False)
    rows = {(r["task"], r["method"]): r for r in json.loads((tmp_path / "out" / "mini.json").read_text())}
    kjv = rows[("kjv", "lords_peft")]  # kjv runs are not timed per run (latency.tasks: [lords_roman])
    assert (kjv["decode_ms_per_token"], kjv["before"]["decode_ms_per_token"]) == (5.1, 5.0)
    assert rows[("lords_roman", "qlora")]["decode_ms_per_token"] != 8.0  # its own per-run timing is kept
    assert "## Serving after PEFT" in (tmp_path / "out" / "mini.md").read_text()


def test_the_3_bit_spec_is_the_4_bit_table_at_3_bits():
    four, three = load_spec("peft"), load_spec("peft3")
    assert three.bits == 3 and four.bits == 4
    three.bits = 4
    assert three == four  # the same methods, tasks, grid, seeds and budgets
