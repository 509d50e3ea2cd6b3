"""The real Hydra configs compose, validate into typed settings, and a bad key or value fails naming the key."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lords.config import BlockwiseConfig, LordsConfig
from lords.errors import ConfigError
from lords_pipelines.settings import settings_from_cfg

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
def test_quant_group_builds_library_config(quant, cls):
    s = settings("ptq", f"quant={quant}", "quant.bits=3", "quant.block_size=128")
    config = s.quant.library_config()
    assert type(config) is cls and config.bits == 3 and config.block_size == 128


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (Path(CONF) / "experiment").glob("*.yaml")))
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
    from lords.models import tiny_llama
    from lords_pipelines.common import quant_plan

    s = settings("ptq", "model=tiny-llama", "quant.bits=2.5", "quant.block_size=16")
    model = tiny_llama(layers=4)
    (high, keep_high), (low, keep_low) = quant_plan(model, s.quant)
    assert (high.bits, low.bits) == (4, 2)
    # 4 layers at 2.5 bits: round(4 · 0.5 / 2) = 1 layer at 4 bits.
    assert keep_high(None, "model.layers.0.mlp.up_proj") and not keep_high(None, "model.layers.1.mlp.up_proj")
    assert keep_low(None, "model.layers.3.self_attn.q_proj")


def test_entry_point_exits_with_the_key_named(tmp_path):
    """``python -m lords_pipelines.ptq quant.bits=7`` stops at start: exit status 2, one line naming the key."""
    import os
    import subprocess
    import sys

    root = Path(CONF).parent
    done = subprocess.run([sys.executable, "-m", "lords_pipelines.ptq", "quant.bits=7", f"hydra.run.dir={tmp_path}",
                           f"out_dir={tmp_path}"], cwd=root, env=dict(os.environ, PYTHONPATH=str(root)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "config error: quant.bits=7 is not one of" in done.stderr
    assert not (tmp_path / "metrics.json").exists()
