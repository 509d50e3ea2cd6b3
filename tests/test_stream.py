"""Streamed PTQ reads one decoder block at a time from the shards: with the float prefix's activations it equals
quantize_ on the whole model; with the quantized prefix's (GPTQ's order) it runs, mixed precision included; a killed
run resumes from its journal."""

from __future__ import annotations

import copy

import pytest
import torch

import lords
from lords.stream import load_streamed, quantize_streamed
from lords_pipelines.models import tiny_llama

CFG = lords.LordsConfig(
    bits=3,
    block_size=16,
    calib_tokens=256,
    sample_tokens=32,
    refine=lords.RefineConfig(steps=3, lr=1e-2, objective="act_diag"),
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A 3-block tiny Llama saved as 14 safetensors shards with an index, and calibration tokens."""
    folder = tmp_path_factory.mktemp("tiny")
    model = tiny_llama(seed=0, layers=3)
    model.save_pretrained(folder, max_shard_size="200KB")
    ids = torch.randint(0, 512, (1, 300), generator=torch.Generator().manual_seed(0))
    return folder, model, ids


def _logits(model, ids):
    with torch.no_grad():
        return model(ids[:, :64]).logits


def test_streamed_with_float_inputs_equals_quantize_in_memory(saved, tmp_path):
    folder, model, ids = saved
    reference = copy.deepcopy(model)
    lords.quantize_(reference, CFG, calib_ids=ids, progress=False)
    quantize_streamed(folder, CFG, tmp_path / "journal", ids, inputs="float", progress=False)
    streamed = load_streamed(folder, CFG, tmp_path / "journal")
    assert torch.equal(_logits(streamed, ids), _logits(reference, ids))


def test_streamed_on_the_quantized_prefix_runs_mixed_precision(saved, tmp_path):
    folder, model, ids = saved
    cfg = lords.MixedPrecisionConfig(base=CFG, bits=3.0)  # 3 blocks: round(3 · 1 / 2) = 2 at 4 bits
    report = quantize_streamed(folder, cfg, tmp_path / "journal", ids, progress=False)
    streamed = load_streamed(folder, cfg, tmp_path / "journal")
    bits = [streamed.model.layers[i].mlp.up_proj.bits for i in range(3)]
    assert bits == [4, 4, 2] and len(report.layers) == 21
    assert torch.isfinite(_logits(streamed, ids)).all()


def test_a_killed_streamed_run_resumes_from_its_journal(saved, tmp_path, monkeypatch):
    import lords.stream as stream

    folder, _, ids = saved
    real, calls = stream.handler_for, []

    def dying(leaf):
        def handler(name, *args):
            calls.append(name)
            if len(calls) == 10:  # inside block 1
                raise KeyboardInterrupt("simulated kill")
            return real(leaf)(name, *args)

        return handler

    monkeypatch.setattr(stream, "handler_for", dying)
    with pytest.raises(KeyboardInterrupt):
        quantize_streamed(folder, CFG, tmp_path / "journal", ids, progress=False)
    monkeypatch.setattr(
        stream, "handler_for", lambda leaf: (lambda name, *a: (calls.append(name), real(leaf)(name, *a))[1])
    )
    calls.clear()
    quantize_streamed(folder, CFG, tmp_path / "journal", ids, progress=False)
    assert len(calls) == 21 - 9  # the 9 finished linears were read back, not redone
    uninterrupted = tmp_path / "fresh"
    quantize_streamed(folder, CFG, uninterrupted, ids, progress=False)
    a, b = load_streamed(folder, CFG, tmp_path / "journal"), load_streamed(folder, CFG, uninterrupted)
    assert torch.equal(_logits(a, ids), _logits(b, ids))


def test_a_folder_without_safetensors_is_refused(tmp_path):
    from lords.errors import CheckpointError
    from lords.stream import ShardReader

    with pytest.raises(CheckpointError, match="neither model.safetensors"):
        ShardReader(tmp_path)


def test_a_block_gets_the_shard_tensors_in_the_asked_dtype_without_random_init(saved):
    from lords.stream import _block

    _, model, _ = saved
    layer = model.model.layers[1]
    tensors = {k: v.to(torch.bfloat16) for k, v in layer.state_dict().items()}
    block = _block(model.config, type(layer), 1, tensors, torch.float32)
    got = block.state_dict()
    assert set(got) == set(tensors) and all(got[k].dtype == torch.float32 for k in got)
    assert all(torch.equal(got[k], tensors[k].float()) for k in got)
    assert all(p.requires_grad for p in block.parameters()) and not block.training


class _BlockWithTable(torch.nn.Module):
    """A decoder block that computes a buffer when built (as some models keep a per-block rotary table)."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.register_buffer("table", torch.arange(4.0), persistent=False)


def test_a_block_whose_buffers_are_computed_at_construction_is_built_for_real():
    from lords.stream import _block

    tensors = {"proj.weight": torch.ones(4, 4), "proj.bias": torch.zeros(4)}
    block = _block(None, _BlockWithTable, 0, tensors, torch.float32)
    assert torch.equal(block.table, torch.arange(4.0)) and torch.equal(block.proj.weight, torch.ones(4, 4))
