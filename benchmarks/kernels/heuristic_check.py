"""The no-table heuristic against a tile sweep, offline: for every cell a sweep timed (``python -m benchmarks.kernels.bench
--tune T.json --log LOG.json``), the time of the tile ``tuning.default_config`` picks today over the best swept time.

    python -m benchmarks.kernels.heuristic_check LOG.json [LOG2.json ...] [--goal 1.10]

The goal: within 1.10 of the best on shapes the table lacks. The sweep times the heuristic's tile among its
candidates, so a heuristic changed after the sweep is checked here without the GPU as long as it picks tiles the sweep
timed (a pick the log lacks is reported as such, never guessed). Prints a markdown table and the worst cells.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import defaultdict


def cells(log: list[dict]) -> dict[tuple, list[tuple[dict, float]]]:
    """``{(N, K, M, bits, r): [(cfg, us_graph), ...]}`` from a sweep's log (entries without a cell are the dequant
    tiles, skipped)."""
    out = defaultdict(list)
    for e in log:
        if "N" in e and e.get("us_graph") is not None:
            out[(e["N"], e["K"], e["M"], e["bits"], e["r"])].append((e["cfg"], e["us_graph"]))
    return dict(out)


def check(log: list[dict], pick=None) -> list[dict]:
    """One row per cell: best swept time and tile, the picked tile's time and ``ratio`` (None where the sweep did not
    time the pick). ``pick(M, N, K, bits, r) -> TileConfig`` defaults to ``tuning.default_config``."""
    from lords_kernels.lords_matmul import tuning

    pick = pick or tuning.default_config
    rows = []
    for (N, K, M, bits, r), timed in sorted(cells(log).items()):
        best_cfg, best_us = min(timed, key=lambda t: t[1])
        want = dataclasses.asdict(pick(M, N, K, bits, r))
        mine = [us for cfg, us in timed if {k: cfg.get(k) for k in want} == want]
        us = min(mine) if mine else None
        rows.append(
            {
                "N": N,
                "K": K,
                "M": M,
                "bits": bits,
                "r": r,
                "best_us": best_us,
                "best": best_cfg,
                "pick": want,
                "pick_us": us,
                "ratio": None if us is None else us / best_us,
            }
        )
    return rows


def render(rows: list[dict], goal: float) -> str:
    lines = [
        "| N | K | M | bits | r | best µs | heuristic µs | ratio | heuristic's tile |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tile = f"{r['pick']['kernel']} BN {r['pick']['BN']} split {r['pick']['split_k']}"
        ratio = "not swept" if r["ratio"] is None else f"{r['ratio']:.2f}" + (" ✗" if r["ratio"] > goal else "")
        us = "—" if r["pick_us"] is None else f"{r['pick_us']:.1f}"
        lines.append(
            f"| {r['N']} | {r['K']} | {r['M']} | {r['bits']} | {r['r']} | {r['best_us']:.1f} | {us} | {ratio} | {tile} |"
        )
    rated = [r for r in rows if r["ratio"] is not None]
    over = [r for r in rated if r["ratio"] > goal]
    worst = max(rated, key=lambda r: r["ratio"]) if rated else None
    lines += [
        "",
        f"{len(rated)} of {len(rows)} cells rated; {len(over)} above {goal:.2f}"
        + (
            f"; worst {worst['ratio']:.2f} at {worst['N']}x{worst['K']} M = {worst['M']} r = {worst['r']}"
            if worst
            else ""
        ),
    ]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+")
    p.add_argument("--goal", type=float, default=1.10)
    args = p.parse_args(argv)
    log = [e for path in args.logs for e in json.load(open(path))]
    print(render(check(log), args.goal))


if __name__ == "__main__":
    main()
