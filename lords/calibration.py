"""Calibration statistics of each linear layer's inputs, collected by forward hooks.

For each watched layer: ``diag (m,) = E[x_j²]`` over all calibration tokens and, for the ``act``
objective, a seeded sample of input rows ``(t, m)``. The calibration text must not be the evaluation text.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError
from .refine import LayerStats


@torch.no_grad()
def collect_stats(
    model: nn.Module,
    input_ids: torch.Tensor,
    modules: dict[str, nn.Linear],
    sample_tokens: int = 512,
    window: int = 2048,
    seed: int = 0,
    gram: bool = False,
) -> dict[str, LayerStats]:
    """Run ``model`` over ``input_ids (1, T)`` in windows and return ``{name: LayerStats}`` for ``modules``
    (with ``gram``, each layer's ``E[x xᵀ]`` too)."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
        raise ConfigError(f"calibration input_ids must have shape (1, T>0), got {tuple(input_ids.shape)}")
    device = next(model.parameters()).device
    chunks = [input_ids[:, start : start + window] for start in range(0, input_ids.shape[1], window)]
    return stats_over(
        lambda chunk: model(chunk.to(device)), chunks, [c.shape[1] for c in chunks], modules, sample_tokens, seed, gram
    )


@torch.no_grad()
def stats_over(
    run,
    items,
    lengths: list[int],
    modules: dict[str, nn.Module],
    sample_tokens: int = 512,
    seed: int = 0,
    gram: bool = False,
) -> dict[str, LayerStats]:
    """``{name: LayerStats}`` of the inputs ``modules`` see while ``run(item)`` is called for each of ``items``,
    item ``j`` carrying ``lengths[j]`` tokens (a window of a model, or the hidden states of one decoder block).
    ``gram``: also ``E[x xᵀ] (m, m)``, accumulated in float32 on the inputs' device (bounded memory whatever the
    number of tokens, unlike a row sample)."""
    total = sum(lengths)
    gen = torch.Generator().manual_seed(seed)
    keep = torch.zeros(total, dtype=torch.bool)
    keep[torch.randperm(total, generator=gen)[: min(sample_tokens, total)]] = True
    sums = {name: torch.zeros(m.in_features, dtype=torch.float64) for name, m in modules.items()}
    samples: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    grams: dict[str, torch.Tensor] = {}
    state = {"start": 0, "len": 0}

    def hook(name):
        def fn(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            sums[name] += x.double().pow(2).sum(0).cpu()
            if gram:
                xf = x.float()
                grams[name] = grams[name].addmm_(xf.T, xf) if name in grams else xf.T @ xf
            if sample_tokens:
                rows = keep[state["start"] : state["start"] + state["len"]].to(x.device)
                samples[name].append(x[rows].float().cpu())

        return fn

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in modules.items()]
    try:
        start = 0
        for item, length in zip(items, lengths):
            state.update(start=start, len=length)
            run(item)
            start += length
    finally:
        for h in handles:
            h.remove()
    return {
        name: LayerStats(
            diag=(sums[name] / total).float(),
            sample=torch.cat(samples[name]) if sample_tokens else None,
            gram=grams[name] / total if name in grams else None,
        )
        for name in modules
    }
