"""Figure 3 of the PEFT table: the spectrum of ``ΔW`` after PEFT, LoRDS against a LoRA at the same trainable floats.

``layer_delta(before, after)`` reads ``ΔW`` off a trained layer (``lords.spectrum``): a ``LoRDSLinear`` against its
copy before training (``grid[Q] ⊙ (B'A' − BA)``; the codes are frozen, a test checks), or a peft LoRA layer
(``scaling · B·A``, whatever it started from: ``before`` is then the LoRA's start, which LoftQ and PiSSA fill, so
``ΔW`` is what training added). ``spectrum_rows`` gives each layer's singular values and effective ranks;
``plot_spectra`` draws them (normalised by the largest, log scale).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lords.linear import LoRDSLinear
from lords.spectrum import energy_rank, entropy_rank, lora_delta, lords_delta, singular_values

LAYERS = ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj")
"""The layers Figure 3 shows: the first decoder layer's ``q_proj`` and one MLP projection."""


def layer_delta(before: nn.Module, after: nn.Module) -> torch.Tensor:
    """``ΔW (out, in)`` float64 of one layer: ``LoRDSLinear`` → ``grid[Q] ⊙ (B'A' − BA)``; peft LoRA layer (adapter
    ``default``) → ``scaling·(B'A' − BA)`` (LoRA's start subtracted, zero for peft's default init)."""
    if isinstance(after, LoRDSLinear):
        if not torch.equal(before.qweight, after.qweight):
            raise ValueError("LoRDS PEFT changed the codes: ΔW is not a change of scales")
        values = after.grid[after.codes().long()]
        return lords_delta(values, before.B, before.A, after.B, after.A)
    if hasattr(after, "lora_A"):
        s = after.scaling["default"]
        a0, b0 = before.lora_A["default"].weight, before.lora_B["default"].weight
        a1, b1 = after.lora_A["default"].weight, after.lora_B["default"].weight
        return lora_delta(a1, b1, s) - lora_delta(a0, b0, s)
    raise TypeError(f"{type(after).__name__} is neither a LoRDSLinear nor a peft LoRA layer")


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The layer ``name`` (``model.layers.0.self_attn.q_proj``) in a plain or a peft-wrapped model."""
    for prefix in ("", "base_model.model."):
        try:
            return model.get_submodule(prefix + name)
        except AttributeError:
            continue
    raise KeyError(name)


def spectrum_rows(before: nn.Module, after: nn.Module, names=LAYERS, energy: float = 0.9) -> dict[str, dict]:
    """``{name: {sv, entropy_rank, energy_rank, shape}}`` of ``ΔW`` for each named layer of two copies of a model
    (before and after training)."""
    out = {}
    for name in names:
        sv = singular_values(layer_delta(find_layer(before, name), find_layer(after, name)))
        layer = find_layer(after, name)
        out[name] = {
            "sv": sv.tolist(),
            "entropy_rank": entropy_rank(sv),
            "energy_rank": energy_rank(sv, energy),
            "shape": [layer.out_features, layer.in_features],
        }
    return out


def plot_spectra(spectra: dict[str, dict[str, dict]], path: Path) -> Path:
    """One panel per layer, one line per method: ``σ_k / σ_1`` against ``k`` (log scale), the entropy and 90%-energy
    ranks in the legend. ``spectra``: ``{method: spectrum_rows(...)}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted({name for rows in spectra.values() for name in rows})
    fig, axes = plt.subplots(1, len(layers), figsize=(5 * len(layers), 3.6), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for method, rows in spectra.items():
            if layer not in rows:
                continue
            r = rows[layer]
            sv = torch.tensor(r["sv"])
            top = float(sv[0]) if len(sv) and sv[0] > 0 else 1.0
            label = f"{method} (entropy rank {r['entropy_rank']:.1f}, 90% rank {r['energy_rank']})"
            ax.semilogy(range(1, len(sv) + 1), (sv / top).clamp_min(1e-12).tolist(), label=label)
        ax.set(title=f"ΔW of {layer}", xlabel="k", ylabel="σ_k / σ_1", ylim=(1e-6, 1.5))
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
