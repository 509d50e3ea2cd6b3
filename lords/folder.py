"""The lords checkpoint folder: a Hugging Face model folder whose ``config.json`` carries the quantization metadata.

    config.json                     the model's config, with ``quantization_config`` (quant_method "lords": the
                                    lords config, the layout of every quantized module, the manifest's SHA-256)
    model.safetensors               or model-0000i-of-0000n.safetensors + model.safetensors.index.json
                                    (every tensor: ``qweight``, ``B``, ``A`` / ``scales``, ``grid``, float ones)

The layout of a module is its registered kind and fields (``lords.layouts``); this module applies layouts to whole
models and checks a folder against them. ``lords.checkpoint`` (save / load) and ``lords.hf`` (the transformers
quantizer) both build on it. Integrity (``lords.integrity``): a SHA-256 per tensor in every shard's header.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, LordsError
from .integrity import shard_files, tensor_specs, verify
from .layouts import adopt_stored_dtypes, check_tensors, layout_class, module_from_meta, module_meta
from .linear import QuantizedLinear

FORMAT_VERSION = 2
QUANT_METHOD = "lords"

Specs = dict[str, tuple[tuple[int, ...], "torch.dtype | None"]]
"""``{tensor name: (shape, dtype)}`` of the stored tensors, from the shards' headers (``lords.integrity.tensor_specs``)."""


def layout(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: module_meta}`` of every quantized module of ``model`` (one without a registered layout is
    refused by name)."""
    return {name: module_meta(m) for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def check_layout(modules: Any, stored: Specs) -> None:
    """Every layout entry well formed and matching the stored tensors (``lords.layouts.check_tensors``)."""
    if not isinstance(modules, dict) or not modules:
        raise CheckpointError(f"quantization_config.modules is {type(modules).__name__}, not a non-empty mapping")
    for name, meta in modules.items():
        layout_class(meta, name)
        check_tensors(meta, name, stored)
    orphans = sorted(k for k in stored if k.endswith(".qweight") and k.rpartition(".")[0] not in modules)
    if orphans:  # codes of a module the layout does not list: it would be built as a random float linear
        raise CheckpointError(
            f"checkpoint module {orphans[0].rpartition('.')[0]!r} holds quantized tensors but "
            "quantization_config.modules has no entry for it"
        )


def install_layout(model: nn.Module, modules: dict[str, dict[str, Any]], stored: Specs | None = None) -> nn.Module:
    """Replace each named ``nn.Linear`` of ``model`` by an empty quantized module of the saved layout, its float
    tensors in the dtypes ``stored`` names (when given) so that loading copies them bit for bit. Every module is
    built and checked before the first one is swapped in: a refusal leaves ``model`` as it was."""
    new = {}
    for name, meta in modules.items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(
                f"checkpoint module {name!r} does not exist in {type(model).__name__}: wrong architecture"
            ) from None
        module = module_from_meta(meta, name)
        if not isinstance(old, (nn.Linear, QuantizedLinear)) or (old.out_features, old.in_features) != (
            module.out_features,
            module.in_features,
        ):
            raise CheckpointError(
                f"checkpoint module {name!r} is {(module.out_features, module.in_features)} but "
                f"the model has {old}: wrong architecture"
            )
        if stored is not None:
            prefix = f"{name}."
            adopt_stored_dtypes(
                module, {k[len(prefix) :]: dtype for k, (_, dtype) in stored.items() if k.startswith(prefix)}
            )
        new[name] = module
    for name, module in new.items():
        model.set_submodule(name, module)
    return model


FIELDS = ("quant_method", "format_version", "config", "modules", "manifest_sha256", "library_version", "extra")
"""The fields of a lords ``quantization_config``; any other is refused."""


def check_quantization_config(qc: Any, where: str = "config.json") -> dict[str, Any]:
    """The one check of a lords ``quantization_config`` as read from ``config.json`` (``from_pretrained``,
    :func:`lords.load_quantized`, ``lords info`` and adapters all call it): every field present, of its type and
    consistent with the others; returns ``qc``. Each problem is a ``CheckpointError`` naming the field. The stored
    tensors are checked against it by :func:`check_layout` and :func:`check_model_fits`."""
    from .config import config_from_dict

    if not isinstance(qc, dict) or qc.get("quant_method") != QUANT_METHOD:
        raise CheckpointError(f"{where}: quantization_config is not quant_method 'lords': not a lords checkpoint")
    unknown = sorted(set(qc) - set(FIELDS))
    if unknown:
        raise CheckpointError(f"{where}: quantization_config has unknown field(s) {unknown}")
    version = qc.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: quantization_config.format_version={version!r}: lords reads format v{FORMAT_VERSION} only"
        )
    digest = qc.get("manifest_sha256")
    if digest is not None and not (
        isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
    ):
        raise CheckpointError(f"{where}: quantization_config.manifest_sha256={str(digest)[:80]!r} is not a SHA-256")
    if not isinstance(qc.get("extra", {}), (dict, type(None))):
        raise CheckpointError(f"{where}: quantization_config.extra is {type(qc.get('extra')).__name__}, not a mapping")
    if not isinstance(qc.get("library_version", ""), (str, type(None))):
        raise CheckpointError(f"{where}: quantization_config.library_version is not a string")
    if not isinstance(qc.get("config"), dict):
        raise CheckpointError(
            f"{where}: quantization_config.config is {type(qc.get('config')).__name__}, not a lords config mapping"
        )
    try:
        config = config_from_dict(qc["config"])
    except (LordsError, TypeError, ValueError, AttributeError, KeyError, RecursionError, OverflowError) as e:
        raise CheckpointError(f"{where}: quantization_config.config is malformed ({e})") from e
    modules = qc.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise CheckpointError(
            f"{where}: quantization_config.modules is {type(modules).__name__}, not a non-empty mapping"
        )
    for name, meta in modules.items():
        layout_class(meta, name)
    bits = {getattr(leaf, "bits", None) for leaf in config.leaves()}
    if None not in bits:
        for name, meta in modules.items():
            if meta["bits"] not in bits:
                raise CheckpointError(
                    f"{where}: checkpoint module {name!r}: bits={meta['bits']} contradicts "
                    f"quantization_config.config (bits {', '.join(map(str, sorted(bits)))})"
                )
    return qc


def check_model_fits(model: nn.Module, modules: dict[str, dict[str, Any]], stored: Specs, strict: bool = True) -> None:
    """The stored tensors are exactly those of ``model`` with ``modules`` swapped for their layouts, each of the
    model's shape: nothing is replaced, built at random or left unread. Checked before anything changes: an extra
    tensor, a missing one, a module the layout does not list (its codes would be ignored and its weight left at
    random), another architecture or vocabulary are refused by name. ``strict=False`` (``from_pretrained``, where
    transformers itself maps stored names to parameters and reports the rest): only the modules and the tensors of
    a linear the layout does not list."""
    have = {}
    for name, meta in modules.items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(
                f"checkpoint module {name!r} does not exist in {type(model).__name__}: wrong architecture"
            ) from None
        if not isinstance(old, (nn.Linear, QuantizedLinear)) or (old.out_features, old.in_features) != (
            meta["out_features"],
            meta["in_features"],
        ):
            raise CheckpointError(
                f"checkpoint module {name!r} is {(meta['out_features'], meta['in_features'])} but "
                f"the model has {old}: wrong architecture"
            )
    replaced = tuple(f"{name}." for name in modules)
    if not strict:
        linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in modules}
        for key in stored:
            owner, _, suffix = key.rpartition(".")
            if owner in linears and suffix not in linears[owner].state_dict():
                raise CheckpointError(
                    f"checkpoint tensor {key!r}: module {owner!r} holds quantized tensors but "
                    "quantization_config.modules has no entry for it"
                )
        return
    for key, t in model.state_dict(keep_vars=True).items():
        if not key.startswith(replaced):
            have[key] = tuple(t.shape)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    quantized = {k for k in stored if k.startswith(replaced)}
    unexpected = sorted(k for k in stored if k not in have and k not in quantized)
    if unexpected:
        owner = unexpected[0].rpartition(".")[0]
        hint = (
            f" (module {owner!r} holds quantized tensors but quantization_config.modules has no entry for it)"
            if owner in dict(model.named_modules())
            else ""
        )
        raise CheckpointError(f"checkpoint tensors {unexpected[:5]} fit no parameter of {type(model).__name__}{hint}")
    missing = sorted(k for k in have if k not in stored and k not in tied)
    if missing:
        raise CheckpointError(
            f"checkpoint lacks tensors {missing[:5]} of {type(model).__name__} (they would be left at random)"
        )
    wrong = [(k, stored[k][0], have[k]) for k in have if k in stored and tuple(stored[k][0]) != have[k]]
    if wrong:
        k, got, want = wrong[0]
        raise CheckpointError(
            f"checkpoint tensor {k!r} is {got}, the model's is {want} (another vocabulary or architecture)"
        )


def read_quantization_config(path: str | os.PathLike) -> dict[str, Any]:
    """``config.json``'s ``quantization_config`` of a lords folder, checked whole (:func:`check_quantization_config`)."""
    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path} not found: {path} is not a lords checkpoint (a model folder)")
    try:
        qc = json.loads(cfg_path.read_text()).get("quantization_config")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, RecursionError) as e:
        raise CheckpointError(f"{cfg_path} is not a JSON object ({type(e).__name__}); the checkpoint is corrupt") from e
    return check_quantization_config(qc, str(cfg_path))


def metadata_digest(qc: dict[str, Any]) -> str:
    """SHA-256 of the quantization metadata that decides how tensors are read (method, format version, config,
    layouts, extra), as canonical JSON; every shard's header carries it (``lords.integrity.QUANTIZATION_KEY``)."""
    import hashlib

    covered = {k: qc.get(k) for k in ("quant_method", "format_version", "config", "modules", "extra")}
    covered["extra"] = covered["extra"] or {}
    text = json.dumps(json.loads(json.dumps(covered, default=str)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def verify_folder(path: str | os.PathLike, qc: dict[str, Any] | None = None) -> Specs:
    """Check a lords folder's shards (hashes) and layout (shapes, dtypes) without building a model; returns the
    stored tensors' specs."""
    qc = read_quantization_config(path) if qc is None else check_quantization_config(qc, str(path))
    files = shard_files(Path(path))
    specs = tensor_specs(files)  # the headers first: a layout that contradicts them is named before any hashing
    check_layout(qc.get("modules"), specs)
    verify(files, qc.get("manifest_sha256"), metadata_digest(qc))
    return specs


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _siblings(path: Path, kind: str) -> list[Path]:
    """``.<name>.<kind><pid>`` folders beside ``path`` (``tmp``: being written, ``new``: written whole, ``old``:
    the previous folder during the swap), newest first."""
    found = [p for p in path.parent.glob(f".{path.name}.{kind}*") if p.name[len(path.name) + 2 + len(kind) :].isdigit()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def recover(path: str | os.PathLike) -> Path:
    """Finish a swap that a killed :func:`swap_in` left half done: when ``path`` is missing, the newest folder
    written whole (``.<name>.new<pid>``) takes its place, else the previous one (``.<name>.old<pid>``). Leftovers
    of dead writers are removed; a live writer's are left alone. Called by every save and load; returns ``path``."""
    path = Path(path)
    if not path.parent.is_dir():
        return path
    for kind in ("new", "old"):
        if path.exists():
            break
        for candidate in _siblings(path, kind):
            if not _alive(int(candidate.name.rpartition(kind)[2])):
                try:
                    os.replace(candidate, path)
                    break
                except OSError:  # another process recovered first
                    continue
    for kind in ("tmp", "new", "old"):
        for leftover in _siblings(path, kind):
            if not _alive(int(leftover.name.rpartition(kind)[2])):
                shutil.rmtree(leftover, ignore_errors=True)
    return path


def swap_in(path: Path, write) -> Path:
    """``write(folder)`` into a temporary folder beside ``path``, mark it whole by renaming it ``.<name>.new<pid>``,
    then swap it in for ``path``. At every instant ``path`` or a whole folder that :func:`recover` puts back is on
    disk; a failed ``write`` leaves ``path`` as it was."""
    recover(path)
    pid = os.getpid()
    tmp, new, old = (path.with_name(f".{path.name}.{kind}{pid}") for kind in ("tmp", "new", "old"))
    for leftover in (tmp, new, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        write(tmp)
        os.replace(tmp, new)  # written whole: from here on, recover() prefers it to the old folder
        if path.exists():
            os.replace(path, old)
        os.replace(new, path)
    finally:
        for leftover in (tmp, new, old):
            shutil.rmtree(leftover, ignore_errors=True)
    return path
