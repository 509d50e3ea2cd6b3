"""Tile sweep for the LoRDS kernels: every candidate of a cell timed the same way as the benchmark (CUDA graph, cold
L2), the best written as a tile table that ``merge_table`` folds into the committed one.

    python -m benchmarks.kernels.bench --tune OUT.json --log LOG.json --bits 4 --blocks 64 128 256 --ms 1 4 16 64 256

Cells are ``(M bucket, N, K, bits, R_pad)``: sweeping at the parity ranks of block 64, 128 and 256 (R = 64/32/16 on
the bench shapes) gives every block size its own rows. Each cell also times the no-table heuristic
(``tuning.default_config``) and records ``heuristic_us / best_us`` in the table's ``"heuristic"`` section: run on
shapes outside the table, that ratio is the heuristic's check (goal: within 1.10 of the best). The dequant tile of
each shape and rank is swept once (key ``"dequant,N,K,bits,R"``).
"""

from __future__ import annotations

import dataclasses
import json
import time

from benchmarks.kernels.peers import lords_bytes, lords_layers
from benchmarks.kernels.timing import n_copies, time_graph
from lords.lowrank import parity_rank


def candidate_configs(M, N, K, bits, r):
    """The tiles timed for one cell: the current pick first, then the heuristic's, then the space. The spaces of
    earlier kernel generations are in docs/kernels.md, not here."""
    from lords_kernels.lords_matmul import tuning
    from lords_kernels.lords_matmul.layout import group_size
    from lords_kernels.lords_matmul.tuning import TileConfig

    n_groups = -(-K // group_size(bits))

    def splits(tiles, lo=60, hi=1100, most=3):
        return sorted({s for s in (1, 2, 4, 8, 16) if s <= n_groups and lo <= tiles * s <= hi} or {1})[:most]

    out = [tuning.pick_config(M, N, K, bits, r), tuning.default_config(M, N, K, bits, r)]
    if M == 1:  # gemv: tile width, split-K, operand order, code values through an MMA-made tile of ones
        for bn in (64, 128):
            for s in splits(-(-N // bn)):
                for q_as_b, ones in ((True, False), (False, True)):
                    out.append(
                        TileConfig(
                            "gemv", BN=bn, split_k=s, num_warps=4, num_stages=3, Q_AS_B=q_as_b, PRMT=True, ONES=ones
                        )
                    )
    elif M <= 64:  # gemm_t for decode batches: one or two warpgroups of weight rows, split-K to fill the SMs
        bm = tuning.swap_bm(M)
        for bn, nw in ((64, 4), (128, 8)):
            for s in splits(-(-N // bn) * -(-M // bm), lo=60, hi=600, most=2):
                out.append(TileConfig("gemm_t", BM=bm, BN=bn, split_k=s, num_warps=nw, num_stages=3, S16=True))
    else:  # gemm_t below the crossover: two warpgroups; split-K only where the tiles alone leave SMs idle
        for bm in (128, 256):
            tiles = -(-M // bm) * -(-N // 128)
            for s in (1, 2, 4):
                if bm <= 2 * M and s <= n_groups and (s == 1 or tiles < 132):
                    out.append(TileConfig("gemm_t", BM=bm, BN=128, split_k=s, num_warps=8, num_stages=3, S16=True))
    seen, uniq = set(), []
    for c in out:
        if c not in seen:
            seen.add(c)
            uniq.append(c)
    return uniq


def dequant_candidates():
    from lords_kernels.lords_matmul.tuning import DEQUANT_CONFIG, TileConfig

    out = [DEQUANT_CONFIG]
    for bn, nw in ((64, 4), (128, 8)):
        for groups in (1, 2, 4, 8):
            for ns in (2, 3):
                c = TileConfig("dequant", BN=bn, GROUPS=groups, num_warps=nw, num_stages=ns)
                if c not in out:
                    out.append(c)
    return out


def tune(args, torch, triton):
    """Write the best tile per cell to ``args.tune`` (after every cell: a run cut short keeps what it found)."""
    import lords_kernels
    from lords_kernels.lords_matmul import triton as tk
    from lords_kernels.lords_matmul import tuning
    from lords_kernels.lords_matmul.dequant import dequantize

    table, heuristic, log = {}, {}, []

    def timed(fns, cfg):
        t0 = time.time()
        try:
            us = time_graph(torch, fns)
        except Exception as e:  # a config the compiler rejects (resources): skip it
            print(f"  skip {cfg}: {repr(e)[:120]}", flush=True)
            return None
        log.append(dict(cfg=dataclasses.asdict(cfg), us_graph=us, wall=time.time() - t0))
        return us

    def save():
        with open(args.tune, "w") as fh:
            json.dump({"device": torch.cuda.get_device_name(), "configs": table, "heuristic": heuristic}, fh, indent=1)
        if args.log:
            with open(args.log, "w") as fh:
                json.dump(log, fh)

    for block in args.blocks:
        for N, K in args.shapes:  # not bench.SHAPES: under `python -m` the parsed --shapes live in __main__
            r = parity_rank(N, K, block)
            R = tuning.rank_pad(r)
            for bits in args.bits:
                layers = lords_layers(torch, N, K, bits, n_copies(lords_bytes(N, K, bits)), torch.float16, r=r)
                codes = [lords_kernels.kernel_codes(layer) for layer in layers]
                best = None
                for cfg in dequant_candidates():
                    us = timed(
                        [
                            (lambda c=c, L=L, cfg=cfg: dequantize(c, L.grid, L.B, L.A, torch.float16, cfg=cfg))
                            for c, L in zip(codes, layers)
                        ],
                        cfg,
                    )
                    if us is not None and (best is None or us < best[0]):
                        best = (us, cfg)
                if best:
                    table[f"dequant,{N},{K},{bits},{R}"] = dataclasses.asdict(best[1])
                    print(f"tune dequant N={N} K={K} bits={bits} r={r}: {best[0]:.1f} us {best[1]}", flush=True)
                for M in args.ms:
                    x = torch.randn(M, K, dtype=torch.float16, device="cuda")
                    cands = candidate_configs(M, N, K, bits, r)
                    heur = tuning.default_config(M, N, K, bits, r)
                    best, heur_us = None, None
                    for cfg in cands:
                        us = timed(
                            [
                                (lambda c=c, L=L, cfg=cfg: tk.lords_matmul(x, c, L.grid, L.B, L.A, None, cfg))
                                for c, L in zip(codes, layers)
                            ],
                            cfg,
                        )
                        if us is None:
                            continue
                        log[-1].update(N=N, K=K, M=M, bits=bits, r=r)
                        heur_us = us if cfg == heur else heur_us
                        if best is None or us < best[0]:
                            best = (us, cfg)
                    if best is None:
                        continue
                    key = f"{tuning.m_bucket(M)},{N},{K},{bits},{R}"
                    table[key] = {k: v for k, v in dataclasses.asdict(best[1]).items() if v is not None}
                    heuristic[key] = dict(
                        best_us=best[0], heuristic_us=heur_us, ratio=None if heur_us is None else heur_us / best[0]
                    )
                    print(
                        f"tune N={N} K={K} bits={bits} r={r} M={M}: {best[0]:.1f} us (heuristic {heur_us}) {best[1]}",
                        flush=True,
                    )
                    save()
                del layers, codes
                torch.cuda.empty_cache()
    save()
