"""Checkpoints written before layouts were registered by kind still load, bit for bit: ``tests/fixtures/checkpoint_v2``
was saved by the library as of commit 7412efd (``make_checkpoint_v2.py``), with a record of what the writer held in
memory. Every reader must give back exactly those tensors: the layout fields, the kinds and the dtypes of that format
are a promise, not an implementation detail."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import lords
from lords.errors import CheckpointError
from lords.integrity import tensor_digest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FOLDER = FIXTURES / "checkpoint_v2"
EXPECTED = json.loads((FIXTURES / "checkpoint_v2_expected.json").read_text())


def _fresh_llama():
    """The saved architecture, random weights: what ``load_quantized(path, model=...)`` is handed."""
    from transformers import AutoConfig, AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(FOLDER))


def _from_pretrained():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(FOLDER)


LOADERS = {
    "load_quantized": lambda: lords.load_quantized(FOLDER)[0],
    "load_quantized-into-a-model": lambda: lords.load_quantized(FOLDER, model=_fresh_llama())[0],
    "from_pretrained": _from_pretrained,
}


@pytest.mark.parametrize("load", LOADERS.values(), ids=LOADERS.keys())
def test_the_v2_fixture_loads_the_tensors_its_writer_held(load):
    model = load()
    modules = {n: type(m).__name__ for n, m in model.named_modules() if isinstance(m, lords.QuantizedLinear)}
    assert modules == EXPECTED["modules"]
    # Dtype, shape and bytes of every tensor: the float32 bias beside o_proj's bfloat16 scales included.
    assert {k: tensor_digest(v) for k, v in sorted(model.state_dict().items())} == EXPECTED["tensors"]
    with torch.no_grad():
        logits = model(torch.tensor(EXPECTED["tokens"])).logits
    expected = torch.tensor(EXPECTED["logits"]).view(EXPECTED["logits_shape"])
    # The weights are bit-identical (above); the tolerance covers only a CPU whose BLAS sums in another order.
    assert torch.allclose(logits, expected, rtol=0, atol=1e-5)


def test_the_v2_fixture_resaves_to_the_same_layout_and_tensors(tmp_path):
    model, config = lords.load_quantized(FOLDER)
    lords.save_quantized(model, tmp_path / "again", config)
    old, new = (lords.checkpoint.read_quantization_config(p) for p in (FOLDER, tmp_path / "again"))
    assert new["modules"] == old["modules"] and new["config"] == old["config"]
    assert new["manifest_sha256"] == old["manifest_sha256"]  # the SHA-256 of a SHA-256 per tensor


def test_a_kind_this_process_never_registered_is_refused_by_name(tmp_path):
    folder = shutil.copytree(FOLDER, tmp_path / "ckpt")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"]["modules"]["model.layers.0.mlp.up_proj"]["kind"] = "os.system"
    (folder / "config.json").write_text(json.dumps(cfg))
    for load in (lambda: lords.load_quantized(folder), lambda: lords.load_quantized(folder, model=_fresh_llama())):
        with pytest.raises(
            CheckpointError,
            match=r"'model.layers.0.mlp.up_proj'.*kind 'os.system' is not a "
            r"registered layout \(blockwise, loftq, lords",
        ):
            load()


def test_codes_stored_as_floats_are_refused_naming_the_module(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(FOLDER, tmp_path / "ckpt")
    state = load_file(str(folder / "model.safetensors"))
    key = "model.layers.0.self_attn.q_proj.qweight"
    state[key] = state[key].float()  # same shape, wrong dtype: the codes would load as garbage after a cast
    from lords.integrity import MANIFEST_KEY, manifest_json, text_digest

    manifest = manifest_json(state)  # re-hashed, so that only the dtype is wrong
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt", MANIFEST_KEY: manifest})
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"]["manifest_sha256"] = text_digest(manifest)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError,
        match=r"'model.layers.0.self_attn.q_proj'.*expects qweight stored as "
        r"torch.uint8, the shard holds torch.float32",
    ):
        lords.load_quantized(folder)
