"""Offline sm_90 compile of the issue-16 kernels on a machine without a GPU (Triton ships ptxas and cuobjdump):
catches compile errors and reports shared memory, registers and spills (LDL/STL in the SASS) before device time is
spent. Pointers and ints get the runtime's ``tt.divisibility=16`` (as on the bench shapes): without it the numbers
are wrong (every kernel seems to spill).

    python -m benchmarks.kernels.sm90_check [d] [s] [ref]     # dequant, dsred, the forward kernels

Run without TRITON_INTERPRET. Not a test: the numbers inform tile choices (docs/kernels.md)."""

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lords_kernels.lords_matmul.backward import _dsred_kernel
from lords_kernels.lords_matmul.dequant import _dequant_kernel

target = GPUTarget("cuda", 90, 32)


def sig_of(fn, ptrs, consts):
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in ptrs:
            sig[name] = ptrs[name]
        else:
            sig[name] = "i32"
    return sig


NOSPEC = {"r", "M", "n_groups", "split_k", "n_slices", "slices_per"}


def build(fn, ptrs, consts, num_warps, num_stages, label):
    # the runtime's specialisation: pointers and ints divisible by 16 carry tt.divisibility (the bench shapes' N, K,
    # strides are); do_not_specialize ints do not
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if n not in consts and n not in NOSPEC}
    src = ASTSource(fn, sig_of(fn, ptrs, consts), constexprs=consts, attrs=attrs)
    try:
        k = triton.compile(src, target=target, options=dict(num_warps=num_warps, num_stages=num_stages))
        md = k.metadata
        import os
        import re
        import subprocess
        import tempfile

        f = tempfile.NamedTemporaryFile(suffix=".cubin", delete=False)
        f.write(k.asm["cubin"])
        f.close()
        bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
        res = subprocess.run(
            [os.path.join(bindir, "cuobjdump"), "--dump-resource-usage", f.name], capture_output=True, text=True
        ).stdout
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", res)
        sass = subprocess.run(
            [os.path.join(bindir, "cuobjdump"), "-sass", f.name], capture_output=True, text=True
        ).stdout
        nl = sum(1 for line in sass.splitlines() if "LDL" in line or "STL" in line)
        print(f"OK   {label}: shared {md.shared} B, {m.group(0) if m else res[:200]}, LDL/STL {nl}", flush=True)
        return k
    except Exception as e:
        print(f"FAIL {label}: {type(e).__name__}: {str(e)[:1500]}", flush=True)


def main(which):
    f16 = "*fp16"
    if "d" in which:
        dptr = dict(lo_ptr="*u8", hi_ptr="*u8", grid_ptr="*fp32", tab_ptr="*i32", B_ptr=f16, A_ptr=f16, w_ptr=f16)
        for BN, G, nw, ns, even in [(128, 4, 8, 2, True), (64, 8, 4, 3, True), (128, 1, 8, 2, False)]:
            consts = dict(BITS=4, T=64, F=2, R=64, BN=BN, GROUPS=G, EVEN=even, PRMT=True, DOT_FP32=False)
            build(_dequant_kernel, dptr, consts, nw, ns, f"dequant BN={BN} G={G} even={even}")
        dptr["B_ptr"] = dptr["A_ptr"] = dptr["w_ptr"] = "*bf16"
        consts = dict(BITS=3, T=64, F=4, R=32, BN=128, GROUPS=4, EVEN=True, PRMT=True, DOT_FP32=False)
        build(_dequant_kernel, dptr, consts, 8, 2, "dequant 3-bit bf16")
    if "s" in which:
        for dt in ("*fp16", "*bf16"):
            sptr = dict(
                g_ptr=dt,
                lo_ptr="*u8",
                hi_ptr="*u8",
                grid_ptr="*fp32",
                B_ptr=dt,
                A_ptr=dt,
                dB_ws_ptr="*fp32",
                dA_ws_ptr="*fp32",
            )
            consts = dict(BITS=4, T=64, F=2, R=64, BN=128, DOT_FP32=False)
            build(_dsred_kernel, sptr, consts, 8, 3, f"dsred {dt}")
    if "ref" in which:
        from lords_kernels.lords_matmul.forward import _gemm_t_kernel, _gemv_kernel

        gptr = dict(
            xa_ptr=f16,
            lo_ptr="*u8",
            hi_ptr="*u8",
            grid_ptr=f16,
            tab_ptr="*i32",
            B_ptr=f16,
            bias_ptr=f16,
            y_ptr=f16,
            ws_ptr="*fp32",
            lock_ptr="*i32",
        )
        consts = dict(
            HAS_BIAS=False,
            BITS=4,
            T=64,
            F=2,
            R=64,
            BN=128,
            Q_AS_B=True,
            EVEN_N=True,
            PRMT=True,
            ONES=False,
            DOT_FP32=False,
        )
        build(_gemv_kernel, gptr, consts, 4, 3, "REF gemv BN128 Q_AS_B")
        consts.update(Q_AS_B=False, ONES=True)
        build(_gemv_kernel, gptr, consts, 4, 3, "REF gemv BN128 ONES")
        tptr = dict(
            x_ptr=f16,
            lo_ptr="*u8",
            hi_ptr="*u8",
            grid_ptr="*fp32",
            tab_ptr="*i32",
            B_ptr=f16,
            A_ptr=f16,
            bias_ptr=f16,
            y_ptr=f16,
            ws_ptr="*fp32",
            lock_ptr="*i32",
        )
        consts = dict(
            HAS_BIAS=False, BITS=4, T=64, F=2, R=64, BM=256, BN=128, GROUP_M=8, PRMT=True, S16=True, DOT_FP32=False
        )
        build(_gemm_t_kernel, tptr, consts, 8, 3, "REF gemm_t BM256 BN128 w8")


if __name__ == "__main__":
    main(sys.argv[1:] or ["d", "s", "ref"])
