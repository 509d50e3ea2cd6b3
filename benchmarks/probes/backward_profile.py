"""Torch-profiler view of one LoRDS layer's eager forward + backward through autograd (block-64 parity rank, M = 2048,
4096x4096 and 14336x4096): wall time per call against the GPU's busy time (docs/kernels.md).

    PYTHONPATH=. python benchmarks/probes/backward_profile.py      # one CUDA GPU
"""

import time

import torch
from torch.profiler import ProfilerActivity, profile

import lords_kernels
from benchmarks.kernels.peers import lords_layers, lords_rank

for N, K in [(4096, 4096), (14336, 4096)]:
    M = 2048
    x = torch.randn(M, K, dtype=torch.float16, device="cuda", requires_grad=True)
    dy = torch.randn(M, N, dtype=torch.float16, device="cuda")
    L = lords_layers(torch, N, K, 4, 1, torch.float16, r=lords_rank(N, K, 64), device="cuda")[0]
    L.B.requires_grad_(True)
    L.A.requires_grad_(True)
    fn = lambda: lords_kernels.triton_forward(L, x).backward(dy)
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    print(N, K, "wall per fwd+bwd", (time.perf_counter() - t) / 20 * 1e6, "us")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=10, max_name_column_width=60))
