"""Layouts of quantized modules, registered by kind: what a checkpoint records of a module and how it is rebuilt.

A quantized module class registers itself under a kind, next to the code that makes it::

    @register_layout("lords")
    class LoRDSLinear(QuantizedLinear): ...

A checkpoint then records, per module, ``module_meta(module)``: a JSON mapping of the sizes, bits and dtype the class
needs, plus the ``kind``. A reader looks the kind up here and builds an empty module of that layout
(``module_from_meta``) that the stored tensors fill. Only registered classes are ever built: a checkpoint names a
kind, never code, and a kind not registered in this process is refused by name.

What a layout class provides (``lords.linear.QuantizedLinear`` implements it for every subclass):

- ``layout_meta(self) -> dict``: the JSON-able fields of this module (``kind`` excluded);
- ``check_meta(meta)`` (classmethod): raise ``CheckpointError`` naming the field that cannot be built from;
- ``from_meta(meta)`` (classmethod): an empty module of that layout (zeros) on the current default device.

The tensors a module of a layout stores, with their shapes and dtypes, are those of its empty module's state dict
(:func:`expected_tensors`): the class says it once, in its constructor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, ConfigError

_CLASSES: dict[str, type] = {}
_KINDS: dict[type, str] = {}
_PROTOCOL = ("layout_meta", "check_meta", "from_meta")


def register_layout(kind: str):
    """Class decorator: checkpoints hold modules of exactly this class under ``kind`` (a subclass registers its own
    kind: a ``LoftQLinear`` is not saved as the ``BlockLinear`` it extends)."""
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"layout kind {kind!r} must be a non-empty string")

    def wrap(cls: type) -> type:
        missing = [name for name in _PROTOCOL if not callable(getattr(cls, name, None))]
        if missing:
            raise ConfigError(
                f"{cls.__name__} cannot register layout {kind!r}: it lacks {missing} "
                "(subclass lords.linear.QuantizedLinear)"
            )
        other = _CLASSES.get(kind)
        # The same class defined again (a module reloaded in a notebook) replaces itself; another class may not.
        if other is not None and (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ConfigError(f"layout kind {kind!r} is already registered by {other.__module__}.{other.__qualname__}")
        _KINDS.pop(other, None)
        _CLASSES[kind], _KINDS[cls] = cls, kind
        return cls

    return wrap


def registered_kinds() -> list[str]:
    return sorted(_CLASSES)


def module_meta(module: nn.Module) -> dict[str, Any]:
    """What it takes to rebuild an empty module of the same layout: ``module.layout_meta()`` and its ``kind``.
    A module whose exact class registered no layout is refused by name (its state would not load back)."""
    kind = _KINDS.get(type(module))
    if kind is None:
        raise CheckpointError(
            f"{type(module).__name__} has no registered layout, so a checkpoint cannot hold it "
            f"(registered kinds: {', '.join(registered_kinds())}; a quantized module class registers "
            "one with lords.layouts.register_layout)"
        )
    return {**module.layout_meta(), "kind": kind}


def layout_class(meta: Any, name: str = "?") -> type:
    """The registered class of the layout entry ``meta`` of module ``name``, after its ``check_meta``. A malformed
    entry or an unknown kind is a ``CheckpointError`` naming the module."""
    try:
        if not isinstance(meta, dict):
            raise CheckpointError(f"layout entry {meta!r} is not a mapping")
        kind = meta.get("kind")
        cls = _CLASSES.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise CheckpointError(f"kind {kind!r} is not a registered layout ({', '.join(registered_kinds())})")
        cls.check_meta(meta)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint module {name!r}: malformed layout: {e}") from None
    return cls


def module_from_meta(meta: Any, name: str = "?") -> nn.Module:
    """An empty quantized module (zeros) of the layout ``meta`` describes; the state dict fills it. Built on the
    current default device (``meta`` inside ``from_pretrained``)."""
    return layout_class(meta, name).from_meta(meta)


def expected_tensors(meta: Any, name: str = "?") -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{tensor suffix: (shape, dtype)}`` that a module of layout ``meta`` stores: its empty module's state dict,
    built on the meta device (no memory)."""
    with torch.device("meta"):
        empty = module_from_meta(meta, name)
    return {key: (tuple(t.shape), t.dtype) for key, t in empty.state_dict().items()}


def expected_shapes(meta: Any, name: str = "?") -> dict[str, tuple[int, ...]]:
    """``{tensor suffix: shape}`` that a module of layout ``meta`` stores."""
    return {key: shape for key, (shape, _) in expected_tensors(meta, name).items()}


def adopt_stored_dtypes(module: nn.Module, dtypes: dict[str, torch.dtype]) -> nn.Module:
    """Give the floating tensors of an empty ``module`` the dtype they are stored in (``{suffix: dtype}``): a
    float32 bias beside bfloat16 scales then loads as float32, bit for bit, where the layout's single ``dtype``
    would have rounded it. Integer tensors (the codes) keep theirs: :func:`check_tensors` requires them exact."""
    for key, t in [*module.named_parameters(), *module.named_buffers()]:
        stored = dtypes.get(key)
        if stored is not None and stored != t.dtype and t.is_floating_point() and stored.is_floating_point:
            t.data = t.data.to(stored)
    return module


def _layout_dtype(meta: dict[str, Any]) -> torch.dtype | None:
    return getattr(torch, meta.get("dtype", ""), None) if isinstance(meta.get("dtype"), str) else None


def check_tensors(meta: Any, name: str, stored: dict[str, tuple[tuple[int, ...], torch.dtype | None]]) -> None:
    """The stored tensors of module ``name`` (``{full tensor name: (shape, dtype)}``) are the ones its layout expects:
    each present, of the expected shape, integer tensors of the expected dtype, the tensors held in the layout's
    ``dtype`` (the scales) in exactly that dtype, other float tensors (a bias) of a float dtype (loaded as stored,
    :func:`adopt_stored_dtypes`). A ``bits`` or ``rank`` that contradicts the tensors is refused
    here, naming the module, before anything loads."""
    for suffix, (shape, dtype) in expected_tensors(meta, name).items():
        key = f"{name}.{suffix}"
        if key not in stored:
            raise CheckpointError(f"checkpoint module {name!r}: tensor {suffix!r} missing from the shards")
        have_shape, have_dtype = stored[key]
        if have_shape != shape:
            raise CheckpointError(
                f"checkpoint module {name!r}: layout {meta} expects {suffix} of shape {shape}, "
                f"the shard holds {have_shape} (bits, rank or sizes contradict the tensors)"
            )
        fits = have_dtype is not None and (
            have_dtype == dtype or (dtype.is_floating_point and have_dtype.is_floating_point)
        )
        if fits and suffix != "bias" and dtype == _layout_dtype(meta) and have_dtype != dtype:
            raise CheckpointError(
                f"checkpoint module {name!r}: layout dtype={meta.get('dtype')!r} but {suffix} is "
                f"stored as {have_dtype} (the layout would round it)"
            )
        if not fits:
            raise CheckpointError(
                f"checkpoint module {name!r}: layout {meta} expects {suffix} stored as "
                f"{'a float dtype' if dtype.is_floating_point else dtype}, the shard holds {have_dtype}"
            )
