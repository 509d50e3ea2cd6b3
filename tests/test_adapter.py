"""PEFT adapters: LoRDS saves only ``B, A`` and the base's hash, reloads onto that base alone; the QLoRA baseline's LoRA
adapter loads onto its block-wise base through peft for evaluation."""

import json

import pytest
import torch

pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM  # noqa: E402

from lords import (  # noqa: E402
    BlockwiseConfig,
    LordsConfig,
    load_adapter,
    mark_only_scales_trainable,
    quantize_,
    save_adapter,
)
from lords.adapter import CONFIG, WEIGHTS  # noqa: E402
from lords.errors import CheckpointError  # noqa: E402
from lords.integrity import shard_files  # noqa: E402
from lords_pipelines.models import tiny_llama  # noqa: E402


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def _train(model, tokens, steps=3):
    """A few optimizer steps on the language-modelling loss of ``tokens`` (whatever is marked trainable)."""
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss = model(tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def _base(path, config, seed=0):
    model = tiny_llama(seed=seed)
    quantize_(model, config, progress=False)
    model.save_pretrained(path)
    return path


@pytest.fixture
def trained(tmp_path, tokens):
    """A LoRDS PEFT run on a base folder: ``(base folder, adapter folder, the PEFT model's logits)``."""
    base = _base(tmp_path / "base", LordsConfig(bits=3, block_size=16))
    model = AutoModelForCausalLM.from_pretrained(base)
    mark_only_scales_trainable(model)
    _train(model, tokens)
    save_adapter(model, tmp_path / "adapter")
    return base, tmp_path / "adapter", _logits(model, tokens)


def test_the_adapter_round_trip_reproduces_the_peft_models_logits(trained, tokens):
    base, adapter, logits = trained
    fresh = AutoModelForCausalLM.from_pretrained(base)
    assert not torch.equal(_logits(fresh, tokens), logits)  # training changed B, A
    assert torch.equal(_logits(load_adapter(fresh, adapter), tokens), logits)


def test_the_adapter_holds_only_b_and_a_in_peft_layout(trained):
    base, adapter, _ = trained
    from safetensors.torch import load_file

    state = load_file(str(adapter / WEIGHTS))
    assert state and all(k.startswith("base_model.model.") and k[-2:] in (".A", ".B") for k in state)
    cfg = json.loads((adapter / CONFIG).read_text())
    base_qc = json.loads((base / "config.json").read_text())["quantization_config"]
    assert cfg["peft_type"] == "LORDS" and cfg["base_manifest_sha256"] == base_qc["manifest_sha256"]
    # Its bytes are the B, A floats (float32) plus a small header; the tiny model's embeddings are small, so the
    # "< 5% of the checkpoint" is shown on the embedded model (slow test below).
    floats = sum(t.numel() for t in state.values())
    assert floats * 4 < (adapter / WEIGHTS).stat().st_size < floats * 4 + 16_384


def test_a_different_base_is_refused(trained, tmp_path):
    _, adapter, _ = trained
    other = AutoModelForCausalLM.from_pretrained(_base(tmp_path / "other", LordsConfig(bits=3, block_size=16), seed=1))
    with pytest.raises(CheckpointError, match="wrong base checkpoint"):
        load_adapter(other, adapter)


def test_a_tampered_adapter_is_refused(trained):
    base, adapter, _ = trained
    data = bytearray((adapter / WEIGHTS).read_bytes())
    data[-2] ^= 0x10
    (adapter / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its SHA-256"):
        load_adapter(AutoModelForCausalLM.from_pretrained(base), adapter)


def test_saving_an_adapter_of_a_model_with_no_base_folder_is_refused(tmp_path):
    model = tiny_llama(seed=0)
    quantize_(model, LordsConfig(bits=3, block_size=16), progress=False)
    with pytest.raises(CheckpointError, match="no base checkpoint hash"):
        save_adapter(model, tmp_path / "adapter")


def test_a_qlora_lora_adapter_loads_onto_its_block_wise_base_for_evaluation(tmp_path, tokens):
    pytest.importorskip("peft")
    from lords_pipelines.adapters import add_lora, matched_lora_ranks
    from lords_pipelines.adapters import load_adapter as load_any

    base = _base(tmp_path / "nf", BlockwiseConfig(bits=4, block_size=16))
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = add_lora(model, matched_lora_ranks(model, 16), seed=0)
    for name, p in lora.named_parameters():  # peft starts lora_B at zero: give it a value, as training would
        if "lora_B" in name:
            p.data.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    logits = _logits(lora, tokens)
    lora.save_pretrained(tmp_path / "qlora_adapter")
    loaded = load_any(AutoModelForCausalLM.from_pretrained(base), tmp_path / "qlora_adapter")
    assert torch.equal(_logits(loaded, tokens), logits)
    assert not torch.equal(_logits(AutoModelForCausalLM.from_pretrained(base), tokens), logits)


@pytest.mark.slow
def test_the_embedded_models_adapter_is_under_5_percent_of_its_checkpoint(tmp_path):
    from lords_pipelines.models import load_model

    model, tok = load_model("smollm2-135m")
    quantize_(model, LordsConfig(bits=4, block_size=64), progress=False)
    model.save_pretrained(tmp_path / "base")
    ids = tok("The capital of France is Paris.", return_tensors="pt").input_ids
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    mark_only_scales_trainable(model)
    logits = _logits(_train(model, ids, steps=1), ids)
    save_adapter(model, tmp_path / "adapter")
    adapter_bytes = sum(f.stat().st_size for f in (tmp_path / "adapter").iterdir())
    base_bytes = sum(f.stat().st_size for f in shard_files(tmp_path / "base"))
    assert adapter_bytes < 0.05 * base_bytes
    fresh = load_adapter(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    assert torch.equal(_logits(fresh, ids), logits)
