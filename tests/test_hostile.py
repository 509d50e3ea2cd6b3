"""What a hostile or careless user does to lords, and what must come of it: stale resume state, crafted checkpoints,
refused loads, kills mid-write. Each test names the attack; CPU, tiny random Llamas. Bad values at the front doors:
``test_hostile_inputs.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lords
from lords.errors import CheckpointError
from lords_pipelines.models import tiny_llama

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
TINY = dict(hidden=64, layers=1, heads=2, kv_heads=1, intermediate=128, vocab=128, max_positions=64)


def tiny(seed: int = 0):
    return tiny_llama(seed=seed, **TINY)


def cfg(**kw):
    return lords.LordsConfig(**{"bits": 4, "block_size": 16, **kw})


def calibrated(**kw):
    return cfg(
        refine=lords.RefineConfig(steps=2, lr=1e-2, objective="act_diag"), calib_tokens=64, sample_tokens=16, **kw
    )


def ids(seed: int, n: int = 64) -> torch.Tensor:
    return torch.randint(0, TINY["vocab"], (1, n), generator=torch.Generator().manual_seed(seed))


def layer_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def save_tiny(path: Path) -> Path:
    """A quantized tiny Llama saved as a lords folder at ``path``."""
    model = tiny()
    lords.quantize_(model, cfg(), progress=False)
    lords.save_quantized(model, path)
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A quantized tiny Llama saved as a lords folder (copied by each test that crafts a variant)."""
    return save_tiny(tmp_path_factory.mktemp("saved") / "q")


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
            return settings_from_cfg(
                compose(config_name="ptq", overrides=[f"out_dir={tmp_path}", "model=tiny-llama", *overrides])
            )

    a = journal_dir(tmp_path, settings())
    assert a == journal_dir(tmp_path, settings())
    assert a != journal_dir(tmp_path, settings("data.calib_source=genesis"))
    assert a != journal_dir(tmp_path, settings("model.tiny.hidden=32"))


# --- config.json's quantization metadata, checked whole by every front door ---------------------------------------


def craft(src: Path, dst: Path, qc_edit=None, state_edit=None) -> Path:
    """A copy of the lords folder ``src`` with its quantization_config and tensors edited, every hash recomputed:
    what an attacker (or a careless script) can write, which no hash can tell from the real thing."""
    import shutil

    from safetensors.torch import load_file, save_file

    from lords.folder import metadata_digest
    from lords.integrity import MANIFEST_KEY, QUANTIZATION_KEY, manifest_json, text_digest

    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    qc = config["quantization_config"]
    state = load_file(str(dst / "model.safetensors"))
    if state_edit is not None:
        state_edit(state)
    if qc_edit is not None:
        qc_edit(qc)
    manifest = manifest_json(state)
    qc["manifest_sha256"] = text_digest(manifest)
    save_file(
        state,
        str(dst / "model.safetensors"),
        metadata={"format": "pt", MANIFEST_KEY: manifest, QUANTIZATION_KEY: metadata_digest(qc)},
    )
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def first_module(qc) -> str:
    return sorted(qc["modules"])[0]


def nan_B(state):
    key = next(k for k in sorted(state) if k.endswith(".B"))
    state[key][0, 0] = float("nan")


CRAFTED = {
    "missing-module-entry": (lambda qc: qc["modules"].pop(first_module(qc)), None, "no entry"),
    "format-version": (lambda qc: qc.update(format_version=3), None, "format_version"),
    "dtype-float16-over-float32": (
        lambda qc: qc["modules"][first_module(qc)].update(dtype="float16"),
        None,
        "layout dtype",
    ),
    "top-level-bits": (lambda qc: qc["config"].update(bits=3), None, "contradicts quantization_config.config"),
    "nan-in-B": (None, nan_B, "NaN or Inf"),
    "layout-without-dtype": (lambda qc: qc["modules"][first_module(qc)].pop("dtype"), None, "dtype=None"),
    "layout-not-a-mapping": (lambda qc: qc["modules"].update({first_module(qc): [4]}), None, "not a mapping"),
}


def front_door(door: str, path: Path):
    """Open ``path`` through one front door; a refusal is raised as the error the library raises."""
    if door == "from_pretrained":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path)
    if door == "load_quantized":
        return lords.load_quantized(path, model=tiny())
    from lords_pipelines.cli import cmd_info, parser

    return cmd_info(parser().parse_args(["info", str(path)]))


@pytest.mark.parametrize("door", ["from_pretrained", "load_quantized", "info"])
@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_quantization_metadata_is_refused_by_every_front_door(saved, tmp_path, case, door):
    qc_edit, state_edit, message = CRAFTED[case]
    path = craft(saved, tmp_path / "crafted", qc_edit, state_edit)
    if door == "info" and case == "nan-in-B":
        pytest.skip("lords info reads headers only; the NaN is in the tensor bytes")
    with pytest.raises(CheckpointError, match=message):
        front_door(door, path)


@pytest.mark.parametrize("door", ["from_pretrained", "load_quantized"])
def test_a_shard_index_pointing_outside_the_folder_is_refused(saved, tmp_path, door):
    import shutil

    shutil.copytree(saved, tmp_path / "other")
    victim = tmp_path / "victim"
    victim.mkdir()
    shutil.copy(saved / "config.json", victim / "config.json")
    (victim / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"lm_head.weight": "../other/model.safetensors"}})
    )
    with pytest.raises(CheckpointError, match="outside|not a file of this folder"):
        front_door(door, victim)


@pytest.mark.parametrize("door", ["from_pretrained", "load_quantized"])
def test_quantization_metadata_edited_by_hand_is_refused_by_its_hash(saved, tmp_path, door):
    import shutil

    shutil.copytree(saved, tmp_path / "edited")
    config = json.loads((tmp_path / "edited" / "config.json").read_text())
    config["quantization_config"]["config"]["grid"] = "int"  # well formed, loads, computes another model
    (tmp_path / "edited" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not the one this checkpoint was saved with"):
        front_door(door, tmp_path / "edited")


def test_the_shipped_v2_checkpoint_still_passes_the_whole_check():
    from lords.folder import read_quantization_config, verify_folder

    verify_folder(
        ROOT / "tests/fixtures/checkpoint_v2", read_quantization_config(ROOT / "tests/fixtures/checkpoint_v2")
    )


# --- a refused load changes nothing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ["architecture", "vocabulary", "extra-tensor", "missing-layout-entry"])
def test_a_refused_load_into_a_model_leaves_it_untouched(saved, tmp_path, attack):
    path, model = saved, tiny()
    if attack == "architecture":
        model = tiny_llama(seed=0, **{**TINY, "intermediate": 64})
    elif attack == "vocabulary":
        model = tiny_llama(seed=0, **{**TINY, "vocab": 256})
    elif attack == "extra-tensor":
        path = craft(saved, tmp_path / "c", state_edit=lambda st: st.update(stowaway=torch.zeros(3)))
    else:
        path = craft(saved, tmp_path / "c", qc_edit=lambda qc: qc["modules"].pop(sorted(qc["modules"])[-1]))
    before = layer_state(model)
    with pytest.raises(CheckpointError):
        lords.load_quantized(path, model=model)
    assert same_state(layer_state(model), before)
    assert not any(isinstance(m, lords.QuantizedLinear) for m in model.modules())


@pytest.fixture
def adapter(saved, tmp_path):
    """``(base model, adapter folder)``: an adapter of the saved base with every B, A changed."""
    model, _ = lords.load_quantized(saved)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, lords.LoRDSLinear):
                m.B.add_(1.0)
    lords.save_adapter(model, tmp_path / "adapter")
    base, _ = lords.load_quantized(saved)
    return base, tmp_path / "adapter"


def _rewrite_adapter(folder: Path, edit, rehash: bool) -> None:
    """Rewrite an adapter's tensors with ``edit(state)``: keeping the old manifest (a corrupt file), or with the
    manifest and the config's hash recomputed (a consistent adapter that is wrong all the same)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from lords.integrity import manifest_json, text_digest

    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    edit(state)
    if rehash:
        meta = {**meta, "lords_manifest": manifest_json(state)}
        cfg = json.loads((folder / "adapter_config.json").read_text())
        cfg["adapter_sha256"] = text_digest(meta["lords_manifest"])
        (folder / "adapter_config.json").write_text(json.dumps(cfg))
    save_file(state, str(folder / "adapter_model.safetensors"), metadata=meta)


@pytest.mark.parametrize("attack", ["corrupt-last-tensor", "missing-tensor"])
def test_a_refused_adapter_changes_no_tensor(adapter, attack):
    base, folder = adapter
    if attack == "corrupt-last-tensor":
        _rewrite_adapter(folder, lambda st: st[sorted(st)[-1]].mul_(2), rehash=False)
    else:
        _rewrite_adapter(folder, lambda st: st.pop(sorted(st)[0]), rehash=True)
    before = layer_state(base)
    with pytest.raises(CheckpointError):
        lords.load_adapter(base, folder)
    assert same_state(layer_state(base), before)
