"""The ``prmt`` byte-permute LUT that the GPU kernels inline as PTX, checked on the CPU by emulating the exact PTX
strings that ship (the interpreter cannot run inline assembly). Bit-exact against ``grid[code]`` in fp16 and bf16."""

from __future__ import annotations

import os
import random
import re

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lords.grids import make_grid  # noqa: E402
from lords_kernels.lords_matmul import triton as tk  # noqa: E402

MASK = 0xFFFFFFFF


def _prmt(a: int, b: int, c: int) -> int:
    """PTX ``prmt.b32`` default mode: byte i of d = byte (c's nibble i & 7) of {b, a}; nibble bit 3 = sign fill."""
    src, out = (b << 32) | a, 0
    for i in range(4):
        nib = (c >> (4 * i)) & 0xF
        byte = (src >> (8 * (nib & 7))) & 0xFF
        if nib & 8:
            byte = 0xFF if byte & 0x80 else 0
        out |= byte << (8 * i)
    return out


def _lop3(a: int, b: int, c: int, lut: int) -> int:
    return sum(
        (((lut >> ((((a >> i) & 1) << 2) | (((b >> i) & 1) << 1) | ((c >> i) & 1))) & 1) << i) for i in range(32)
    )


def run_ptx(asm: str, operands: dict[int, int]) -> tuple[int, int]:
    """Emulate the instruction subset of ``_prmt_asm`` on 32-bit values; returns ($0, $1)."""
    regs: dict[str, int] = {f"${k}": v for k, v in operands.items()}

    def val(tok: str) -> int:
        tok = tok.strip()
        return regs[tok] if tok in regs else int(tok, 0)

    for ins in [i.strip() for i in asm.strip("{} ").split(";") if i.strip() and not i.strip().startswith(".reg")]:
        op, args = ins.split(None, 1)
        d, *src = [t.strip() for t in args.split(",")]
        v = [val(t) for t in src]
        if op == "mov.b32":
            r = v[0]
        elif op == "shr.b32":
            r = v[0] >> v[1]
        elif op == "shl.b32":
            r = (v[0] << v[1]) & MASK
        elif op == "and.b32":
            r = v[0] & v[1]
        elif op == "or.b32":
            r = v[0] | v[1]
        elif op == "prmt.b32":
            r = _prmt(v[0], v[1], v[2])
        elif op == "lop3.b32":
            r = _lop3(v[0], v[1], v[2], v[3])
        else:
            raise AssertionError(f"unexpected instruction {op!r}")
        regs[d] = r & MASK
    return regs["$0"], regs["$1"]


def table_words(grid: torch.Tensor, dtype: torch.dtype) -> list[int]:
    return [int(w) & MASK for w in tk.prmt_table(grid, dtype).tolist()]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("bits,shift", [(4, 0), (4, 4), (2, 0), (2, 2), (2, 4), (2, 6), (3, 0)])
@pytest.mark.parametrize("grid_name", ["nf", "int"])
def test_prmt_lut_is_bit_exact(bits, shift, dtype, grid_name):
    grid = make_grid(grid_name, bits)
    words = table_words(grid, dtype)
    want_table = grid.to(dtype)
    rng = random.Random(bits * 10 + shift)
    for asm in {tk._prmt_asm(bits, shift), tk._prmt_asm(bits, "$35") if bits != 3 else tk._prmt_asm(3, 0)}:
        for _ in range(200):
            if bits == 3:
                codes = [rng.randrange(8) for _ in range(4)]
                raw = sum(c << (8 * i) for i, c in enumerate(codes))
            else:
                raw_bytes = [rng.randrange(256) for _ in range(4)]
                raw = sum(b << (8 * i) for i, b in enumerate(raw_bytes))
                codes = [(b >> shift) & ((1 << bits) - 1) for b in raw_bytes]
            ops = {2: raw, 35: shift}
            for i, w in enumerate(words):  # each table word is passed 4 times (pack=4): $3+4i is the one read
                for j in range(4):
                    ops[3 + 4 * i + j] = w
            o0, o1 = run_ptx(asm, ops)
            halves = [o0 & 0xFFFF, o0 >> 16, o1 & 0xFFFF, o1 >> 16]
            got = torch.tensor(halves, dtype=torch.int32).to(torch.int16).view(dtype)
            assert torch.equal(got, want_table[torch.tensor(codes)]), (asm, codes)


def test_prmt_asm_uses_only_emulated_instructions():
    for bits, shift in [(4, 0), (4, 4), (2, 6), (3, 0), (4, "$35")]:
        ops = {m.split()[0] for m in tk._prmt_asm(bits, shift).strip("{} ").split(";") if m.strip()}
        assert ops <= {".reg", "mov.b32", "shr.b32", "shl.b32", "and.b32", "or.b32", "prmt.b32", "lop3.b32"}
        assert re.search(r"\$0\b", tk._prmt_asm(bits, shift)) and re.search(r"\$1\b", tk._prmt_asm(bits, shift))
