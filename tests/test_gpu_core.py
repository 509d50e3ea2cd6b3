"""The library's PTQ on CUDA (run on the device machine: pytest -m gpu)."""

import pytest
import torch

from lords import LordsConfig, RefineConfig, load_quantized, quantize_, save_quantized
from lords_pipelines.models import tiny_llama

pytestmark = pytest.mark.gpu
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("objective", ["weight", "act_diag", "act"])
def test_ptq_on_cuda_matches_cpu_up_to_float_rounding(objective, tokens):
    cfg = LordsConfig(
        bits=3, block_size=16, refine=RefineConfig(steps=10, lr=1e-2, objective=objective), sample_tokens=64
    )
    cpu, gpu = tiny_llama(seed=0), tiny_llama(seed=0).cuda()
    rep_cpu = quantize_(cpu, cfg, calib_ids=tokens, progress=False)
    rep_gpu = quantize_(gpu, cfg, calib_ids=tokens, progress=False)
    assert rep_gpu.rel_error == pytest.approx(rep_cpu.rel_error, rel=2e-2)
    with torch.no_grad():
        a, b = cpu(tokens).logits, gpu(tokens.cuda()).logits.cpu()
    assert float((a - b).norm() / a.norm()) < 5e-2  # codes may flip at rounding boundaries


@cuda
def test_checkpoint_saved_on_cuda_reloads_on_cpu(tmp_path, tokens):
    cfg = LordsConfig(bits=4, block_size=16)
    model = tiny_llama(seed=0).cuda()
    quantize_(model, cfg, progress=False)
    save_quantized(model, tmp_path / "q", cfg)
    loaded, _ = load_quantized(tmp_path / "q")
    with torch.no_grad():
        ref = model.float()(tokens.cuda()).logits.cpu()
        out = loaded(tokens).logits
    assert float((out - ref).norm() / ref.norm()) < 1e-4
