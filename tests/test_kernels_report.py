"""The kernel report's code on the CPU: the benchmark scripts end to end under Triton's interpreter (tiny shapes, so a
GPU call cannot fail for a reason the CPU would have shown), their row schemas, the render, the decode benchmark's
byte accounting and fused shapes, and ``make reproduce-kernels`` refusing a machine without CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lords_kernels.lords_matmul import triton as tk  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
interpreter_only = pytest.mark.skipif(
    torch.cuda.is_available() or not tk.INTERPRET, reason="the smoke runs are for the CPU interpreter"
)


@interpreter_only
def test_kernel_rows_keep_their_keys_and_carry_block_size(tmp_path):
    from benchmarks.kernels import bench

    out = bench.main(["--smoke", "--json", str(tmp_path / "kernels.json"), "--out-dir", str(tmp_path)])
    rows = json.loads((tmp_path / "kernels.json").read_text())["rows"]
    assert rows and out["errors"] == {}
    assert all({"N", "K", "M", "bits", "impl", "us", "us_graph", "block_size"} <= set(r) for r in rows)
    seen = {(r["impl"], r["bits"], r["block_size"]) for r in rows}
    assert {("fp16", 16, None), ("lords", 4, 64), ("lords", 2, 64), ("lords", 4, 128), ("floor", 4, 128)} <= seen
    assert (tmp_path / "kernels.md").exists()


@interpreter_only
def test_backward_rows_carry_block_size(tmp_path):
    from benchmarks.kernels import bench

    out = bench.main(["--smoke", "--backward", str(tmp_path / "kernels_backward.json")])
    rows = json.loads((tmp_path / "kernels_backward.json").read_text())["rows"]
    assert out["errors"] == {}
    assert {(r["impl"], r["block_size"]) for r in rows} == {
        ("fp16", None),
        ("lords", 64),
        ("lords_peft", 64),
        ("lords", 128),
        ("lords_peft", 128),
    }
    assert all({"N", "K", "M", "impl", "us_fwd_bwd", "block_size"} <= set(r) for r in rows)


def _row(N, K, M, impl, bits, block, us):
    return dict(N=N, K=K, M=M, impl=impl, bits=bits, block_size=block, us=us, us_graph=us / 2)


def test_render_writes_one_table_per_block_size(tmp_path):
    from benchmarks.kernels.render import render

    rows = [
        _row(64, 128, M, impl, bits, blk, us)
        for M in (1, 16)
        for impl, bits, blk, us in (
            ("fp16", 16, None, 10.0),
            ("bnb_nf4", 4, 64, 12.0),
            ("bnb_nf4", 4, 128, 11.0),
            ("lords", 4, 64, 8.0),
            ("lords", 4, 128, 5.0),
            ("floor", 4, 128, 1.0),
        )
    ]
    (tmp_path / "kernels.json").write_text(
        json.dumps(dict(device="synthetic", bandwidth_TBps=1.0, method="m", rows=rows))
    )
    (tmp_path / "kernels_backward.json").write_text(
        json.dumps(dict(method="b", rows=[dict(N=64, K=128, M=2048, impl="lords", block_size=128, us_fwd_bwd=7.0)]))
    )
    render(str(tmp_path / "kernels.json"), str(tmp_path))
    md = (tmp_path / "kernels.md").read_text()
    b64, b128 = md.index("## Block size 64"), md.index("## Block size 128")
    assert b64 < b128 < md.index("## Backward")
    # block 128: lords 4-bit 2.5 µs (graph) against fp16 5.0 and bnb 5.5 -> 2.00 and 2.20
    assert "| 64×128 | 1 | 10.0 / 5.0 | 11.0 / 5.5 | — | 5.0 / 2.5 | 0.5 | 2.00 | 2.20 |" in md[b128:]
    assert (tmp_path / "kernels.png").exists()


def test_render_reads_rows_written_before_block_size(tmp_path):
    from benchmarks.kernels.render import render

    rows = [
        dict(N=64, K=128, M=1, impl=i, bits=b, us=4.0, us_graph=2.0)
        for i, b in (("fp16", 16), ("gemlite_w4g64", 4), ("lords", 4))
    ]
    (tmp_path / "kernels.json").write_text(json.dumps(dict(device="old", bandwidth_TBps=1.0, method="m", rows=rows)))
    render(str(tmp_path / "kernels.json"), str(tmp_path))
    md = (tmp_path / "kernels.md").read_text()
    assert "## Block size 64" in md and "## Block size 128" not in md
    assert "| 64×128 | 1 | 4.0 / 2.0 | — | 4.0 / 2.0 | 4.0 / 2.0 |" in md


def test_decode_fuses_qkv_and_gate_up_at_their_own_parity_rank():
    from benchmarks.kernels.decode import LLAMA3_8B
    from benchmarks.kernels.peers import lords_rank

    lin = LLAMA3_8B.fused_linears()
    assert lin == {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
    assert [lords_rank(*lin[n], 64) for n in ("qkv", "gate_up")] == [38, 56]
    assert [lords_rank(*lin[n], 128) for n in ("qkv", "gate_up")] == [19, 28]


def test_decode_byte_accounting():
    from benchmarks.kernels.decode import LLAMA3_8B, step_bytes

    params = 6144 * 4096 + 4096 * 4096 + 28672 * 4096 + 4096 * 14336  # per block
    head = 2 * 128256 * 4096
    kv_pos = 2 * 8 * 128 * 2  # K and V of one position, one sequence, one layer, fp16
    fp16 = step_bytes(LLAMA3_8B, 32, "fp16", None, 16, 512, 2048)
    assert fp16 == dict(
        weights=32 * 2 * params,
        head=head,
        kv=32 * kv_pos * 16 * 512,
        total=32 * 2 * params + head + 32 * kv_pos * 16 * 512,
    )
    bnb = step_bytes(LLAMA3_8B, 32, "bnb_nf4", 128, "prefill", 512, 2048)
    assert bnb["weights"] == 32 * (params // 2 + 4 * params // 128) and bnb["kv"] == 32 * kv_pos * 2048
    ranks = {(6144, 4096): 38, (4096, 4096): 32, (28672, 4096): 56, (4096, 14336): 49}
    lords = step_bytes(LLAMA3_8B, 1, "lords4", 64, 1, 512, 2048)
    assert lords["weights"] == params // 2 + sum(2 * r * (N + K) for (N, K), r in ranks.items())


def test_weight_bytes_match_the_tensors_a_call_reads():
    from benchmarks.kernels.peers import Peers, make_module, weight_bytes
    from lords_kernels import kernel_codes

    peers = Peers("cpu")
    N, K = 192, 256
    fp16 = make_module("fp16", N, K, None, peers)
    assert weight_bytes("fp16", N, K, None) == fp16.weight.nbytes
    lords = make_module("lords", N, K, 64, peers)
    codes = kernel_codes(lords)
    assert weight_bytes("lords", N, K, 64) == codes.lo.nbytes + lords.B.nbytes + lords.A.nbytes
    if peers.bnb is not None:
        bnb = make_module("bnb_nf4", N, K, 128, peers)
        assert weight_bytes("bnb_nf4", N, K, 128) == bnb.qweight.nbytes + bnb.state.absmax.nbytes


@pytest.mark.slow  # the whole decode benchmark through the interpreter: about 20 s on 2 cores
@interpreter_only
def test_decode_smoke_rows(tmp_path):
    from benchmarks.kernels import decode

    out = decode.main(["--smoke", "--out-dir", str(tmp_path)])
    rows = json.loads((tmp_path / "decode.json").read_text())["rows"]
    assert all({"kind", "block_size", "batch", "tokens_per_s", "GB_per_s", "peak_mem_bytes"} <= set(r) for r in rows)
    lords = {(r["block_size"], r["batch"]) for r in rows if r["kind"] == "lords4"}
    assert lords == {(b, s) for b in (64, 128) for s in (1, 4, "prefill")}
    assert all(r["finite"] for r in rows)
    assert set(out["errors"]) <= {"gemlite_w4@64", "gemlite_w4@128", "bnb_nf4@64", "bnb_nf4@128"}  # optional peers
    assert "| prefill | lords4 | 128 |" in (tmp_path / "decode.md").read_text()


def test_decode_lords_variant_runs_the_triton_backend():
    from benchmarks.kernels.decode import TINY, Model
    from benchmarks.kernels.peers import Peers

    model = Model(TINY, "lords4", 128, 1, Peers("cpu"), max_batch=1, ctx=4, prefill=4)
    assert {m.backend for m in model.modules() if hasattr(m, "backend")} == {"triton"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the target would run the benchmark")
def test_make_reproduce_kernels_refuses_without_cuda():
    res = subprocess.run(
        ["make", "-s", "reproduce-kernels", f"GPU_PY={sys.executable}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0
    assert "reproduce-kernels needs a CUDA GPU" in res.stderr
    assert "benchmarks.kernels.reproduce" not in res.stdout + res.stderr
