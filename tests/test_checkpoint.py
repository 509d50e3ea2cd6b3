import json

import pytest
import torch

from lords import BlockwiseConfig, LordsConfig, RefineConfig, load_quantized, quantize_, save_quantized
from lords.checkpoint import META, WEIGHTS
from lords.errors import CheckpointError
from lords.models import tiny_llama


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


@pytest.fixture
def saved(tmp_path, tiny_model, tokens):
    cfg = LordsConfig(bits=3, block_size=16, refine=RefineConfig(steps=3))
    quantize_(tiny_model, cfg, progress=False)
    save_quantized(tiny_model, tmp_path / "ckpt", cfg)
    return tmp_path / "ckpt", _logits(tiny_model, tokens), cfg


@pytest.mark.parametrize("config", [LordsConfig(bits=2, block_size=16), BlockwiseConfig(bits=4, block_size=32)],
                         ids=["lords", "blockwise"])
def test_save_then_load_gives_identical_logits_without_float_weights(tmp_path, tiny_model, tokens, config):
    quantize_(tiny_model, config, progress=False)
    save_quantized(tiny_model, tmp_path / "q", config)
    # The model is rebuilt from the saved transformers config: no float weights are needed.
    loaded, loaded_config = load_quantized(tmp_path / "q")
    assert loaded_config == config
    assert torch.equal(_logits(loaded, tokens), _logits(tiny_model, tokens))


def test_load_into_a_given_instance_of_the_architecture(saved, tokens):
    path, logits, _ = saved
    model, _ = load_quantized(path, model=tiny_llama(seed=123))
    assert torch.equal(_logits(model, tokens), logits)


def test_checkpoint_is_safetensors_plus_json_with_a_hash_per_tensor(saved):
    path, _, cfg = saved
    assert sorted(p.name for p in path.iterdir()) == [META, WEIGHTS]
    meta = json.loads((path / META).read_text())
    assert meta["config"]["method"] == "lords" and meta["config"]["bits"] == 3
    assert all(len(h) == 64 for h in meta["manifest"].values())


def test_a_flipped_byte_is_detected_and_the_tensor_named(saved):
    path, _, _ = saved
    data = bytearray((path / WEIGHTS).read_bytes())
    data[-5] ^= 0xFF  # inside the last tensor's bytes
    (path / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_quantized(path)


def test_a_truncated_file_is_refused(saved):
    path, _, _ = saved
    data = (path / WEIGHTS).read_bytes()
    (path / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_quantized(path)


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not a lords checkpoint"):
        load_quantized(tmp_path / "nothing")


def test_the_wrong_architecture_is_refused(saved):
    path, _, _ = saved
    with pytest.raises(CheckpointError, match="wrong architecture"):
        load_quantized(path, model=tiny_llama(hidden=64, intermediate=128))


def test_a_failed_write_leaves_the_previous_checkpoint_intact(saved, tiny_model, monkeypatch, tokens):
    path, logits, cfg = saved
    import lords.checkpoint as ckpt

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ckpt.os, "replace", boom)
    with pytest.raises(RuntimeError):
        save_quantized(tiny_model, path, cfg)
    monkeypatch.undo()
    assert not [p for p in path.iterdir() if p.name.endswith(".tmp")]
    model, _ = load_quantized(path)
    assert torch.equal(_logits(model, tokens), logits)


def test_saving_an_unquantized_model_is_refused(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="quantize_"):
        save_quantized(tiny_model, tmp_path / "x", LordsConfig())
