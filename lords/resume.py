"""A journal of finished layers, so an interrupted ``quantize_`` resumes after the last one.

Each finished layer is written atomically as ``<dir>/layers/<name>.safetensors`` with its layout (``lords.layouts``:
any module class with a registered layout) and its report in the metadata; ``<dir>/config.json`` pins the config, so a
journal made with another config is refused.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from .errors import CheckpointError
from .integrity import atomic_write_bytes
from .layouts import adopt_stored_dtypes, module_from_meta, module_meta
from .report import LayerReport


class LayerJournal:
    def __init__(self, directory: str | os.PathLike, config):
        self.dir = Path(directory)
        (self.dir / "layers").mkdir(parents=True, exist_ok=True)
        cfg_path = self.dir / "config.json"
        wanted = json.dumps(config.to_dict(), sort_keys=True)
        if cfg_path.exists():
            if json.dumps(json.loads(cfg_path.read_text()), sort_keys=True) != wanted:
                raise CheckpointError(f"{self.dir} holds a PTQ journal made with another config; use a new directory")
        else:
            atomic_write_bytes(cfg_path, wanted.encode())

    def _path(self, name: str) -> Path:
        return self.dir / "layers" / f"{name}.safetensors"

    def save(self, name: str, module: nn.Module, report) -> None:
        from safetensors.torch import save  # optional dependency: only a resumable run needs it

        meta = {"module": json.dumps(module_meta(module)), "report": json.dumps(report.__dict__)}
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        atomic_write_bytes(self._path(name), save(state, metadata=meta))

    def report(self, name: str) -> LayerReport | None:
        """The report of finished layer ``name`` (its metadata only), or None if it has not been done."""
        from safetensors import safe_open  # optional dependency: only a resumable run needs it

        path = self._path(name)
        if not path.exists():
            return None
        with safe_open(str(path), framework="pt") as f:
            report = json.loads(f.metadata()["report"])
        report["shape"] = tuple(report["shape"])
        return LayerReport(**report)

    def load(self, name: str, linear: nn.Linear):
        """The finished ``(module, report)`` of layer ``name``, or None if it has not been done."""
        from safetensors import safe_open  # optional dependency: only a resumable run needs it

        path = self._path(name)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata()
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise CheckpointError(f"journal entry {path} is corrupt ({e}); delete it to redo that layer") from e
        module = module_from_meta(json.loads(meta["module"]), name)
        if (module.out_features, module.in_features) != tuple(linear.weight.shape):
            raise CheckpointError(f"journal entry {path} has shape {(module.out_features, module.in_features)}, "
                                  f"the layer has {tuple(linear.weight.shape)}")
        adopt_stored_dtypes(module, {k: t.dtype for k, t in state.items()})
        module.load_state_dict(state)
        report = json.loads(meta["report"])
        report["shape"] = tuple(report["shape"])
        device = linear.weight.device
        return (module if device.type == "meta" else module.to(device)), LayerReport(**report)
