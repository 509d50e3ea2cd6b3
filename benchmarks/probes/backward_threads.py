"""The same LoRDS forward/backward calls on the main thread and on a second Python thread (autograd runs backwards on a
thread of its own), and one call's host time with the GPU idle (docs/kernels.md).

    PYTHONPATH=. python benchmarks/probes/backward_threads.py      # one CUDA GPU
"""

import threading
import time

import torch

import lords_kernels
from benchmarks.kernels.peers import lords_layers, lords_rank
from lords_kernels import dispatch
from lords_kernels.lords_matmul import triton as tk

N, K, M = 4096, 4096, 2048
x = torch.randn(M, K, dtype=torch.float16, device="cuda")
dy = torch.randn(M, N, dtype=torch.float16, device="cuda")
L = lords_layers(torch, N, K, 4, 1, torch.float16, r=lords_rank(N, K, 64), device="cuda")[0]
c = lords_kernels.kernel_codes(L)
B, A = L.B.detach(), L.A.detach()


def loop(n, out, fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    out.append((time.perf_counter() - t) / n * 1e6)


fns = {
    "bwd op": lambda: dispatch._matmul_backward_op(dy, x, c.lo, c.hi, L.grid, B, A, 4, K, True, True),
    "bwd tk": lambda: tk.lords_matmul_backward(dy, x, c, L.grid, B, A),
    "fwd tk": lambda: tk.lords_matmul(x, c, L.grid, B, A, None),
    "fwd plan": lambda: lords_kernels.triton_forward(L, x),
}
with torch.no_grad():
    for name, fn in fns.items():
        for _ in range(5):
            fn()
        main = []
        loop(30, main, fn)
        th = []
        t = threading.Thread(target=lambda: (torch.cuda.set_device(0), loop(30, th, fn)))
        t.start()
        t.join()
        # host cost alone: no sync inside, time the Python call
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        host = (time.perf_counter() - t0) * 1e6
        print(
            f"{name:9s} main {main[0]:7.1f} us  thread {th[0]:7.1f} us  one call's host time {host:7.1f} us", flush=True
        )
Lg = lords_layers(torch, N, K, 4, 1, torch.float16, r=lords_rank(N, K, 64), device="cuda")[0]
Lg.B.requires_grad_(True)
Lg.A.requires_grad_(True)
xg = x.clone().requires_grad_(True)
f = lambda: lords_kernels.triton_forward(Lg, xg).backward(dy)
for _ in range(5):
    f()
o = []
loop(30, o, f)
print(f"fwd+bwd autograd {o[0]:7.1f} us")
Lg.A.requires_grad_(False)
xg.requires_grad_(False)
for _ in range(5):
    f()
o = []
loop(30, o, f)
print(f"fwd+bwd, only B trainable {o[0]:7.1f} us")
