"""A model read one decoder block at a time from its safetensors shards: the shard reader, the empty shell with the
blocks removed, each block built from its tensors, and the catcher that records a block's inputs."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from .resume import tensor_fingerprint

_LAYER = re.compile(r"^(.*\.(?:layers|h|blocks))\.(\d+)\.(.+)$")


class _Captured(Exception):
    pass


class _Catcher(nn.Module):
    """Stands in for decoder block 0: records what the model passes to its blocks, then stops the forward."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[torch.Tensor, tuple, dict]] = []

    def forward(self, hidden_states, *args, **kwargs):
        self.calls.append((hidden_states, args, kwargs))
        raise _Captured


class ShardReader:
    """Tensors of a safetensors checkpoint folder (one file or an index of shards), read one at a time."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            from .integrity import shard_files  # refuses an index naming files outside the folder

            shard_files(self.folder)
            self.where = dict(json.loads(index.read_text())["weight_map"])
        elif (self.folder / "model.safetensors").is_file():
            from safetensors import safe_open  # optional dependency, as for every reader of shards

            with safe_open(str(self.folder / "model.safetensors"), framework="pt") as f:
                self.where = {k: "model.safetensors" for k in f.keys()}
        else:
            raise CheckpointError(f"{self.folder} holds neither model.safetensors nor model.safetensors.index.json")

    def names(self) -> list[str]:
        return list(self.where)

    def fingerprint(self) -> str:
        """A cheap digest of the checkpoint's weights: every tensor's name, dtype, shape and first and last rows
        (read through the shards' slices, not whole): what a journal of this model is bound to."""
        import hashlib

        from safetensors import safe_open  # optional dependency, as for every reader of shards

        h = hashlib.sha256()
        by_file: dict[str, list[str]] = {}
        for n in sorted(self.where):
            by_file.setdefault(self.where[n], []).append(n)
        for file in sorted(by_file):
            with safe_open(str(self.folder / file), framework="pt") as f:
                for n in by_file[file]:
                    sl = f.get_slice(n)
                    rows = sl.get_shape()[0] if sl.get_shape() else 0
                    h.update(n.encode())
                    if rows:
                        h.update(tensor_fingerprint(sl[0:1]).encode())
                        h.update(tensor_fingerprint(sl[rows - 1 : rows]).encode())
                    h.update(f"{sl.get_dtype()}|{sl.get_shape()}".encode())
        return h.hexdigest()

    def read(self, names: list[str], strip: str = "") -> dict[str, torch.Tensor]:
        """``{name without the prefix strip: tensor}``, each shard opened once."""
        from safetensors import safe_open  # optional dependency, as for every reader of shards

        by_file: dict[str, list[str]] = {}
        for n in names:
            by_file.setdefault(self.where[n], []).append(n)
        out = {}
        for file, group in by_file.items():
            with safe_open(str(self.folder / file), framework="pt") as f:
                for n in group:
                    out[n.removeprefix(strip)] = f.get_tensor(n)
        return out


def _layers_prefix(names: list[str]) -> tuple[str, int]:
    """The decoder stack's prefix (``model.layers``) and its number of blocks, from tensor names."""
    found = {}
    for n in names:
        m = _LAYER.match(n)
        if m:
            found.setdefault(m.group(1), set()).add(int(m.group(2)))
    if not found:
        raise CheckpointError("no decoder blocks (<prefix>.layers.<i>.*) among the checkpoint's tensors")
    prefix = max(found, key=lambda p: len(found[p]))
    return prefix, max(found[prefix]) + 1


def _shell(hf_config, prefix: str, reader: ShardReader, dtype: torch.dtype):
    """The model with ONE decoder block (a stand-in), every tensor outside the decoder stack loaded."""
    from transformers import AutoModelForCausalLM  # transformers: kept out of import lords

    cfg = copy.deepcopy(hf_config)
    cfg.num_hidden_layers = 1
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = cfg.layer_types[:1]
    with _no_init_weights():  # every parameter outside the stack is loaded below, the stand-in block never runs
        shell = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    outside = [n for n in reader.names() if not n.startswith(prefix + ".")]
    result = shell.load_state_dict(reader.read(outside), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(prefix + ".")]
    if getattr(hf_config, "tie_word_embeddings", False):
        missing = [k for k in missing if k != "lm_head.weight"]
        shell.tie_weights()
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"checkpoint does not fit {type(shell).__name__}: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return shell


def _no_init_weights():
    """transformers' switch that skips random initialisation (buffers computed at construction stay right); a
    no-op where this transformers lacks it. Saves ~12 s of a Llama-3-8B shell (its 128k vocabulary) on 2 cores."""
    try:
        from transformers.initialization import no_init_weights  # transformers: kept out of import lords
    except ImportError:
        return contextlib.nullcontext()
    return no_init_weights()


def _block(hf_config, cls, index: int, tensors: dict[str, torch.Tensor] | None, dtype: torch.dtype) -> nn.Module:
    """Decoder block ``index`` of class ``cls`` with its float weights (None: on the meta device, for planning).

    Built on the meta device and given the shards' tensors (cast to ``dtype``) in place of its own: no random
    initialisation of weights that are overwritten at once (about a second per Llama-3-8B block on the CPU). A block
    whose buffers are not in its state dict (computed at construction) is built on the CPU instead."""
    block = _construct(cls, hf_config, index, "meta").to(dtype)
    if tensors is None:
        return block
    if any(True for _ in block.buffers()):  # e.g. a per-block rotary table: only a real construction computes it
        block = _construct(cls, hf_config, index, "cpu").to(dtype)
        block.load_state_dict(tensors, strict=True)
    else:
        block.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=True, assign=True)
    return block.eval()


def _construct(cls, hf_config, index: int, device: str) -> nn.Module:
    with torch.device(device):
        try:
            return cls(hf_config, layer_idx=index)
        except TypeError:
            try:
                return cls(hf_config, index)
            except TypeError as e:
                raise ConfigError(f"cannot build decoder block {cls.__name__}(config, layer_idx): {e}") from None


def _run_block(block: nn.Module, call) -> torch.Tensor:
    hidden, args, kwargs = call
    out = block(hidden, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _on(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_on(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _on(v, device) for k, v in value.items()}
    return value
