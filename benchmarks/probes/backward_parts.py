"""Host cost of the eager training path of one LoRDS layer (4096x4096, M = 2048), part by part: forward + backward
through autograd, the forward custom op, the plan's forward, the functional forward and backward, the backward custom
op, against three fp16 matmuls (docs/kernels.md). Wall time per call over 30 synchronized calls.

    PYTHONPATH=. python benchmarks/probes/backward_parts.py        # one CUDA GPU
"""

import time

import torch

import lords_kernels
from benchmarks.kernels.peers import lords_layers, lords_rank
from lords_kernels import dispatch
from lords_kernels.lords_matmul import triton as tk

N, K, M = 4096, 4096, 2048
x = torch.randn(M, K, dtype=torch.float16, device="cuda", requires_grad=True)
dy = torch.randn(M, N, dtype=torch.float16, device="cuda")
L = lords_layers(torch, N, K, 4, 1, torch.float16, r=lords_rank(N, K, 64), device="cuda")[0]
L.B.requires_grad_(True)
L.A.requires_grad_(True)
c = lords_kernels.kernel_codes(L)


def wall(name, fn, n=30):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    host = time.perf_counter()
    print(f"{name:34s} {(host - t) / n * 1e6:8.1f} us/call", flush=True)


xd = x.detach()
B, A = L.B.detach(), L.A.detach()
wall("fwd+bwd (autograd, custom op)", lambda: lords_kernels.triton_forward(L, x).backward(dy))
wall("fwd custom op (grad mode)", lambda: lords_kernels.triton_forward(L, x))
with torch.no_grad():
    wall("fwd plan (no grad)", lambda: lords_kernels.triton_forward(L, xd))
    wall("fwd tk.lords_matmul", lambda: tk.lords_matmul(xd, c, L.grid, B, A, None))
    wall("bwd tk.lords_matmul_backward", lambda: tk.lords_matmul_backward(dy, xd, c, L.grid, B, A))
    wall("bwd custom op", lambda: dispatch._matmul_backward_op(dy, xd, c.lo, c.hi, L.grid, B, A, 4, K, True, True))
    W = torch.randn(N, K, dtype=torch.float16, device="cuda")
    wall("fp16 3 mm", lambda: (xd @ W.t(), dy @ W, dy.t() @ xd))
    wall(
        "bwd tk, 5 iters sync each",
        lambda: (tk.lords_matmul_backward(dy, xd, c, L.grid, B, A), torch.cuda.synchronize()),
    )
