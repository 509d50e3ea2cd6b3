"""One Triton kernel with its compile-time constants bound, launched through its compiled binary after the first
call: what an eager batch-1 call saves by skipping the JIT's binder and cache key.

``kernel[grid](*args, **meta)`` (Triton's JIT path) re-derives the specialisation of every argument, hashes it and
looks the binary up on every call: ~21 µs a launch on the H200 host against ~11 µs for the compiled kernel's own
launcher (``python -m benchmarks.kernels.launch_probe``, ``outputs/reports/launch_probe.json``). A :class:`Launch` takes
the JIT path once per ``key`` and keeps the binary it returns; later calls with the same key launch that binary.

The key must hold everything of a call that the JIT specialises on and the caller does not keep fixed: the
runners bind every integer and every pointer but ``x`` and ``y`` (the shared scratch buffers are fresh allocations,
so 16-byte aligned like the ones they replace), so their key is :func:`io_key` of ``x`` and ``y``. Under the
interpreter (``TRITON_INTERPRET=1``) there is no binary: every call takes the JIT path.
"""

from __future__ import annotations

from collections.abc import Hashable


class Launch:
    """``launch(grid, key, *args)`` runs ``fn[grid](*args, **meta)``; ``grid`` has all three dimensions (the binary
    takes no shorter one). ``args``: every runtime parameter of ``fn`` in signature order; ``meta``: its constexpr
    parameters (which follow them) and the compile options (``num_warps``, ``num_stages``)."""

    __slots__ = ("fn", "meta", "consts", "binaries")

    def __init__(self, fn, **meta):
        names = fn.arg_names
        n_rt = sum(1 for n in names if n not in meta)
        if any(n in meta for n in names[:n_rt]) or not all(n in meta for n in names[n_rt:]):
            raise ValueError(f"{fn.__name__}: every constexpr must be given and follow the runtime parameters")
        self.fn, self.meta = fn, meta
        self.consts = tuple(meta[n] for n in names[n_rt:])  # what JITFunction.run hands the binary after the args
        self.binaries: dict = {}

    def __call__(self, grid: tuple, key: Hashable, *args) -> None:
        binary = self.binaries.get(key)
        if binary is None:
            binary = self.fn[grid](*args, **self.meta)
            if binary is not None and hasattr(binary, "function"):  # a compiled kernel, not the interpreter's None
                self.binaries[key] = binary
            return
        binary[grid](*args, *self.consts)


def io_key(x, y) -> tuple:
    """The part of a call's specialisation a runner does not fix: the dtypes of ``x (M, K)`` and ``y (M, N)``,
    whether both pointers are 16-byte aligned and how their row strides specialise (1, a multiple of 16, other:
    ``x`` may be a strided view of a longer sequence)."""
    sx, sy = x.stride(0), y.stride(0)
    return (x.dtype, y.dtype, (x.data_ptr() | y.data_ptr()) & 15 == 0, sx == 1, sx % 16 == 0, sy == 1, sy % 16 == 0)
