"""Batch-1 greedy decode latency per token, with the model as it is served (nothing merged, no weight cache).

The prompt is prefilled once (KV cache on), then ``new_tokens`` single-token steps are timed, each feeding back the
greedy token; CUDA is synchronised around the timed loop, and a first short run warms up kernels and autotuners.
What is timed is whatever the model's modules do: LoRDS through its Triton kernels once ``lords_kernels.use_triton``
is applied, bitsandbytes' 4-bit gemv plus peft's adapter path for an unmerged LoRA, the merged NF4 model after
``merge_and_unload``. On the CPU it runs (a test checks the shape of the answer), but CPU timings are no speed
comparison: the table's latency is measured on the GPU.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _decode(model: nn.Module, prompt: torch.Tensor, steps: int) -> float:
    """Seconds for ``steps`` cached single-token greedy steps after prefilling ``prompt (1, P)``."""
    out = model(input_ids=prompt, use_cache=True)
    past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    _sync(prompt.device)
    start = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=token, past_key_values=past, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    _sync(prompt.device)
    return time.perf_counter() - start


def decode_ms_per_token(
    model: nn.Module, prompt: torch.Tensor, new_tokens: int = 64, repeats: int = 3, warmup: int = 8
) -> float:
    """Median over ``repeats`` runs of the milliseconds per decoded token at batch 1 after ``prompt (1, P)``."""
    if prompt.dim() != 2 or prompt.shape[0] != 1:
        raise ValueError(f"prompt must be (1, P) token ids, got {tuple(prompt.shape)}")
    was_training = model.training
    model.eval()
    device = next(p for p in model.parameters()).device
    prompt = prompt.to(device)
    _decode(model, prompt, warmup)
    times = [_decode(model, prompt, new_tokens) / new_tokens * 1000 for _ in range(repeats)]
    model.train(was_training)
    return statistics.median(times)
