"""What a hostile or careless user does to lords, and what must come of it: crafted checkpoints, stale resume state,
kills mid-write, bad values at every front door. Each test names the attack; CPU, tiny random Llamas."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lords
from lords.errors import CheckpointError, ConfigError, LordsError
from lords_pipelines.models import tiny_llama

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
TINY = dict(hidden=64, layers=1, heads=2, kv_heads=1, intermediate=128, vocab=128, max_positions=64)


def tiny(seed: int = 0):
    return tiny_llama(seed=seed, **TINY)


def cfg(**kw):
    return lords.LordsConfig(**{"bits": 4, "block_size": 16, **kw})


def calibrated(**kw):
    return cfg(refine=lords.RefineConfig(steps=2, lr=1e-2, objective="act_diag"), calib_tokens=64, sample_tokens=16,
               **kw)


def ids(seed: int, n: int = 64) -> torch.Tensor:
    return torch.randint(0, TINY["vocab"], (1, n), generator=torch.Generator().manual_seed(seed))


def layer_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A quantized tiny Llama saved as a lords folder (copied by each test that crafts a variant)."""
    path = tmp_path_factory.mktemp("saved") / "q"
    model = tiny()
    lords.quantize_(model, cfg(), progress=False)
    lords.save_quantized(model, path)
    return path


# --- stale resume state: a journal is bound to everything that determines its layers ---------------------------

def test_journal_of_another_model_of_the_same_shapes_is_refused(tmp_path):
    lords.quantize_(tiny(0), cfg(), progress=False, resume_dir=tmp_path)
    with pytest.raises(CheckpointError, match="model weights"):
        lords.quantize_(tiny(1), cfg(), progress=False, resume_dir=tmp_path)
    restarted, plain = tiny(1), tiny(1)
    lords.quantize_(restarted, cfg(), progress=False, resume_dir=tmp_path, restart=True)
    lords.quantize_(plain, cfg(), progress=False)
    assert same_state(layer_state(restarted), layer_state(plain))


def test_journal_of_other_calibration_tokens_is_refused(tmp_path):
    lords.quantize_(tiny(0), calibrated(), calib_ids=ids(0), progress=False, resume_dir=tmp_path)
    with pytest.raises(CheckpointError, match="calibration tokens"):
        lords.quantize_(tiny(0), calibrated(), calib_ids=ids(1), progress=False, resume_dir=tmp_path)
    again = tiny(0)  # the same inputs resume
    lords.quantize_(again, calibrated(), calib_ids=ids(0), progress=False, resume_dir=tmp_path)


def test_streamed_journal_resumed_with_other_calibration_tokens_is_refused(tmp_path):
    from lords.stream import load_streamed, quantize_streamed

    tiny(0).save_pretrained(tmp_path / "float")
    run = dict(inputs="float", progress=False, window=32)
    quantize_streamed(tmp_path / "float", calibrated(), tmp_path / "j", ids(0), **run)
    with pytest.raises(CheckpointError, match="calibration tokens"):
        quantize_streamed(tmp_path / "float", calibrated(), tmp_path / "j", ids(1), **run)
    tiny(1).save_pretrained(tmp_path / "other")
    with pytest.raises(CheckpointError, match="model weights"):
        load_streamed(tmp_path / "other", calibrated(), tmp_path / "j")


def test_ptq_stage_journal_changes_with_the_calibration_source(tmp_path):
    from hydra import compose, initialize_config_dir

    from lords_pipelines.stages.ptq import journal_dir
    from lords_pipelines.stages.settings import settings_from_cfg

    def settings(*overrides):
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            return settings_from_cfg(compose(config_name="ptq", overrides=[f"out_dir={tmp_path}", "model=tiny-llama",
                                                                          *overrides]))

    a = journal_dir(tmp_path, settings())
    assert a == journal_dir(tmp_path, settings())
    assert a != journal_dir(tmp_path, settings("data.calib_source=genesis"))
    assert a != journal_dir(tmp_path, settings("model.tiny.hidden=32"))
