"""The real Hydra configs compose, validate into typed settings, and a bad key or value fails naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lords import BlockwiseConfig, LordsConfig, MixedPrecisionConfig
from lords.errors import ConfigError
from lords_pipelines.stages.settings import settings_from_cfg

CONF = str(Path(__file__).resolve().parents[1] / "conf")
STAGES = ["ptq", "ptq_refine", "qat", "peft", "eval"]


def settings(name: str, *overrides: str, out="/tmp/unused"):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name=name, overrides=[f"out_dir={out}", *overrides])
    return settings_from_cfg(cfg)


@pytest.mark.parametrize("stage", STAGES)
def test_every_entry_point_config_validates(stage):
    s = settings(stage)
    assert s.stage.name == stage and s.model.name == "smollm2-135m" and s.logger.kind == "wandb"
    assert s.logger.mode == "offline"


@pytest.mark.parametrize("quant,cls", [("lords", LordsConfig), ("nf", BlockwiseConfig), ("int", BlockwiseConfig)])
def test_quant_group_is_the_library_config(quant, cls):
    s = settings("ptq", f"quant={quant}", "quant.bits=3", "quant.block_size=128")
    assert type(s.quant) is cls and s.quant.bits == 3 and s.quant.block_size == 128


def test_seed_reaches_the_library_config():
    assert settings("ptq", "seed=7").quant.seed == 7
    assert settings("ptq", "seed=7", "quant=lords_mixed").quant.base.seed == 7


def test_mixed_precision_group_builds_the_library_config():
    s = settings("ptq", "quant=lords_mixed", "quant.bits=2.25", "quant.base.block_size=128")
    assert type(s.quant) is MixedPrecisionConfig and s.quant.bits == 2.25
    assert type(s.quant.base) is LordsConfig and s.quant.base.block_size == 128


@pytest.mark.parametrize(
    "experiment",
    sorted(
        str(p.relative_to(Path(CONF) / "experiment").with_suffix(""))
        for p in (Path(CONF) / "experiment").rglob("*.yaml")
    ),
)
def test_every_experiment_composes(experiment):
    stage = max((st for st in STAGES if experiment.startswith(st + "_")), key=len, default="ptq")  # its entry point
    assert settings(stage, f"experiment={experiment}").stage.name == stage


@pytest.mark.parametrize(
    "override,key",
    [
        ("quant.bits=5", "quant.bits"),
        ("quant.block_size=0", "quant.block_size"),
        ("quant.grid=fp8", "quant.grid"),
        ("quant.refine.objective=hessian", "quant.refine.objective"),
        ("quant.refine.lr=-1", "quant.refine.lr"),
        ("+quant.bitz=3", "quant.bitz"),
        ("quant.bits=2.5", "quant.bits"),
        ("quant.bits=three", "quant.bits"),
        ("quant.refine.steps=1.5", "quant.refine.steps"),
        ("+quant.refine.stepz=3", "quant.refine.stepz"),
        ("trainer.max_steps=0", "trainer.max_steps"),
        ("logger.kind=tensorboard", "logger.kind"),
        ("data.window=abc", "data.window"),
        ("stage.name=train", "stage.name"),
    ],
    ids=lambda v: v if "=" in v else "",
)
def test_bad_value_fails_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        settings("ptq", override)


def test_unknown_key_is_refused_by_hydra_struct_mode():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="bitz"):
        settings("ptq", "quant.bitz=3")


def test_mixed_precision_plan_is_loftq_convention():
    from lords import plan
    from lords_pipelines.models import tiny_llama

    s = settings("ptq", "model=tiny-llama", "quant=lords_mixed", "quant.bits=2.5", "quant.base.block_size=16")
    chosen = plan(tiny_llama(layers=4), s.quant)
    bits = {name: leaf.bits for name, (_, leaf) in chosen.items()}
    # 4 layers at 2.5 bits: round(4 · 0.5 / 2) = 1 layer at 4 bits, the first.
    assert bits["model.layers.0.mlp.up_proj"] == 4 and bits["model.layers.1.mlp.up_proj"] == 2
    assert bits["model.layers.3.self_attn.q_proj"] == 2 and "lm_head" not in bits


def test_entry_point_exits_with_the_key_named(tmp_path):
    """``python -m lords_pipelines.stages.ptq quant.bits=7`` stops at start: exit status 2, one line naming the key."""
    import os
    import subprocess
    import sys

    root = Path(CONF).parent
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "lords_pipelines.stages.ptq", "quant.bits=7", f"hydra.run.dir={run_dir}"],
        cwd=root,
        env=dict(os.environ, PYTHONPATH=str(root)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "config error: quant.bits=7 is not one of (2, 3, 4); mixed precision "
        "2.25, 2.5 or 3.0 averages: MixedPrecisionConfig (Hydra: quant=lords_mixed "
        "or nf_mixed)"
    ]
    assert not run_dir.exists()  # refused before Hydra made its run folder


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["quant.nonsense=1"], "quant.nonsense=1: unknown key (known: bits, block_size"),
        (
            ["quant=lordz"],
            "quant=lordz: no such option (available: int, loftq, loftq_mixed, lords, lords_mixed, nf, nf_mixed, none)",
        ),
        (["quant.bits=three"], "quant.bits='three' is not one of (2, 3, 4); mixed precision 2.25, 2.5"),
        (["model=tiny-llama", "quant.bits=3,5"], "quant.bits=5 is not one of"),  # every sweep value is checked
    ],
    ids=["unknown-key", "unknown-option", "bad-value", "bad-sweep-value"],
)
def test_command_line_is_checked_before_anything_runs(overrides, message):
    from lords_pipelines.stages.launch import check_overrides

    assert check_overrides("ptq", overrides).startswith(message)
    assert check_overrides("ptq", ["model=tiny-llama", "quant.bits=3,4"]) is None
