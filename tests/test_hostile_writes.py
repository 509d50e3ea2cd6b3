"""What a kill or a second writer must never do to a checkpoint or a run folder: leave it empty, half written, or
looking whole when it is not; and a shipped stage that must run its own defaults. CPU, tiny random Llamas; the
attacks on reads: ``test_hostile.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_hostile import CONF, ROOT, TINY, cfg, save_tiny, tiny

import lords


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A quantized tiny Llama saved as a lords folder."""
    return save_tiny(tmp_path_factory.mktemp("saved") / "q")


# --- writes leave the old whole folder or the new whole folder, never a part ----------------------------------------


def _child(script: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", script], env=env, timeout=300, capture_output=True, text=True)


def test_a_kill_between_the_swap_renames_leaves_the_new_checkpoint(tmp_path):
    path = tmp_path / "q"
    proc = _child(f"""
import os, signal
import lords
from lords_pipelines.models import tiny_llama
cfg = lords.LordsConfig(bits=4, block_size=16)
def make(seed):
    m = tiny_llama(seed=seed, **{TINY!r})
    lords.quantize_(m, cfg, progress=False)
    return m
lords.save_quantized(make(0), {str(path)!r})
real = os.replace
def replace(src, dst):
    real(src, dst)
    if str(src) == {str(path)!r}:  # the old folder moved aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
lords.save_quantized(make(1), {str(path)!r})
""")
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not path.exists()
    loaded, _ = lords.load_quantized(path)  # recovered: the folder written whole takes its place
    reference = tiny(1)
    lords.quantize_(reference, cfg(), progress=False)
    got = loaded.state_dict()
    assert all(torch.equal(got[k], v) for k, v in reference.state_dict().items())
    assert [p.name for p in tmp_path.iterdir()] == ["q"]


class _Exploding:
    def save_pretrained(self, folder):
        raise KeyboardInterrupt  # stands for a kill while the tokenizer is written


def test_a_save_interrupted_before_the_tokenizer_leaves_no_folder_that_looks_whole(saved, tmp_path):
    model, _ = lords.load_quantized(saved)
    with pytest.raises(KeyboardInterrupt):
        lords.save_quantized(model, tmp_path / "q", tokenizer=_Exploding())
    assert not (tmp_path / "q").exists()
    lords.checkpoint.recover(tmp_path / "q")
    assert list(tmp_path.iterdir()) == []


def test_save_pretrained_over_a_checkpoint_keeps_it_whole_when_interrupted(saved, tmp_path, monkeypatch):
    import shutil

    import transformers.modeling_utils

    path = tmp_path / "q"
    shutil.copytree(saved, path)
    (path / "tokenizer.json").write_text("{}")  # saved there before the model: kept by the swap
    model, _ = lords.load_quantized(saved)
    model2, _ = lords.load_quantized(saved)

    def killed_mid_shard(state, filename, metadata=None):
        Path(filename).write_bytes(b"half a shard")
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", killed_mid_shard)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(path)
    monkeypatch.undo()
    lords.load_quantized(path)  # the old checkpoint, whole
    model2.save_pretrained(path)
    assert (path / "tokenizer.json").read_text() == "{}"
    lords.load_quantized(path)


def test_concurrent_metrics_writers_never_share_a_temp_file(tmp_path):
    import threading

    from lords_pipelines.stages.common import write_metrics

    class S:
        def to_dict(self):
            return {"x": 1}

    errors = []

    def writer(i):
        try:
            for j in range(40):
                write_metrics(tmp_path, S(), {"writer": i, "j": j})
        except Exception as e:  # noqa: BLE001 (the test reports any)
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]["j"] == 39
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


# --- the Lightning refine stage runs past its callbacks' warm-up --------------------------------------------------


def test_the_lightning_refine_stage_runs_more_steps_than_any_warmup(tmp_path):
    from hydra import compose, initialize_config_dir

    from lords_pipelines.stages import ptq_refine
    from lords_pipelines.stages.settings import settings_from_cfg
    from lords_pipelines.stages.training import Throughput

    steps = Throughput().warmup + 3
    overrides = [
        f"out_dir={tmp_path}",
        "model=tiny-llama",
        "logger=none",
        "model.tiny.hidden=64",
        "model.tiny.intermediate=128",
        "model.tiny.layers=1",
        "quant.block_size=16",
        "quant.calib_tokens=128",
        "quant.sample_tokens=32",
        "eval.perplexity_tokens=64",
        f"quant.refine.steps={steps}",
        "stage.save=false",
    ]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        s = settings_from_cfg(compose(config_name="ptq_refine", overrides=overrides))
    metrics, _ = ptq_refine.run(s)
    assert metrics["refine_steps"] == steps
