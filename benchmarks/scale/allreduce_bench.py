"""What one gradient all-reduce costs between the GPUs: the share of a training step that DDP's communication can take.

    torchrun --nproc-per-node 2 -m benchmarks.scale.allreduce_bench --out outputs/reports/allreduce.json

Times ``dist.all_reduce`` of a float32 tensor the size of each stage's gradient on the scale benchmark's 1.1B Llama
(PEFT: ``B, A``, 16.6M floats; QAT: latent weights and scales, 1.1B floats) after 3 warm-up calls, the mean of 10,
and the bus bandwidth NCCL's tests report (``2 (n-1)/n`` × bytes / time). Rank zero prints and writes the rows.
``--backend gloo --floats 1000`` checks the script on CPU processes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

GRADIENT_FLOATS = {"peft": 16_601_088, "qat": 1_098_731_520}  # scale_train.md's trainable floats


def bus_gb_per_s(nbytes: int, seconds: float, world: int) -> float:
    """NCCL-tests' bus bandwidth of an all-reduce: each rank sends and receives ``2 (world-1)/world`` of the bytes."""
    return 2 * (world - 1) / world * nbytes / seconds / 1e9


def time_all_reduce(n: int, device: str, warmup: int = 3, repeat: int = 10) -> float:
    """Mean seconds of one all-reduce of ``n`` float32 values on ``device``."""
    x = torch.ones(n, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        dist.all_reduce(x)
    sync()
    t = time.perf_counter()
    for _ in range(repeat):
        dist.all_reduce(x)
    sync()
    return (time.perf_counter() - t) / repeat


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="nccl", choices=["nccl", "gloo"])
    p.add_argument("--floats", type=int, nargs="+", help="tensor sizes (default: PEFT's and QAT's gradients)")
    p.add_argument("--out", help="JSON path (rank zero writes it)")
    args = p.parse_args(argv)
    if args.backend == "nccl" and torch.cuda.device_count() < 2:
        raise SystemExit(
            f"allreduce_bench with nccl needs a GPU per rank (this machine has {torch.cuda.device_count()}); "
            "--backend gloo --floats 1000 checks it on CPU processes"
        )
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = "cpu"
    if args.backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        device = f"cuda:{torch.cuda.current_device()}"
    sizes = {f"{n} floats": n for n in args.floats} if args.floats else GRADIENT_FLOATS
    rows = []
    for name, n in sizes.items():
        s = time_all_reduce(n, device)
        rows.append(
            {
                "gradient": name,
                "floats": n,
                "bytes": 4 * n,
                "ms": s * 1e3,
                "ranks": world,
                "bus_gb_per_s": bus_gb_per_s(4 * n, s, world),
                "backend": args.backend,
                "device": torch.cuda.get_device_name() if device != "cpu" else "cpu",
            }
        )
    if rank == 0:
        print("| gradient | floats | GB | ms | bus GB/s |\n|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['gradient']} | {r['floats']:,} | {r['bytes'] / 1e9:.3f} | {r['ms']:.2f} | {r['bus_gb_per_s']:.0f} |"
            )
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(rows, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
