"""The statistics a table row is read with: collapsed perplexities summarised on the log scale, and zero-shot
differences between two rows by a paired bootstrap over the same items.

An arithmetic mean ± std over runs is fine for perplexities of 20 ± 1, and meaningless for 1e3 … 1e9 (one run
dominates both). Two accuracies over the same 1,500 items are correlated; intervals drawn for each alone overlap
where a paired test separates them, so differences are tested on the items both models answered.
"""

from __future__ import annotations

import math
import statistics

import torch

COLLAPSED = 1e3  # a run whose perplexity exceeds this has collapsed: its row is summarised by the mean log-perplexity


def log_ppl(values: list[float]) -> tuple[float, float]:
    """``(mean, std)`` of ``log(ppl)`` over runs (std 0 for one run)."""
    logs = [math.log(v) for v in values]
    return statistics.fmean(logs), (statistics.stdev(logs) if len(logs) > 1 else 0.0)


def collapsed(values: list[float]) -> bool:
    """Whether any run's perplexity is above :data:`COLLAPSED` (or not finite)."""
    return any(not math.isfinite(v) or v > COLLAPSED for v in values)


def item_scores(runs: list[dict], tasks: list[str]) -> torch.Tensor | None:
    """``(items,)`` float64: each item's correctness averaged over the runs (tasks concatenated in order), or None
    when a run lacks the per-item record (``<task>/correct``, written by ``multiple_choice.score_task``)."""
    if not tasks or any(f"{t}/correct" not in r for r in runs for t in tasks):
        return None
    per_run = [torch.tensor([c == "1" for t in tasks for c in r[f"{t}/correct"]], dtype=torch.float64) for r in runs]
    if len({len(p) for p in per_run}) != 1:
        return None
    return torch.stack(per_run).mean(0)


def paired_bootstrap(a: torch.Tensor, b: torch.Tensor, iters: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """``(delta, low, high)``: mean of ``a − b`` over items (``(items,)`` each, the same items in the same order) and
    its 95% percentile interval from ``iters`` resamples of the items (deterministic for a seed)."""
    if a.shape != b.shape or a.ndim != 1 or a.numel() == 0:
        raise ValueError(f"paired scores need two equal 1-D shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    diff = (a - b).double()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, diff.numel(), (iters, diff.numel()), generator=g)
    means = diff[idx].mean(1).sort().values
    low, high = means[int(0.025 * (iters - 1))], means[int(math.ceil(0.975 * (iters - 1)))]
    return float(diff.mean()), float(low), float(high)
