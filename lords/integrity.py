"""Integrity of a quantized checkpoint folder: a SHA-256 per tensor (the manifest), checked shard by shard.

The manifest travels in the safetensors header of every shard (``metadata["lords_manifest"]``) and its own
SHA-256 in ``config.json`` (``quantization_config.manifest_sha256``). On load every shard must carry the same
manifest as ``config.json`` names, every tensor the manifest lists must be found once, and its bytes must hash
to the listed digest: a flipped byte, a truncated shard, a shard swapped in from another checkpoint or a header
edited by hand is refused with the shard file (and the tensor) named. Safetensors only: nothing is executed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from .errors import CheckpointError

MANIFEST_KEY = "lords_manifest"
QUANTIZATION_KEY = "lords_quantization_sha256"
"""Header key of every shard written since: the SHA-256 of ``config.json``'s quantization metadata
(``lords.folder.metadata_digest``), so an edit of that metadata is refused like an edit of a tensor. Checkpoints
without it (written before) load as they did; readers that do not know it ignore it."""
SAFETENSORS_DTYPES = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}
"""The dtype names of safetensors headers that lords tensors can have; any other reads as None (refused where a
layout expects a tensor)."""


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def manifest_json(state: dict[str, torch.Tensor]) -> str:
    """The manifest ``{tensor name: SHA-256}`` as canonical JSON (sorted keys, no spaces)."""
    return json.dumps({name: tensor_digest(t) for name, t in sorted(state.items())}, separators=(",", ":"))


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def shard_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder: the index's shards, else ``model.safetensors``."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from e
        for name in names:
            if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
                raise CheckpointError(
                    f"{index}: shard {name!r} is not a file of this folder (an index may name files beside it only)"
                )
        return [folder / name for name in names]
    single = folder / "model.safetensors"
    if not single.is_file():
        raise CheckpointError(f"{folder}: neither model.safetensors nor model.safetensors.index.json found")
    return [single]


def _open(path: Path):
    from safetensors import safe_open  # optional dependency: only reading a checkpoint needs it

    if not path.is_file():
        raise CheckpointError(f"shard {path.name} not found in {path.parent}")
    try:
        return safe_open(str(path), framework="pt")
    except Exception as e:  # safetensors raises its own types for truncated or malformed headers
        raise CheckpointError(f"shard {path.name} cannot be read as safetensors ({e}): truncated or corrupt") from e


def tensor_specs(files: list[Path]) -> dict[str, tuple[tuple[int, ...], torch.dtype | None]]:
    """``{tensor name: (shape, dtype)}`` over the shards, from their headers only."""
    out = {}
    for path in files:
        with _open(path) as f:
            for name in f.keys():
                tensor = f.get_slice(name)
                out[name] = (tuple(tensor.get_shape()), SAFETENSORS_DTYPES.get(tensor.get_dtype()))
    return out


def shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` over the shards, from their headers only."""
    return {name: shape for name, (shape, _) in tensor_specs(files).items()}


def verify(files: list[Path], manifest_sha256: str | None, quantization_sha256: str | None = None) -> dict[str, str]:
    """Check every shard against the manifest whose SHA-256 ``config.json`` records; returns the manifest.
    ``quantization_sha256``: the digest of ``config.json``'s quantization metadata, checked against the one the
    shards' headers carry (:data:`QUANTIZATION_KEY`) where they carry one.

    Reads one tensor at a time (peak memory: the largest tensor, not the checkpoint)."""
    if not manifest_sha256:
        raise CheckpointError(
            "config.json's quantization_config has no manifest_sha256: not a lords checkpoint "
            "written by save_pretrained / save_quantized, or edited by hand"
        )
    manifest, seen = None, set()
    for path in files:
        with _open(path) as f:
            text = (f.metadata() or {}).get(MANIFEST_KEY)
            if text is None or text_digest(text) != manifest_sha256:
                raise CheckpointError(
                    f"shard {path.name}: its manifest is {'missing' if text is None else 'not'} "
                    "the one config.json names (a shard of another checkpoint, or edited)"
                )
            stored = (f.metadata() or {}).get(QUANTIZATION_KEY)
            if stored is not None and quantization_sha256 is not None and stored != quantization_sha256:
                raise CheckpointError(
                    f"shard {path.name}: config.json's quantization_config is not the one this "
                    "checkpoint was saved with (edited by hand, or another checkpoint's)"
                )
            manifest = manifest or json.loads(text)
            for name in f.keys():
                if name not in manifest:
                    raise CheckpointError(f"shard {path.name}: tensor {name!r} is not in the manifest")
                try:
                    tensor = f.get_tensor(name)
                except Exception as e:
                    raise CheckpointError(
                        f"shard {path.name}: tensor {name!r} cannot be read ({e}): truncated or corrupt"
                    ) from e
                if tensor_digest(tensor) != manifest[name]:
                    raise CheckpointError(
                        f"shard {path.name}: tensor {name!r} does not match its SHA-256 in the "
                        "manifest (tampered or corrupt)"
                    )
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    raise CheckpointError(
                        f"shard {path.name}: tensor {name!r} holds NaN or Inf values; a model "
                        "loaded from it would compute NaN"
                    )
                seen.add(name)
    missing = sorted(set(manifest or {}) - seen)
    if missing:
        raise CheckpointError(f"tensors {missing[:5]} of the manifest are in no shard ({len(missing)} missing)")
    return manifest
