"""The checkpoint: a transformers model folder (config.json with quantization_config, safetensors shards) whose every
tensor is hashed; what is wrong with it is refused as a CheckpointError that names the shard, tensor or module."""

import json

import pytest
import torch

from lords import BlockwiseConfig, LordsConfig, RefineConfig, load_quantized, quantize_, save_quantized
from lords.checkpoint import read_quantization_config
from lords.errors import CheckpointError
from lords.integrity import MANIFEST_KEY, shard_files
from lords_pipelines.models import tiny_llama


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def _edit_config(path, fn):
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg["quantization_config"])
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.fixture
def saved(tmp_path, tiny_model, tokens):
    cfg = LordsConfig(bits=3, block_size=16, refine=RefineConfig(steps=3))
    quantize_(tiny_model, cfg, progress=False)
    save_quantized(tiny_model, tmp_path / "ckpt", cfg, max_shard_size="200KB")
    return tmp_path / "ckpt", _logits(tiny_model, tokens), cfg


@pytest.mark.parametrize(
    "config", [LordsConfig(bits=2, block_size=16), BlockwiseConfig(bits=4, block_size=32)], ids=["lords", "blockwise"]
)
def test_save_then_load_gives_identical_logits_without_float_weights(tmp_path, tiny_model, tokens, config):
    quantize_(tiny_model, config, progress=False)
    save_quantized(tiny_model, tmp_path / "q", config)
    # The model is rebuilt from the saved transformers config: no float weights are needed.
    loaded, loaded_config = load_quantized(tmp_path / "q")
    assert loaded_config == config
    assert torch.equal(_logits(loaded, tokens), _logits(tiny_model, tokens))
    assert not any(k.endswith("proj.weight") for k in loaded.state_dict())


def test_load_into_a_given_instance_of_the_architecture(saved, tokens):
    path, logits, _ = saved
    model, _ = load_quantized(path, model=tiny_llama(seed=123))
    assert torch.equal(_logits(model, tokens), logits)


def test_checkpoint_is_a_sharded_model_folder_with_a_hash_per_tensor(saved):
    path, _, _ = saved
    assert (path / "model.safetensors.index.json").is_file() and len(shard_files(path)) > 1
    qc = read_quantization_config(path)
    assert qc["config"]["method"] == "lords" and qc["config"]["bits"] == 3
    assert qc["modules"]["model.layers.0.mlp.up_proj"] == dict(
        in_features=128, out_features=256, bits=3, bias=False, kind="lords", rank=5, dtype="float32"
    )
    from safetensors import safe_open

    with safe_open(str(shard_files(path)[0]), "pt") as f:
        manifest = json.loads(f.metadata()[MANIFEST_KEY])
    assert all(len(h) == 64 for h in manifest.values()) and "model.layers.1.mlp.down_proj.qweight" in manifest


def test_a_flipped_byte_is_detected_and_the_shard_and_tensor_named(saved):
    path, _, _ = saved
    shard = shard_files(path)[-1]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # inside the last tensor's bytes
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"shard {shard.name}: tensor .* SHA-256"):
        load_quantized(path)


def test_a_truncated_shard_is_refused(saved):
    path, _, _ = saved
    shard = shard_files(path)[0]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{shard.name}.*truncated or corrupt"):
        load_quantized(path)


def test_a_shard_of_another_checkpoint_is_refused(saved, tmp_path, tokens):
    path, _, cfg = saved
    other = tiny_llama(seed=1)
    quantize_(other, cfg, progress=False)
    save_quantized(other, tmp_path / "other", cfg, max_shard_size="200KB")
    shard = shard_files(path)[0]
    shard.write_bytes((tmp_path / "other" / shard.name).read_bytes())
    with pytest.raises(CheckpointError, match=f"shard {shard.name}: its manifest is not the one config.json names"):
        load_quantized(path)


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not a lords checkpoint"):
        load_quantized(tmp_path / "nothing")


def test_the_wrong_architecture_is_refused(saved):
    path, _, _ = saved
    with pytest.raises(CheckpointError, match="wrong architecture"):
        load_quantized(path, model=tiny_llama(hidden=64, intermediate=128))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(dtype="float33"), "dtype='float33' is not one of"),
        (lambda m: m.update(bits=4), "bits=4 contradicts quantization_config.config"),
        (lambda m: m.update(rank=7), "expects B of shape"),
        (lambda m: m.update(rank="five"), "rank='five' is not a positive integer"),
        (lambda m: m.update(kind="gptq"), "kind 'gptq'"),
    ],
    ids=["dtype-name", "bits-vs-tensors", "rank-vs-tensors", "rank-type", "kind"],
)
def test_malformed_layout_metadata_is_a_checkpoint_error_naming_the_module(saved, edit, message):
    path, _, _ = saved
    _edit_config(path, lambda qc: edit(qc["modules"]["model.layers.1.mlp.up_proj"]))
    with pytest.raises(CheckpointError, match=f"'model.layers.1.mlp.up_proj'.*{message}"):
        load_quantized(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda qc: qc["config"].update(bits="three"), "quantization_config.config is malformed"),
        (lambda qc: qc.update(ranks=[1, 2]), r"unknown field\(s\) \['ranks'\]"),
    ],
    ids=["config-field", "unknown-field"],
)
def test_a_malformed_quantization_config_is_a_checkpoint_error(saved, edit, message):
    path, _, _ = saved
    _edit_config(path, edit)
    from transformers import AutoModelForCausalLM

    with pytest.raises(CheckpointError, match=message):
        AutoModelForCausalLM.from_pretrained(path)


def test_a_failed_write_leaves_the_previous_checkpoint_intact(saved, tiny_model, monkeypatch, tokens):
    path, logits, cfg = saved
    import lords.checkpoint as ckpt

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ckpt.os, "replace", boom)
    with pytest.raises(RuntimeError):
        save_quantized(tiny_model, path, cfg)
    monkeypatch.undo()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]
    model, _ = load_quantized(path)
    assert torch.equal(_logits(model, tokens), logits)


def test_saving_an_unquantized_model_is_refused(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="quantize_"):
        save_quantized(tiny_model, tmp_path / "x", LordsConfig())
