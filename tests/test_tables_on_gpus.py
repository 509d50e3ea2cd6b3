"""``tools/tables_on_gpus.sh``: jobs spread over the GPUs it is given, each with its own journal seeded from the
committed rows, merged into one journal per table (one line per row), flat copies under ``$OUT``. Run here as a
dry run (``GPUS=2`` forced on the CPU) with two jobs of one tiny table."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = (
    "defaults: [common]\nbits: [3]\nblock_sizes: [32]\nmethods: [nf, int]\nrules: {}\neval: {tokens: 128, tasks: []}\n"
)


def test_two_jobs_on_two_gpus_merge_into_one_journal(tmp_path):
    from lords_pipelines.models import tiny_llama
    from lords_pipelines.stages.common import bpe_tokenizer

    model = tmp_path / "model"
    tiny_llama(seed=0).save_pretrained(model)
    bpe_tokenizer(512).save_pretrained(model)
    (tmp_path / "mini.yaml").write_text(SPEC)
    out = tmp_path / "out"
    out.mkdir()
    bin_dir = Path(sys.executable).parent  # the script calls python3: this interpreter's
    env = dict(
        os.environ,
        GPUS="2",
        MODEL=str(model),
        RUN_DIR=str(tmp_path / "runs"),
        OUT=str(out),
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        PYTHONPATH=str(ROOT),
    )
    spec = str(tmp_path / "mini.yaml")
    done = subprocess.run(
        ["bash", "tools/tables_on_gpus.sh", f"ptq:{spec}", f"ptq:{spec}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    logs = sorted((tmp_path / "runs" / "logs").glob("*.log"))
    assert [p.name for p in logs] == ["0-ptq.log", "1-ptq.log"]
    assert "on GPU 0" in logs[0].read_text() and "on GPU 1" in logs[1].read_text()
    assert all(p.read_text().rstrip().splitlines()[-1].startswith("exit 0") for p in logs)
    rows = [json.loads(line) for line in (out / "mini.jsonl").read_text().splitlines()]
    assert sorted(r["method"] for r in rows) == ["fp", "int", "nf"]  # both jobs ran every row; one line each
    assert sorted(p.name for p in out.iterdir()) == ["mini.jsonl", "table_logs.tgz"]  # a device call returns ≤ 8 files


def test_peft_jobs_needing_bitsandbytes_are_refused_before_any_job_starts(tmp_path):
    hidden = tmp_path / "hide" / "bitsandbytes"  # a bitsandbytes that cannot be imported, first on the path
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('not installed here')\n")
    bin_dir = Path(sys.executable).parent
    env = dict(
        os.environ,
        GPUS="1",
        MODEL="unused",
        RUN_DIR=str(tmp_path / "runs"),
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        PYTHONPATH=f"{hidden.parent}{os.pathsep}{ROOT}",
    )
    lords_only = subprocess.run(
        ["bash", "tools/tables_on_gpus.sh", "peft:^nothing_lords_peft_"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "bitsandbytes" not in lords_only.stdout  # LoRDS alone needs no bitsandbytes
    done = subprocess.run(
        ["bash", "tools/tables_on_gpus.sh", "peft:^lords_roman_qlora_"],
        cwd=ROOT,
        env=env | {"RUN_DIR": str(tmp_path / "runs2")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "need bitsandbytes" in done.stdout
    assert not (tmp_path / "runs2").exists()  # refused before any job (or its log folder) started
