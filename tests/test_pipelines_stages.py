"""Each stage runs on the tiny random Llama with the real configs (fast_dev_run), the Lightning Algorithm 1
matches the library's, lm-eval runs a local task, and a Hydra --multirun sweep yields one aggregated table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from lords.checkpoint import load_quantized
from lords.linear import BlockLinear, LoRDSLinear
from lords_pipelines.stages.settings import settings_from_cfg

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
TINY = [
    "model=tiny-llama",
    "logger=csv",
    "quant.block_size=16",
    "quant.calib_tokens=256",
    "quant.sample_tokens=64",
    "data.train_tokens=256",
    "data.window=64",
    "data.val_items=8",
    "data.batch_size=4",
    "eval.perplexity_tokens=128",
    "trainer.fast_dev_run=true",
]


def tiny_settings(stage: str, tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name=stage, overrides=[f"out_dir={tmp_path}", *TINY, *overrides])
    return settings_from_cfg(cfg)


def read_metrics(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "metrics.json").read_text())["metrics"]


def test_ptq_refine_stage_fast_dev_run(tmp_path):
    from lords_pipelines.stages import ptq_refine

    metrics, objs = ptq_refine.run(tiny_settings("ptq_refine", tmp_path, "quant.refine.steps=2"))
    assert metrics["refine_steps"] == 1 and metrics["layers"] == 14 and metrics["ppl"] > 1
    model, _ = load_quantized(tmp_path / "quantized", objs["model"])
    assert isinstance(model.model.layers[0].mlp.up_proj, LoRDSLinear)
    assert read_metrics(tmp_path)["float_params"] == metrics["float_params"]


@pytest.mark.parametrize("data", ["calib", "finetune"])
def test_qat_stage_fast_dev_run(tmp_path, data):
    from lords_pipelines.stages import qat

    metrics, objs = qat.run(
        tiny_settings("qat", tmp_path, "quant.bits=2", f"stage.data={data}", "quant.scale_dtype=bfloat16")
    )
    assert metrics["train_steps"] == 1 and metrics["code_bits"] == 2
    layer = objs["model"].model.layers[1].self_attn.o_proj
    assert isinstance(layer, LoRDSLinear) and layer.B.dtype == torch.bfloat16  # quant.scale_dtype reaches QAT
    model, _ = load_quantized(tmp_path / "quantized", objs["model"])
    assert model.model.layers[1].self_attn.o_proj.B.dtype == torch.bfloat16


@pytest.mark.parametrize("method,bits,block", [("lords_peft", 4, 16), ("qlora", 4, 32), ("loftq", 3, 16)])
def test_peft_stage_runs_the_tables_methods_at_matched_floats(tmp_path, method, bits, block):
    """The stage's methods are the PEFT table's (one registry, one meaning each): QLoRA is bitsandbytes' NF4
    Linear4bit plus peft's LoRA at 4 bits (bitsandbytes' blocks start at 32); at 3 bits the LoRA methods' base is
    the project's block-wise NF."""
    from lords_pipelines.models import tiny_llama
    from lords_pipelines.peft_methods import target_ranks
    from lords_pipelines.stages import peft

    extra = (
        ["quant.refine=null"]
        if method == "lords_peft"
        else ["quant=nf", f"quant.bits={bits}", f"stage.method={method}"]
    )
    metrics, objs = peft.run(tiny_settings("peft", tmp_path, *extra, f"quant.block_size={block}"))
    # LoRDS's parity rank per layer at the block size: the same trainable floats for its B, A and for LoRA.
    fresh = tiny_llama(hidden=128, layers=2, heads=4, kv_heads=2, intermediate=256, vocab=512)  # conf/model/tiny-llama
    matched = sum(r * sum(fresh.get_submodule(n).weight.shape) for n, r in target_ranks(fresh, block).items())
    assert metrics["trainable_floats"] == matched == {16: 17152, 32: 7424}[block]
    assert metrics["train_steps"] == 1 and 0 <= metrics["answer_exact"] <= 1 and metrics["answer_nll"] > 0
    if method == "lords_peft":
        assert (tmp_path / "quantized" / "config.json").is_file()
        return
    base = objs["model"].base_model.model.model.layers[0].mlp.up_proj.base_layer
    if bits == 4:
        import bitsandbytes as bnb

        assert isinstance(base, bnb.nn.Linear4bit)
    else:
        assert isinstance(base, BlockLinear) and base.bits == 3
    assert (tmp_path / f"{method}_adapter" / "adapter_config.json").is_file()


def test_peft_stage_trains_b_and_a_on_text_windows(tmp_path):
    """``stage.data=calib``: PEFT as domain adaptation on packed windows of the calibration source (no answers to
    score), the workload the scaling benchmark gives both QAT and PEFT."""
    from lords_pipelines.stages import peft

    metrics, _ = peft.run(tiny_settings("peft", tmp_path, "quant.refine=null", "stage.data=calib"))
    assert metrics["train_steps"] == 1 and metrics["trainable_floats"] == 17152
    assert metrics["train_tokens_per_s"] is None or metrics["train_tokens_per_s"] > 0
    assert "answer_nll" not in metrics


def test_ptq_stage_mixed_precision_saves_and_reloads(tmp_path):
    from lords import MixedPrecisionConfig
    from lords.checkpoint import read_quantization_config
    from lords_pipelines.stages import ptq

    mixed = [
        "quant=lords_mixed",
        "quant.bits=2.5",
        "model.tiny.layers=4",
        "quant.base.block_size=16",
        "quant.base.refine.objective=weight",
        "quant.base.refine.steps=2",
    ]
    tiny = [o for o in TINY if not o.startswith("quant.")]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        s = settings_from_cfg(compose(config_name="ptq", overrides=[f"out_dir={tmp_path}", *tiny, *mixed]))
    metrics, objs = ptq.run(s)
    # 4 equal decoder layers at 2.5 bits: the first round(4 · 0.5 / 2) = 1 at 4 bits, 3 at 2 bits.
    assert metrics["code_bits"] == pytest.approx(2.5)
    model, _ = load_quantized(tmp_path / "quantized", objs["model"])
    assert [model.model.layers[i].mlp.up_proj.bits for i in range(4)] == [4, 2, 2, 2]
    # The checkpoint holds the whole mixed-precision config, not one of its widths.
    assert (
        read_quantization_config(tmp_path / "quantized")["config"] == s.quant.to_dict()
        and type(s.quant) is MixedPrecisionConfig
    )
    # The per-layer journal: a rerun into the same out_dir resumes (every layer read back, same result).
    assert len(list((tmp_path / "journal").rglob("*.safetensors"))) == 28
    (tmp_path / "metrics.json").unlink()
    again, _ = ptq.run(s)
    assert again["weight_rel_error"] == pytest.approx(metrics["weight_rel_error"])


def test_backend_choice_is_per_model(tmp_path):
    import importlib.util

    from lords.errors import ConfigError
    from lords_pipelines.stages import eval as eval_stage

    metrics, objs = eval_stage.run(
        tiny_settings("eval", tmp_path, "quant.refine=null", "trainer.backend=torch", "eval.perplexity_tokens=64")
    )
    assert {m.backend for m in objs["model"].modules() if isinstance(m, LoRDSLinear)} == {"torch"}
    if importlib.util.find_spec("lords_kernels") is None:
        with pytest.raises(ConfigError, match=r"trainer\.backend"):
            eval_stage.run(
                tiny_settings(
                    "eval", tmp_path / "t", "quant.refine=null", "trainer.backend=triton", "eval.perplexity_tokens=64"
                )
            )


def test_lightning_refine_equals_library_refine():
    import lightning as L
    from torch import nn
    from torch.utils.data import DataLoader

    from lords import LordsConfig, RefineConfig, quantize_
    from lords_pipelines.stages.lit_refine import PTQRefineModule, StepDataset

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 64))
    reference = nn.Sequential(nn.Linear(96, 64))
    reference.load_state_dict(model.state_dict())
    config = LordsConfig(bits=3, block_size=16, exclude=(), refine=RefineConfig(steps=6, lr=1e-2, objective="weight"))
    report = quantize_(reference, config, progress=False)
    module = PTQRefineModule(model, config)
    L.Trainer(
        max_steps=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    ).fit(module, DataLoader(StepDataset(6), batch_size=1))
    module.finish()
    result = next(iter(module.results.values()))
    # The same Refiner and RefineAdam, driven by Lightning instead of lords.refine: the same numbers, bit for bit.
    assert result.losses == report.layers[0].losses
    module.write_back(model)
    assert torch.equal(model[0].qweight, reference[0].qweight)
    assert torch.equal(model[0].B, reference[0].B) and torch.equal(model[0].A, reference[0].A)


def test_ptq_refine_stage_matches_library_quantize_with_calibration(tmp_path):
    """End to end: the Lightning stage and ``lords.quantize_`` (ptq stage) give the same model (act_diag, 3 steps)."""
    from lords_pipelines.stages import ptq, ptq_refine

    common = [
        "trainer.fast_dev_run=false",
        "quant.refine.steps=3",
        "quant.refine.objective=act_diag",
        "eval.perplexity_tokens=128",
        "stage.save=false",
    ]
    lit, lit_objs = ptq_refine.run(tiny_settings("ptq_refine", tmp_path / "lit", *common))
    lib, lib_objs = ptq.run(tiny_settings("ptq", tmp_path / "lib", *common, "stage.journal=false"))
    assert lit["weight_rel_error"] == pytest.approx(lib["weight_rel_error"], rel=1e-5)
    assert lit["ppl"] == pytest.approx(lib["ppl"], rel=1e-4)
    a = lit_objs["model"].model.layers[1].self_attn.q_proj
    b = lib_objs["model"].model.layers[1].self_attn.q_proj
    assert torch.equal(a.qweight, b.qweight)


def test_ptq_refine_resumes_from_lightning_checkpoint(tmp_path):
    from lords_pipelines.stages import ptq_refine

    common = [
        "trainer.fast_dev_run=false",
        "quant.refine.objective=weight",
        "trainer.checkpoint_every_n_steps=2",
        "eval.perplexity_tokens=0",
        "stage.save=false",
        "trainer.log_every_n_steps=1",
    ]
    ptq_refine.run(tiny_settings("ptq_refine", tmp_path, *common, "quant.refine.steps=2"))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    resumed, _ = ptq_refine.run(
        tiny_settings("ptq_refine", tmp_path, *common, "quant.refine.steps=4", "trainer.resume=last")
    )
    fresh, _ = ptq_refine.run(tiny_settings("ptq_refine", tmp_path / "fresh", *common, "quant.refine.steps=4"))
    assert resumed["refine_steps"] == 4
    assert resumed["refine_loss"] == pytest.approx(fresh["refine_loss"], rel=1e-5)


def test_eval_stage_lm_eval_local_task(tmp_path):
    from lords_pipelines.stages import eval as eval_stage

    metrics, _ = eval_stage.run(
        tiny_settings(
            "eval", tmp_path, "quant=nf", "quant.bits=4", "eval.tasks=[lords_cloze,lords_unicode]", "eval.task_limit=6"
        )
    )
    assert 0 <= metrics["lords_cloze/acc"] <= 1 and 0 <= metrics["lords_unicode/acc"] <= 1
    assert metrics["code_bits"] == 4 and metrics["ppl"] > 1


def test_multirun_sweep_bits_by_block_size_aggregates_one_table(tmp_path):
    """A real ``python -m lords_pipelines.stages.ptq --multirun`` (one process), wandb offline logger included."""
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        WANDB_DIR=str(tmp_path),
        WANDB_CACHE_DIR=str(tmp_path / "wc"),
        WANDB_CONFIG_DIR=str(tmp_path / "wcfg"),
        WANDB_DATA_DIR=str(tmp_path / "wd"),
    )
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "lords_pipelines.stages.ptq",
        "--multirun",
        "experiment=sweep_tiny",
        "logger=wandb",
        "eval.perplexity_tokens=128",
        f"hydra.sweep.dir={sweep}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(sweep.glob("*/metrics.json"))
    assert len(runs) == 4
    table = (sweep / "summary.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| tiny-llama")]
    assert len(rows) == 4 and (sweep / "summary.png").stat().st_size > 0
    got = {(r["bits"], r["block_size"]) for r in json.loads((sweep / "summary.json").read_text())}
    assert got == {(3, 16), (3, 32), (4, 16), (4, 32)}
    # wandb offline: one run per job, grouped by sweep, with the validated config and the final metrics.
    from lords_pipelines.stages.wandb_offline import read_offline_run

    assert len(list(sweep.glob("*/wandb/offline-run-*"))) == 4
    run = read_offline_run(sweep / "0" / "wandb")
    assert run["group"] == "ptq-sweep" and run["project"] == "lords"
    assert run["config"]["quant.bits"] == 3 and run["config"]["model.name"] == "tiny-llama"
    assert run["summary"]["ppl"] > 1 and "final/weight_rel_error" in run["summary"]


def test_datamodule_packs_windows_and_masks_prompts(tmp_path):
    from lords_pipelines.stages.common import load_model
    from lords_pipelines.stages.datamodule import IGNORE, LordsDataModule

    s = tiny_settings("peft", tmp_path)
    _, tok = load_model(s.model)
    calib = LordsDataModule(s.data, tok, kind="calib")
    calib.setup("fit")
    batch = next(iter(calib.train_dataloader()))
    assert batch["input_ids"].shape == (4, 64) and torch.equal(batch["labels"], batch["input_ids"])
    assert len(calib.train_set) == 256 // 64 and calib.calibration_ids().shape == (1, 256)
    ft = LordsDataModule(s.data, tok, kind="finetune")
    ft.setup("fit")
    assert (len(ft.train_set), len(ft.val_set)) == (190 - 8, 8)
    item = ft.val_set[0]
    prompt_len = len(tok('Unicode name of "x":', add_special_tokens=False).input_ids)
    labels = item["labels"]
    # Loss on the answer (and EOS) only: every prompt position is ignored, every answer position kept.
    assert (labels[: prompt_len - 1] == IGNORE).all() and (labels[-3:] != IGNORE).all()
    assert labels[-1] == tok.eos_token_id


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_and_rank_zero_alone_writes(tmp_path):
    """``trainer.strategy=ddp trainer.devices=2`` (gloo on the CPU): both ranks train, one evaluates and saves."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "lords_pipelines.stages.peft",
        *TINY,
        "trainer.fast_dev_run=false",
        "trainer.max_steps=2",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "quant.refine=null",
        f"out_dir={tmp_path}",
        f"hydra.run.dir={tmp_path}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = read_metrics(tmp_path)
    assert metrics["train_steps"] == 2 and metrics["ppl"] > 1
    assert (tmp_path / "quantized" / "config.json").is_file()


def test_peft_on_a_base_folder_saves_an_adapter_that_the_eval_stage_reloads(tmp_path):
    from lords_pipelines.stages import eval as eval_stage
    from lords_pipelines.stages import peft, ptq

    ptq.run(tiny_settings("ptq", tmp_path / "ptq", "quant.refine=null"))
    base = tmp_path / "ptq" / "quantized"
    tuned, _ = peft.run(tiny_settings("peft", tmp_path / "peft", "quant.refine=null", f"stage.init_checkpoint={base}"))
    adapter = tmp_path / "peft" / "lords_adapter"
    assert not (tmp_path / "peft" / "quantized").exists() and (adapter / "adapter_model.safetensors").is_file()
    again, _ = eval_stage.run(
        tiny_settings(
            "eval", tmp_path / "eval", "quant.refine=null", f"stage.checkpoint={base}", f"stage.adapter={adapter}"
        )
    )
    assert again["ppl"] == tuned["ppl"]  # the PEFT model's B, A, back on its base
