"""The stages on a CUDA GPU (``trainer=gpu``), tiny Llama, fast_dev_run: devices, buffers and checkpoints agree."""

from __future__ import annotations

import pytest
import torch
from test_pipelines_stages import tiny_settings  # tests/ is on sys.path (pytest prepend mode)

from lords.linear import LoRDSLinear

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
GPU = ["trainer=gpu", "trainer.precision=32-true", "trainer.fast_dev_run=true"]


def test_ptq_refine_on_gpu(tmp_path):
    from lords_pipelines.stages import ptq_refine

    metrics, objs = ptq_refine.run(tiny_settings("ptq_refine", tmp_path, *GPU, "quant.refine.steps=2"))
    layer = objs["model"].model.layers[0].mlp.down_proj
    assert isinstance(layer, LoRDSLinear) and layer.B.is_cuda and metrics["ppl"] > 1


@pytest.mark.parametrize("method", ["lords_peft", "qlora"])
def test_peft_on_gpu(tmp_path, method):
    from lords_pipelines.stages import peft

    extra = ["quant=nf", "quant.bits=4", "stage.method=qlora"] if method == "qlora" else ["quant.refine=null"]
    metrics, objs = peft.run(tiny_settings("peft", tmp_path, *GPU, *extra, "eval.tasks=[]"))  # no lm-eval on the GPU
    assert metrics["trainable_floats"] == 17152 and metrics["ppl"] > 1
    assert next(objs["model"].parameters()).is_cuda  # scored where it trained (Lightning's teardown moves it out)


def test_qat_on_gpu(tmp_path):
    from lords_pipelines.stages import qat

    metrics, objs = qat.run(tiny_settings("qat", tmp_path, *GPU, "quant.bits=3"))
    assert metrics["code_bits"] == 3 and next(objs["model"].parameters()).is_cuda


def test_peft_table_training_leaves_the_model_on_the_gpu():
    """``peft_train.train`` (the PEFT table's loop) returns the model on the device it trained on."""
    from lords import LordsConfig, mark_only_scales_trainable, quantize_
    from lords_pipelines.models import tiny_llama
    from lords_pipelines.stages.common import bpe_tokenizer
    from lords_pipelines.tables.peft_train import train

    model = tiny_llama(seed=0).cuda()
    quantize_(model, LordsConfig(bits=4, block_size=16), progress=False)
    mark_only_scales_trainable(model)
    ids = torch.randint(0, 512, (8, 32))
    items = [{"input_ids": x, "labels": x.clone()} for x in ids]
    train(model, items, bpe_tokenizer(512), 2, 4, 1e-3, 0, precision="32-true")
    assert all(p.is_cuda for p in model.parameters())
