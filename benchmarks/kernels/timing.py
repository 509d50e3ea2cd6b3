"""How the kernel benchmarks time: CUDA graphs with a cold L2 (enough weight copies to exceed it), peers
interleaved round by round, the copy bandwidth that sets each floor."""

from __future__ import annotations

import math
import statistics
import time


def bandwidth_TBps(torch, triton) -> float:
    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e12


def time_eager(triton, fn, warmup: int = 25, rep: int = 100) -> float:
    return 1e3 * triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def time_graph(torch, fns, min_calls: int = 16, reps: int = 15) -> float:
    """µs per call: ``fns`` (one per weight copy) captured round-robin in one CUDA graph."""
    calls = list(fns) * max(1, math.ceil(min_calls / len(fns)))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in calls[: len(fns)]:
            f()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in calls:
            f()
    g.replay()
    torch.cuda.synchronize()
    ms = median_replay_ms(torch, g, reps)
    del g
    return 1e3 * ms / len(calls)


def median_replay_ms(torch, graph, reps: int) -> float:
    """Median milliseconds of ``reps`` replays of a captured CUDA graph, each timed with device events."""
    times = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        graph.replay()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1))
    return statistics.median(times)


def n_copies(nbytes: int, target: int = 150 << 20, cap: int = 64) -> int:
    return max(2, min(cap, math.ceil(target / max(nbytes, 1))))


class Clock:
    """Graph / eager timings in µs on CUDA; one wall-clock call on the CPU (smoke mode: meaningless numbers)."""

    def __init__(self, torch, triton, cuda: bool, eager_warmup: int = 25, eager_rep: int = 100):
        self.torch, self.triton, self.cuda = torch, triton, cuda
        self.eager_warmup, self.eager_rep = eager_warmup, eager_rep

    def graph(self, fns) -> float:
        if self.cuda:
            return time_graph(self.torch, fns)
        return self.wall(fns[0])

    def eager(self, fn) -> float:
        if self.cuda:
            return time_eager(self.triton, fn, self.eager_warmup, self.eager_rep)
        return self.wall(fn)

    @staticmethod
    def wall(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return 1e6 * (time.perf_counter() - t0)


def alternate(timers: dict, rounds: int):
    """Run every timer once per round, the order rotated by one each round. Returns ``(samples, errors)``: per name
    the list of its rounds' results; a timer that raises is dropped from the later rounds and its error kept."""
    names = list(timers)
    samples = {k: [] for k in names}
    errors = {}
    for i in range(rounds):
        shift = i % max(1, len(names))
        for k in names[shift:] + names[:shift]:
            if k in errors:
                continue
            try:
                samples[k].append(timers[k]())
            except Exception as e:  # a config the compiler rejects, a peer that fails: keep going, say so
                errors[k] = repr(e)[:300]
    return samples, errors
