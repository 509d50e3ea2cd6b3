"""lm-eval's own command line scores a lords folder on a shipped offline task (through ``lords_pipelines.evaluation.lm_eval_cli``,
which imports lords first so transformers opens the folder as the quantized model)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_lm_eval_command_line_scores_a_lords_folder_on_a_shipped_task(tmp_path):
    from lords import LordsConfig, quantize_
    from lords_pipelines.models import tiny_llama
    from lords_pipelines.stages.common import bpe_tokenizer

    tok = bpe_tokenizer(512)
    model = tiny_llama(seed=0, vocab=len(tok))
    quantize_(model, LordsConfig(bits=4, block_size=16), progress=False)
    model.save_pretrained(tmp_path / "q")
    tok.save_pretrained(tmp_path / "q")
    cmd = [
        sys.executable,
        "-m",
        "lords_pipelines.evaluation.lm_eval_cli",
        "run",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={tmp_path / 'q'}",
        "--tasks",
        "lords_cloze",
        "--limit",
        "4",
        "--device",
        "cpu",
        "--output_path",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert 0 <= results["results"]["lords_cloze"]["acc,none"] <= 1
    # lm-eval counted the quantized model's parameters (B, A, embeddings, norms: the codes are buffers), not a
    # float model's: the folder was opened by the lords quantizer.
    assert results["config"]["model_num_parameters"] == sum(p.numel() for p in model.parameters())
