"""Streamed PTQ on one or several GPUs: one process per GPU under ``torchrun``, each quantizing its share of the
decoder blocks (``lords.quantize_streamed`` with the ``torch.distributed`` group); rank zero then writes the
library's checkpoint, bit for bit the one a single process writes with the same seed.

    python -m lords_pipelines.stages.stream_ptq MODEL_DIR --out OUT --bits 3 --steps 500                    # one GPU
    torchrun --nproc-per-node 2 -m lords_pipelines.stages.stream_ptq MODEL_DIR --out OUT --inputs float     # two GPUs

``--inputs float`` (blocks calibrated on the float prefix's activations) makes the blocks independent: each rank
takes a contiguous run of blocks and the ranks never wait for one another. ``--inputs quantized`` (GPTQ's order,
the library's default) is sequential over blocks: the ranks share the linears of each block and meet once per
block. ``OUT/journal`` holds the finished layers (a rerun resumes), ``OUT/quantized`` the checkpoint and
``OUT/timing.json`` seconds and peak memory per rank.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch


def _config(args):
    import lords

    refine = None if args.steps == 0 else lords.RefineConfig(steps=args.steps, lr=args.lr, objective=args.objective)
    return lords.LordsConfig(
        bits=args.bits,
        block_size=args.block_size,
        calib_tokens=args.calib_tokens,
        sample_tokens=0 if args.objective != "act" else 512,
        refine=refine,
        seed=args.seed,
    )


def _calibration(args) -> torch.Tensor:
    """``(1, calib_tokens)``: random ids (``--random-calib``: time and memory only) or the model's tokenizer on
    the offline calibration text."""
    if args.random_calib:
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(args.model_dir).vocab_size
        return torch.randint(0, vocab, (1, args.calib_tokens), generator=torch.Generator().manual_seed(args.seed))
    from transformers import AutoTokenizer

    from lords_pipelines.data.texts import calibration_text, tokenize

    return tokenize(AutoTokenizer.from_pretrained(args.model_dir), calibration_text(), args.calib_tokens)


def _peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(args) -> dict | None:
    """Quantize ``args.model_dir`` on this process's share; returns the timing record on rank zero."""
    import torch.distributed as dist

    import lords
    from lords.distribute import Ranks

    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")  # barriers and a few small objects only: gloo serves CPU and GPU ranks
    ranks = Ranks.current()
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = f"cuda:{local}" if args.device == "cuda" else args.device
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    config = _config(args)
    ids = _calibration(args)
    start = time.time()
    report = lords.quantize_streamed(
        args.model_dir,
        config,
        out / "journal",
        ids,
        inputs=args.inputs,
        device=device,
        dtype=getattr(torch, args.dtype),
        progress=ranks.rank == 0,
        ranks=ranks,
    )
    mine = {
        "rank": ranks.rank,
        "seconds": time.time() - start,
        **{f"{k}_seconds": v for k, v in report.seconds.items()},
        "peak_bytes": _peak_bytes(device),
    }
    every = [None] * ranks.world
    if ranks.world > 1:
        dist.all_gather_object(every, mine)
    else:
        every = [mine]
    record = None
    if ranks.rank == 0:
        model = lords.load_streamed(args.model_dir, config, out / "journal", dtype=getattr(torch, args.dtype))
        lords.save_quantized(model, out / "quantized", config)
        record = {
            "ranks": ranks.world,
            "inputs": args.inputs,
            "layers": len(report.layers),
            "seconds": max(r["seconds"] for r in every),
            "blocks_seconds": max(r["blocks_seconds"] for r in every),
            "peak_bytes": max(r["peak_bytes"] for r in every),
            "per_rank": every,
            "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        }
        from lords.integrity import atomic_write_bytes

        atomic_write_bytes(out / "timing.json", json.dumps(record, indent=1).encode())
        print(json.dumps(record), flush=True)
    if ranks.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return record


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", help="a transformers folder with safetensors shards")
    p.add_argument("--out", required=True)
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=500, help="Algorithm-1 steps T (0: the SVD init alone)")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--objective", default="act_diag", choices=["weight", "act_diag", "act"])
    p.add_argument("--calib-tokens", type=int, default=2048)
    p.add_argument("--random-calib", action="store_true", help="random calibration ids (time and memory runs)")
    p.add_argument("--inputs", default="quantized", choices=["quantized", "float"])
    p.add_argument("--device", default="cuda", help="cuda (this rank's LOCAL_RANK GPU) or cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="blocks' dtype")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    return p


if __name__ == "__main__":
    run(parser().parse_args())
