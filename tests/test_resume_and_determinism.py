"""Interrupted PTQ resumes after the last finished layer; the same seed gives bit-identical checkpoints."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

import lords.handlers as handlers
from lords import LordsConfig, RefineConfig, quantize_, save_quantized
from lords.errors import CheckpointError
from lords_pipelines.models import tiny_llama

CFG = LordsConfig(bits=3, block_size=16, refine=RefineConfig(steps=5, lr=1e-2))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_crash_mid_ptq_resumes_after_the_last_finished_layer(tmp_path, monkeypatch):
    reference = tiny_llama(seed=0)
    quantize_(reference, CFG, progress=False)

    calls = []
    real = handlers.handler_for(CFG)

    def crashing(name, *args):
        calls.append(name)
        if len(calls) == 6:
            raise KeyboardInterrupt("simulated kill")
        return real(name, *args)

    monkeypatch.setitem(handlers._HANDLERS, LordsConfig, handlers._Registered(crashing, handlers._is_plain_linear))
    with pytest.raises(KeyboardInterrupt):
        quantize_(tiny_llama(seed=0), CFG, progress=False, resume_dir=tmp_path / "journal")
    assert len(list((tmp_path / "journal" / "layers").iterdir())) == 5

    calls.clear()
    monkeypatch.setitem(
        handlers._HANDLERS,
        LordsConfig,
        handlers._Registered(lambda name, *a: (calls.append(name), real(name, *a))[1], handlers._is_plain_linear),
    )
    resumed = tiny_llama(seed=0)
    report = quantize_(resumed, CFG, progress=False, resume_dir=tmp_path / "journal")
    assert len(calls) == 14 - 5 and len(report.layers) == 14  # only the unfinished layers were redone
    ref_state = _state(reference)
    assert all(torch.equal(v, ref_state[k]) for k, v in resumed.state_dict().items())


def test_a_journal_from_another_config_is_refused(tmp_path):
    quantize_(tiny_llama(seed=0), CFG, progress=False, resume_dir=tmp_path / "j")
    with pytest.raises(CheckpointError, match="another config"):
        quantize_(tiny_llama(seed=0), LordsConfig(bits=2, block_size=16), progress=False, resume_dir=tmp_path / "j")


def test_a_process_killed_mid_write_loses_no_finished_layer(tmp_path):
    # The child SIGKILLs itself inside its 4th layer's journal write, after the temp file is written and
    # before the rename: the worst moment for a crash. Deterministic, whatever the machine's load.
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        import lords.checkpoint as ckpt
        from lords import LordsConfig, RefineConfig, quantize_
        from lords_pipelines.models import tiny_llama
        writes, real_replace = [], os.replace
        def replace(src, dst):
            writes.append(dst)
            if len(writes) == 6:  # the 1st and 2nd writes are the journal's config.json and inputs.json
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)
        ckpt.os.replace = replace
        cfg = LordsConfig(bits=3, block_size=16, refine=RefineConfig(steps=5, lr=1e-2))
        quantize_(tiny_llama(seed=0), cfg, progress=False, resume_dir={str(tmp_path / "j")!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=600)
    assert proc.returncode == -signal.SIGKILL
    layers = tmp_path / "j" / "layers"
    assert len(list(layers.glob("*.safetensors"))) == 3
    assert len(list(layers.glob(".*.tmp"))) == 1  # the interrupted write never became a layer entry
    resumed, reference = tiny_llama(seed=0), tiny_llama(seed=0)
    quantize_(resumed, CFG, progress=False, resume_dir=tmp_path / "j")
    quantize_(reference, CFG, progress=False)
    ref_state = _state(reference)
    assert all(torch.equal(v, ref_state[k]) for k, v in resumed.state_dict().items())


def test_the_same_seed_gives_bit_identical_checkpoints(tmp_path, tokens):
    cfg = LordsConfig(bits=3, block_size=16, refine=RefineConfig(steps=5, objective="act"), sample_tokens=32)
    paths = []
    for i in range(2):
        model = tiny_llama(seed=0)
        quantize_(model, cfg, calib_ids=tokens, progress=False)
        paths.append(save_quantized(model, tmp_path / f"run{i}", cfg))
    # config.json holds the SHA-256 of the manifest (a SHA-256 per tensor): equal bytes there pin every tensor.
    # (Shard files themselves differ only in the order safetensors writes their two header metadata keys.)
    assert (paths[0] / "config.json").read_bytes() == (paths[1] / "config.json").read_bytes()
    a, b = (load_file(str(p / "model.safetensors")) for p in paths)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
