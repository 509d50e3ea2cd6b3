"""A cost model on paper for LoRDS on Llama-3-8B and 70B: storage, streamed PTQ (memory, time, GPU-hours), QAT
(tokens/s, memory per GPU). Pure arithmetic on the models' shapes; no torch.

Where a figure needs a constant that the shapes do not give, the constant is either COUNTED from the code (named
in its docstring) or CALIBRATED on one committed measurement (``outputs/reports/stream_8b_{2,4}layers.json``,
``scale_train.md``) and then only extrapolated to other shapes or GPU counts: ``outputs/reports/scale.md`` labels each.
"""

from __future__ import annotations

import math

from benchmarks.shapes import LLAMA3_8B, LLAMA3_70B, Shape  # noqa: F401  (cm.LLAMA3_*: what scale_report models)
from lords.distribute import assign_linears
from lords.lowrank import parity_rank

GIB = 2**30


# The model of outputs/reports/scale_train.md (random weights, the offline 512-token tokenizer).
DDP_1B = Shape("Llama-1.1B (scale_train)", 2048, 24, 16, 4, 5632, 512)


def rank_of(n: int, m: int, block: int, rank_factor: float = 1.0) -> int:
    """LoRDS's rank on an ``n × m`` layer: the parity rank at ``block`` times ``rank_factor`` (1: the block-wise
    float budget)."""
    return max(1, int(parity_rank(n, m, block) * rank_factor))


def storage(
    shape: Shape, bits: int, block: int, rank_factor: float = 1.0, scale_bytes: int = 4, float_bytes: int = 2
) -> dict[str, float]:
    """Bytes of the quantized model: codes (``bits`` per weight, packed exactly: ``lords.packing``), scales ``B, A``
    (``r·(n+m)`` floats of ``scale_bytes``: ``LordsConfig.scale_dtype``, float32 by default) and the float tensors
    (``float_bytes``); ``bytes_per_weight`` counts codes and scales over the quantized weights."""
    scales = sum(rank_of(n, m, block, rank_factor) * (n + m) for n, m in shape.linears().values()) * shape.layers
    codes = shape.linear_weights * bits / 8
    total = codes + scales * scale_bytes + shape.float_weights * float_bytes
    return {
        "bits": bits,
        "block": block,
        "rank_factor": rank_factor,
        "scale_floats": scales,
        "bytes_per_weight": (codes + scales * scale_bytes) / shape.linear_weights,
        "bits_per_weight": 8 * (codes + scales * scale_bytes) / shape.linear_weights,
        "model_gib": total / GIB,
        "float16_gib": shape.params * 2 / GIB,
    }


REFINE_COPIES = 7
"""Float32 ``n × m`` tensors alive at the peak of one Algorithm-1 step (counted in ``lords.refine``: the float32
weight, ``S = B·A``, ``W ⊘ S``, the int64 codes (two float32's worth), ``grid[Q]``, the error ``E``, ``h(E)``)."""


def ptq_peak_bytes(shape: Shape, tokens: int = 2048, block_bytes: int = 2) -> float:
    """Peak GPU memory of streamed PTQ (``lords.quantize_streamed``): one block in ``block_bytes`` per weight, the
    refinement working set of its largest linear (:data:`REFINE_COPIES` float32 copies) and the calibration
    activations in and out of the block; the embeddings and head have left the GPU by then."""
    largest = max(n * m for n, m in shape.linears().values())
    return shape.block_weights * block_bytes + REFINE_COPIES * 4 * largest + 2 * tokens * shape.hidden * block_bytes


def seconds_per_weight_step(block_seconds: float, steps: int, shape: Shape) -> float:
    """CALIBRATION: seconds per weight element per Algorithm-1 step, from one measured block of ``shape``."""
    return block_seconds / (steps * shape.block_weights)


def split_fraction(shape: Shape, ranks: int, inputs: str) -> float:
    """The share of one process's block work that the slowest of ``ranks`` does: ``ceil(L / ranks) / L`` for
    float-prefix inputs (whole blocks per rank), the largest rank's share of each block's linears for
    quantized-prefix inputs (``lords.distribute.assign_linears``)."""
    if inputs == "float":
        return math.ceil(shape.layers / ranks) / shape.layers
    sizes = {k: n * m for k, (n, m) in shape.linears().items()}
    owner = assign_linears(sizes, ranks)
    return max(sum(s for k, s in sizes.items() if owner[k] == r) for r in range(ranks)) / shape.block_weights


def fixed_seconds_for(shape: Shape, measured: float, measured_shape: Shape) -> float:
    """The fixed part of streamed PTQ scaled by the embedding's size (building the shell and its head dominate
    it: an assumption, not a measurement)."""
    return measured * shape.vocab * shape.hidden / (measured_shape.vocab * measured_shape.hidden)


def ptq_seconds(
    shape: Shape, steps: int, per_weight_step: float, fixed_seconds: float, ranks: int = 1, inputs: str = "float"
) -> dict[str, float]:
    """Streamed PTQ wall time: a fixed part (shell, shards, embeddings; each rank pays it at the same time) plus
    ``steps × weights × per_weight_step`` per block, split over ``ranks``; GPU-hours count every rank."""
    block = steps * shape.block_weights * per_weight_step
    wall = fixed_seconds + shape.layers * block * split_fraction(shape, ranks, inputs)
    return {"block_seconds": block, "wall_seconds": wall, "wall_minutes": wall / 60, "gpu_hours": ranks * wall / 3600}


def train_flops_per_token(shape: Shape, context: int) -> float:
    """Training FLOPs per token: ``6·N`` over the decoder linears and the head plus attention ``6·L·context·h``."""
    head = shape.vocab * shape.hidden
    return 6 * (shape.linear_weights + head) + 6 * shape.layers * context * shape.hidden


def mfu(tokens_per_s: float, shape: Shape, context: int, peak_flops: float) -> float:
    """CALIBRATION: the fraction of ``peak_flops`` a measured training speed reaches."""
    return tokens_per_s * train_flops_per_token(shape, context) / peak_flops


def qat_tokens_per_s(
    shape: Shape, context: int, peak_flops: float, utilisation: float, gpus: int = 1, scaling: float = 1.0
) -> float:
    """QAT tokens/s on ``gpus`` at a given utilisation; ``scaling`` is the measured multi-GPU efficiency
    (tokens/s on N GPUs over N × one GPU)."""
    return gpus * scaling * utilisation * peak_flops / train_flops_per_token(shape, context)


QAT_STATE_BYTES = 16
"""Per trainable float in QAT: float32 latent weight or scale, its gradient, AdamW's two moments."""
QAT_SAVED_BYTES = 5
"""Per quantized weight, kept for the backward pass by a LoRDS ``lords.QATLinear`` under bf16 autocast (the GPU stages'
precision; measured with autograd's saved-tensor hooks, a test): ``S = B·A`` in bf16 (2) and the codes (1), from which
``lords.qat.FakeQuantize`` recomputes the rest, and the bf16 weight ``F.linear`` keeps (2). Block-wise scales keep
``S`` in float32 (7); without autocast 9. Autograd on the plain expression kept 11 under autocast and 17 without
(measured the same way)."""


def _scale_floats(shape: Shape, block: int) -> int:
    return sum(rank_of(n, m, block) * (n + m) for n, m in shape.linears().values()) * shape.layers


def _activations(shape: Shape, tokens_per_gpu: int, checkpoint_blocks: bool) -> float:
    """Bytes of layer activations kept for backward: ``34 · tokens · hidden`` per block in bf16 (Korthikanti et
    al., attention through SDPA); one block's worth with activation checkpointing per block."""
    return 34 * tokens_per_gpu * shape.hidden * (1 if checkpoint_blocks else shape.layers)


def qat_memory_per_gpu(
    shape: Shape, gpus: int, tokens_per_gpu: int, checkpoint_blocks: bool, block: int = 64
) -> dict[str, float]:
    """GiB per GPU for QAT under FSDP over ``gpus``: the sharded training state (:data:`QAT_STATE_BYTES` per
    latent weight and scale float; the float embeddings and head in bf16), the weight-sized tensors saved for
    backward (:data:`QAT_SAVED_BYTES`; FSDP does not shard them: every rank runs whole blocks) and activations, for
    every block or, with activation checkpointing per block, for one."""
    state = QAT_STATE_BYTES * (shape.linear_weights + _scale_floats(shape, block)) / gpus
    state += 2 * shape.float_weights / gpus
    saved = QAT_SAVED_BYTES * shape.block_weights * (1 if checkpoint_blocks else shape.layers)
    acts = _activations(shape, tokens_per_gpu, checkpoint_blocks)
    return {
        "state_gib": state / GIB,
        "saved_gib": saved / GIB,
        "activations_gib": acts / GIB,
        "total_gib": (state + saved + acts) / GIB,
    }


PEFT_SAVED_BYTES = 0
"""Per quantized weight, kept for backward by ``LoRDSLinear`` under the Triton kernels (what PEFT runs on a GPU;
measured with autograd's saved-tensor hooks, a test): nothing weight-sized, the backward rebuilds its tiles from the
codes, ``B`` and ``A``. The torch reference forward (the CPU) keeps 4: ``grid[Q]`` and the dequantized weight in bf16."""
PEFT_CODE_COPIES = 2
"""Copies of the codes a PEFT run holds on the GPU: the stored ``qweight`` and the kernels' repacked layout (serving
moves the first to host memory, ``use_triton(codes_on_host=True)``; training keeps both)."""


def peft_memory_per_gpu(
    shape: Shape, bits: int, gpus: int, tokens_per_gpu: int, checkpoint_blocks: bool, block: int = 64
) -> dict[str, float]:
    """GiB per GPU for LoRDS PEFT under FSDP over ``gpus``: the codes (:data:`PEFT_CODE_COPIES` copies; buffers, so
    NOT sharded: every rank holds them all), ``B, A`` with gradient and AdamW moments (16 bytes per float, sharded), the float tensors (bf16,
    sharded), :data:`PEFT_SAVED_BYTES` per weight and activations as in :func:`qat_memory_per_gpu`."""
    codes = PEFT_CODE_COPIES * shape.linear_weights * bits / 8
    state = (16 * _scale_floats(shape, block) + 2 * shape.float_weights) / gpus
    saved = PEFT_SAVED_BYTES * shape.block_weights * (1 if checkpoint_blocks else shape.layers)
    acts = _activations(shape, tokens_per_gpu, checkpoint_blocks)
    return {
        "codes_gib": codes / GIB,
        "state_gib": state / GIB,
        "saved_gib": saved / GIB,
        "activations_gib": acts / GIB,
        "total_gib": (codes + state + saved + acts) / GIB,
    }
