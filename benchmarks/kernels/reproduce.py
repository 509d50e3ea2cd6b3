"""``make reproduce-kernels``: the kernel report regenerated on one CUDA GPU, in two parts (each under ten minutes on an
H200), so that a machine lent for short calls can run one part per call.

    python -m benchmarks.kernels.reproduce all    [--out-dir outputs/reports]   # what make reproduce-kernels runs
    python -m benchmarks.kernels.reproduce bench  [--out-dir DIR]               # part 1: kernels.{json,md,png}
    python -m benchmarks.kernels.reproduce decode [--out-dir DIR]               # part 2: kernels_backward.json, decode.*
    python -m benchmarks.kernels.reproduce all --dry-run                        # print the commands (any machine)

Part 1 is the forward benchmark (4 shapes × 7 token counts; fp16, bnb NF4 and gemlite w4 at blocks 64 and 128, LoRDS
4/3/2 bits at block 64 and 4 bits at block 128, 3 alternating rounds per cell); it starts no new cell after
``BENCH_BUDGET_S`` and says so in the JSON. Part 2 is the forward + backward timing (M = 2048 on 4096×4096 and
14336×4096, LoRDS at blocks 64 and 128) and the end-to-end decode benchmark (``benchmarks.kernels.decode``: 7 variants,
batch 1, 16 and a 2048-token prefill, 5 alternating rounds, none started after ``DECODE_BUDGET_S``). Every part ends
with ``python -m benchmarks.kernels.render``, which writes the md/png from whatever JSON the folder holds (after two device
calls, copy both parts' JSON into one folder and run it there again, on any machine).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

BENCH_BUDGET_S = 450
DECODE_BUDGET_S = 330
BACKWARD_SHAPES = "4096x4096,14336x4096"


def commands(part: str, out_dir: str, py: str = sys.executable) -> list[list[str]]:
    """The commands of ``part`` (``bench``, ``decode`` or ``all``), in order."""
    bench = [
        [
            py,
            "-m",
            "benchmarks.kernels.bench",
            "--json",
            f"{out_dir}/kernels.json",
            "--out-dir",
            out_dir,
            "--budget-s",
            str(BENCH_BUDGET_S),
        ]
    ]
    decode = [
        [
            py,
            "-m",
            "benchmarks.kernels.bench",
            "--backward",
            f"{out_dir}/kernels_backward.json",
            "--ms",
            "2048",
            "--shapes",
            BACKWARD_SHAPES,
        ],
        [py, "-m", "benchmarks.kernels.decode", "--out-dir", out_dir, "--budget-s", str(DECODE_BUDGET_S)],
    ]
    render = [[py, "-m", "benchmarks.kernels.render", "--dir", out_dir]]
    parts = {"bench": bench, "decode": decode, "all": bench + decode}
    if part not in parts:
        raise ValueError(f"part {part!r} is not one of {sorted(parts)}")
    return parts[part] + render


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["bench", "decode", "all"])
    p.add_argument("--out-dir", default="outputs/reports")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    cmds = commands(args.part, args.out_dir)
    if args.dry_run:
        print("\n".join(" ".join(c) for c in cmds))
        return 0
    import torch

    if not torch.cuda.is_available():
        sys.exit(
            "benchmarks.kernels.reproduce needs a CUDA GPU (it times CUDA graphs of the Triton kernels, cuBLAS, "
            "bitsandbytes and gemlite); `python -m benchmarks.kernels.render` re-renders the md/png from the JSON on "
            "any machine"
        )
    failed = []
    for c in cmds:
        print("+", " ".join(c), flush=True)
        rc = subprocess.run(c).returncode
        if rc:
            failed.append(f"{' '.join(c[1:4])} (exit {rc})")
    if failed:
        print("failed:", "; ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
