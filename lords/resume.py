"""A journal of finished layers, so an interrupted ``quantize_`` resumes after the last one.

Each finished layer is written atomically as ``<dir>/layers/<name>.safetensors`` with its layout (``lords.layouts``:
any module class with a registered layout) and its report in the metadata. The journal is bound to everything that
determines its layers: ``<dir>/config.json`` pins the config and ``<dir>/inputs.json`` the digests of the other
inputs (the model's weights by :func:`model_fingerprint`, the calibration tokens, ...). A journal made for other
inputs is refused by name (``CheckpointError``), or emptied and started anew with ``restart=True``; it is never
mixed with a new run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .integrity import atomic_write_bytes
from .layouts import adopt_stored_dtypes, module_from_meta, module_meta
from .report import LayerReport

SAMPLES = 256
"""Elements of a tensor hashed by :func:`tensor_fingerprint`, spread evenly over it, besides its first and last 64."""


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def tensor_fingerprint(t: torch.Tensor, h=None) -> str:
    """A cheap digest of a tensor: its dtype, shape and ~400 of its elements (first, last and evenly spread). Two
    models of one architecture, a retrained or rescaled copy, differ here; reading it costs no copy of the tensor."""
    h = h or hashlib.sha256()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.is_meta or t.numel() == 0:
        return h.hexdigest()
    flat = t.detach().reshape(-1)
    n = flat.numel()
    idx = torch.linspace(0, n - 1, steps=min(n, SAMPLES), device=flat.device).long()
    for part in (flat[:64], flat[-64:], flat[idx]):
        h.update(_bytes(part))
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """:func:`tensor_fingerprint` over every tensor of ``model``'s state dict, by name."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict(keep_vars=True).items()):
        h.update(name.encode())
        h.update(tensor_fingerprint(t).encode())
    return h.hexdigest()


def tokens_digest(ids: torch.Tensor | None) -> str | None:
    """SHA-256 of token ids (all of them: they are small), None for None."""
    if ids is None:
        return None
    return hashlib.sha256(f"{tuple(ids.shape)}|".encode() + _bytes(ids.long())).hexdigest()


def stats_digest(stats: dict | None) -> str | None:
    """:func:`tensor_fingerprint` of calibration statistics handed to ``quantize_`` instead of tokens."""
    if stats is None:
        return None
    h = hashlib.sha256()
    for name in sorted(stats):
        h.update(name.encode())
        for t in (getattr(stats[name], "diag", None), getattr(stats[name], "sample", None)):
            h.update(b"-" if t is None else tensor_fingerprint(t).encode())
    return h.hexdigest()


class LayerJournal:
    """``LayerJournal(dir, config, inputs)``: ``inputs`` maps a name (``"model"``, ``"calibration"``...) to a
    JSON value (a digest) that the layers depend on besides ``config``; only the names given are checked (a reader
    that knows the model alone passes ``{"model": ...}``). ``restart``: empty a journal made for other inputs."""

    def __init__(
        self, directory: str | os.PathLike, config, inputs: dict[str, Any] | None = None, restart: bool = False
    ):
        self.dir = Path(directory)
        (self.dir / "layers").mkdir(parents=True, exist_ok=True)
        cfg_path, inputs_path = self.dir / "config.json", self.dir / "inputs.json"
        wanted = json.dumps(config.to_dict(), sort_keys=True)
        inputs = json.loads(json.dumps(inputs or {}, sort_keys=True))
        differs = self._differs(cfg_path, inputs_path, wanted, inputs)
        if differs and restart:
            shutil.rmtree(self.dir / "layers", ignore_errors=True)
            (self.dir / "layers").mkdir(parents=True, exist_ok=True)
            for path in (cfg_path, inputs_path):
                path.unlink(missing_ok=True)
        elif differs:
            what = ", ".join("another config" if d == "config" else f"other {d.replace('_', ' ')}" for d in differs)
            raise CheckpointError(
                f"{self.dir} holds a PTQ journal made with {what}; its layers "
                "would not be this run's: use a new directory or restart=True to empty it"
            )
        if not cfg_path.exists():
            atomic_write_bytes(cfg_path, wanted.encode())
        if not inputs_path.exists() and inputs:
            atomic_write_bytes(inputs_path, json.dumps(inputs, sort_keys=True).encode())

    def _differs(self, cfg_path: Path, inputs_path: Path, wanted: str, inputs: dict) -> list[str]:
        """What of (config, inputs) the journal on disk was not made with; [] when it fits or is empty."""
        try:
            stored_cfg = json.dumps(json.loads(cfg_path.read_text()), sort_keys=True) if cfg_path.exists() else None
            stored = json.loads(inputs_path.read_text()) if inputs_path.exists() else None
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            return ["records (config.json or inputs.json unreadable)"]
        has_layers = any((self.dir / "layers").glob("*.safetensors"))
        differs = [] if stored_cfg in (None, wanted) else ["config"]
        if stored is None:
            if has_layers and inputs:
                differs.append("inputs (it records none: made by an older lords)")
        elif not isinstance(stored, dict):
            differs.append("inputs (inputs.json is not a mapping)")
        else:
            differs += [key for key, value in inputs.items() if stored.get(key) != value]
        return differs

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
            raise CheckpointError(
                f"journal entry {path} has shape {(module.out_features, module.in_features)}, "
                f"the layer has {tuple(linear.weight.shape)}"
            )
        adopt_stored_dtypes(module, {k: t.dtype for k, t in state.items()})
        module.load_state_dict(state)
        report = json.loads(meta["report"])
        report["shape"] = tuple(report["shape"])
        device = linear.weight.device
        return (module if device.type == "meta" else module.to(device)), LayerReport(**report)
