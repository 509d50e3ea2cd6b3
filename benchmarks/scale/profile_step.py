"""Where a QAT or PEFT training step's time goes, without Lightning: the scale benchmark's random 1.1B Llama (or any
size), LoRDS 3 bits block 64, forward + backward + AdamW on random token windows under bf16 autocast, the steady
steps timed and the last ones profiled (``torch.profiler``: the ops with the most GPU time, and the step's wall time
against its GPU time: a step far longer than its GPU time is bound by the host).

    python -m benchmarks.scale.profile_step --stage peft [--layers 24 --hidden 2048 --batch 8 --window 512]
    python -m benchmarks.scale.profile_step --stage qat --out /tmp/prof    # also writes a Chrome trace there

Its step time beside ``scale_bench``'s (the same model and batch through the Lightning stage) says what the stage
adds. Under ``torchrun --nproc-per-node N`` every rank trains its own batch through ``DistributedDataParallel``
(no Lightning), times its steps and writes ``profile_<stage>_rank<r>.json``: 1 against N processes without
Lightning, and the ranks against each other, say where the 2-GPU step's added time goes (``scale_train.md``).
A GPU tool; on the CPU it runs a tiny model (``--smoke``, gloo under torchrun) to check itself.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def build(stage: str, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, device: str):
    """The random Llama, quantized for ``stage`` (``peft``: LoRDS with only ``B, A`` trainable, through the kernels
    on CUDA; ``qat``: ``QATConfig`` prepare, latent weights and scales trainable)."""
    import lords
    from lords_pipelines.models import tiny_llama
    from lords_pipelines.stages.common import apply_backend

    model = tiny_llama(
        seed=0,
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
        vocab=512,
        max_positions=4096,
    ).to(device)
    cfg = lords.LordsConfig(bits=3, block_size=64 if hidden >= 256 else 16)
    if stage == "peft":
        lords.quantize_(model, cfg, progress=False)
        lords.mark_only_scales_trainable(model)
        apply_backend(model, "auto")
    else:
        lords.quantize_(model, lords.QATConfig(cfg, "prepare"), progress=False)
    return model.train()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["peft", "qat"], default="peft")
    from benchmarks.scale.cost_model import DDP_1B  # scale_bench's model and batch
    from benchmarks.scale.scale_bench import BATCH, WINDOW

    p.add_argument("--hidden", type=int, default=DDP_1B.hidden)
    p.add_argument("--layers", type=int, default=DDP_1B.layers)
    p.add_argument("--heads", type=int, default=DDP_1B.heads)
    p.add_argument("--kv-heads", type=int, default=DDP_1B.kv_heads)
    p.add_argument("--intermediate", type=int, default=DDP_1B.intermediate)
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--window", type=int, default=WINDOW)
    p.add_argument("--steps", type=int, default=12, help="timed steps after 3 warm-up steps; the last 3 profiled")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--out", default=None, help="folder for profile_<stage>.json (and a Chrome trace on CUDA)")
    p.add_argument("--smoke", action="store_true", help="a tiny model on the CPU: checks the script, times nothing")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        raise SystemExit("profile_step profiles GPU training steps; --smoke runs a tiny model on the CPU")
    if args.smoke:
        args.hidden, args.layers, args.heads, args.kv_heads, args.intermediate = 128, 2, 4, 2, 256
        args.batch, args.window, args.steps = 2, 32, 4
    rank, world = _init_distributed(cuda)
    device = f"cuda:{torch.cuda.current_device()}" if cuda else "cpu"
    model = build(args.stage, args.hidden, args.layers, args.heads, args.kv_heads, args.intermediate, device)
    params = [q for q in model.parameters() if q.requires_grad]
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            model, device_ids=[torch.cuda.current_device()] if cuda else None, broadcast_buffers=False
        )
    opt = torch.optim.AdamW(params, lr=1e-5)
    ids = torch.randint(
        0, 512, (args.batch, args.window), device=device, generator=torch.Generator(device).manual_seed(rank)
    )

    def step():
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=cuda):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(args.steps - 3):
        step()
    sync()
    step_s = (time.perf_counter() - t) / max(1, args.steps - 3)
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(3):
            step()
        sync()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[: args.top]
    gpu_us = sum(e.self_device_time_total for e in prof.key_averages()) / 3 if cuda else None
    tokens = args.batch * args.window
    result = {
        "stage": args.stage,
        "rank": rank,
        "world_size": world,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "step_s": step_s,
        "tokens_per_s": tokens / step_s,
        "gpu_ms_per_step": None if gpu_us is None else gpu_us / 1e3,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "trainable_floats": sum(q.numel() for q in params),
        "top": [{"op": e.key, "ms_per_step": getattr(e, key) / 3e3, "calls_per_step": e.count / 3} for e in events],
    }
    who = args.stage if world == 1 else f"{args.stage} rank {rank} of {world}"
    lines = [
        f"{who}: {step_s * 1e3:.1f} ms a step ({tokens} tokens: {tokens / step_s:,.0f} tok/s)"
        + ("" if gpu_us is None else f", GPU busy {gpu_us / 1e3:.1f} ms of it"),
        "",
        "| op | ms a step | calls a step |",
        "|---|---|---|",
    ]
    lines += [f"| {e['op'][:60]} | {e['ms_per_step']:.2f} | {e['calls_per_step']:.0f} |" for e in result["top"]]
    print("\n".join(lines), flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        tag = args.stage if world == 1 else f"{args.stage}_rank{rank}"
        (out / f"profile_{tag}.json").write_text(json.dumps(result, indent=1))
        if cuda:
            prof.export_chrome_trace(str(out / f"trace_{tag}.json"))
    if world > 1:
        torch.distributed.destroy_process_group()
    return result


def _init_distributed(cuda: bool) -> tuple[int, int]:
    """(rank, world size): one process without ``torchrun``; under it, NCCL on the rank's GPU (gloo on the CPU)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


if __name__ == "__main__":
    main()
