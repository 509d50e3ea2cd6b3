"""QAT and PEFT on several processes through Lightning: ``trainer.strategy=ddp`` and ``trainer.strategy=fsdp``
(FSDP2 through Lightning's ModelParallelStrategy; gloo on the CPU) follow one process's loss curve, save and resume
their checkpoints, and end with the library's quantized checkpoint. Under FSDP the LoRDS codes stay whole frozen
buffers and ``B, A`` become sharded parameters."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lords
from lords_pipelines.models import tiny_llama
from lords_pipelines.stages.distributed import shard, strategy_for, structure_of

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model=tiny-llama",
    "logger=csv",
    "quant.block_size=16",
    "quant.refine=null",
    "data.train_tokens=512",
    "data.window=64",
    "eval.perplexity_tokens=128",
    "trainer.log_every_n_steps=1",
    "trainer.limit_val_batches=0",
    "trainer.checkpoint_every_n_steps=1",
]
# The same global batch every step: QAT on 8 windows of 64 tokens; PEFT on 8 training pairs whose answers are one
# string, so each rank's 4 items carry as many loss tokens as the other's (the mean of rank means is the global mean).
# One process takes all 8 in one batch, each of 2 ranks 4.
STAGES = {"qat": ["stage.lr_weight=1e-3", "stage.lr_scale=1e-2"], "peft": ["stage.lr=1e-2", "data.val_items=8"]}
TOLERANCE = 1e-4  # absolute, on losses near 6.2: only the order of float32 sums differs (seen: < 1e-6)


def _quantized_tiny():
    model = tiny_llama(seed=0)
    lords.quantize_(model, lords.LordsConfig(bits=3, block_size=16), progress=False)
    return model


def test_structure_of_holds_no_tensor_data_and_takes_the_state_back_bit_for_bit():
    model = _quantized_tiny()
    lords.mark_only_scales_trainable(model)
    skeleton = structure_of(model)
    assert all(p.is_meta for p in skeleton.parameters())
    assert skeleton.model.layers[0].mlp.up_proj.B.requires_grad
    skeleton.load_state_dict(model.state_dict(), assign=True)
    ids = torch.arange(32)[None]
    with torch.no_grad():
        assert torch.equal(skeleton(ids).logits, model(ids).logits)


def test_fsdp_shards_the_scales_and_keeps_the_codes_whole_frozen_buffers(tmp_path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    model = _quantized_tiny()
    lords.mark_only_scales_trainable(model)
    ids = torch.arange(32)[None]
    with torch.no_grad():
        expected = model(ids).logits
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        shard(model, init_device_mesh("cpu", (1,), mesh_dim_names=("data_parallel",)))
        layer = model.model.layers[0].self_attn.q_proj
        assert isinstance(layer.B, DTensor) and isinstance(layer.A, DTensor) and layer.B.requires_grad
        assert type(layer.qweight) is torch.Tensor and layer.qweight.dtype == torch.uint8
        assert "qweight" not in dict(layer.named_parameters())
        with torch.no_grad():
            assert torch.equal(model(ids).logits, expected)
    finally:
        dist.destroy_process_group()


def test_fsdp_is_lightnings_model_parallel_strategy_data_parallel_over_every_process():
    strategy = strategy_for("fsdp", "cpu", 2)
    assert type(strategy).__name__ == "ModelParallelStrategy"
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == (2, 1)
    assert strategy_for("ddp", "cpu", 2) == "ddp"


def test_qat_and_peft_ddp_syncs_the_frozen_code_buffers_once_not_every_step():
    ddp = strategy_for("ddp", "cpu", 2, frozen_buffers=True)
    assert type(ddp).__name__ == "DDPStrategy" and ddp._ddp_kwargs == {"broadcast_buffers": False}


def _run(stage: str, out: Path, *overrides: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        f"lords_pipelines.stages.{stage}",
        *TINY,
        *overrides,
        f"out_dir={out}",
        f"hydra.run.dir={out}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _losses(out: Path) -> list[float]:
    """``train/loss`` by step over every (re)start's CSV log."""
    by_step = {}
    for path in sorted(out.glob("csv/version_*/metrics.csv")):
        for row in csv.DictReader(path.open()):
            if row.get("train/loss"):
                by_step[int(row["step"])] = float(row["train/loss"])
    return [by_step[k] for k in sorted(by_step)]


def _pairs(path: Path) -> Path:
    rows = [{"prompt": f"Question {i}" + " and more" * (i % 3) + ":", "answer": " the same answer"} for i in range(16)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# Both are `slow` (about 1 to 2 min each on 2 cores: 2 processes x DDP and FSDP x a restart); `make test-all` runs them.
@pytest.mark.parametrize("stage", [pytest.param(s, marks=[pytest.mark.slow]) for s in STAGES])
def test_ddp_and_fsdp_on_two_processes_follow_one_process_loss_curve_through_a_resume(tmp_path, stage):
    """Two steps, a restart from ``last.ckpt`` (``trainer.resume=last``), two more: the same four losses as one
    uninterrupted process, within ``TOLERANCE``; the final artefact is the library's checkpoint."""
    stage_args = [*STAGES[stage], f"data.finetune_source={_pairs(tmp_path / 'pairs.jsonl')}"]
    _run(stage, tmp_path / "one", *stage_args, "data.batch_size=8", "trainer.max_steps=4")
    curves = {"one": _losses(tmp_path / "one")}
    for strategy in ("ddp", "fsdp"):
        out = tmp_path / strategy
        two = [*stage_args, "data.batch_size=4", "trainer.devices=2", f"trainer.strategy={strategy}"]
        _run(stage, out, *two, "trainer.max_steps=2")
        _run(stage, out, *two, "trainer.max_steps=4", "trainer.resume=last")
        curves[strategy] = _losses(out)
        model, _ = lords.load_quantized(out / "quantized")
        assert any(isinstance(m, lords.LoRDSLinear) for m in model.modules())
    assert len(curves["one"]) == 4 and curves["one"][-1] < curves["one"][0] - 1e-2  # the curve moves
    for strategy in ("ddp", "fsdp"):
        assert len(curves[strategy]) == 4
        assert max(abs(a - b) for a, b in zip(curves[strategy], curves["one"])) < TOLERANCE, (strategy, curves)
    ppl = {k: json.loads((tmp_path / k / "metrics.json").read_text())["metrics"]["ppl"] for k in curves}
    assert ppl["fsdp"] == pytest.approx(ppl["one"], rel=1e-3) and ppl["ddp"] == pytest.approx(ppl["one"], rel=1e-3)


def test_activation_checkpointing_recomputes_each_block_and_keeps_qat_gradients():
    from lords_pipelines.stages.lit_train import QATModule

    ids = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    grads, calls = {}, {}
    for checkpointed in (False, True):
        model = tiny_llama(seed=0)
        module = QATModule(model, lords.LordsConfig(bits=3, block_size=16), 1e-3, 1e-2, checkpoint_blocks=checkpointed)
        count = []
        # A pre-hook: recomputation stops as soon as the last saved tensor is rebuilt, before the block's own end.
        model.model.layers[0].self_attn.q_proj.register_forward_pre_hook(lambda *a: count.append(1))
        module(batch).backward()
        grads[checkpointed] = [p.grad for p in model.parameters() if p.requires_grad]
        calls[checkpointed] = len(count)
    assert calls == {False: 1, True: 2}  # the block ran again in backward
    assert all(torch.equal(a, b) for a, b in zip(grads[False], grads[True]))
