"""Training on several devices through Lightning's strategies: ``trainer.strategy=ddp`` (Lightning's DDP) or
``trainer.strategy=fsdp`` (fully sharded data parallel).

``fsdp`` is Lightning's ``ModelParallelStrategy`` with PyTorch's FSDP2 (``fully_shard``), data-parallel over every
process and no tensor parallelism: each decoder block is one FSDP unit, the root module another. Lightning's
``FSDPStrategy`` (FSDP1) is not used: Lightning refuses it without a CUDA accelerator and PyTorch's FSDP1 needs
one too ("FSDP needs a non-CPU accelerator device"), so it could not be tested in CI; FSDP2 runs on the CPU with gloo
and on GPUs with NCCL through the same code. Under FSDP2 every parameter is sharded along its first dimension:
``B, A`` of ``LoRDSLinear`` (trainable in PEFT), QAT's latent weights and scales; buffers are not sharded, so the
packed codes ``qweight`` (uint8) and the grid stay whole, frozen and replicated on every rank (at 3 bits the codes
are ~0.4 byte per weight, see ``benchmarks.scale.cost_model``).

At the end of training rank zero needs a plain model (the library's checkpoint, evaluation): :func:`structure_of`
keeps an empty copy of the model before sharding (meta tensors, no memory), and :func:`trained_model` fills it
with the full state dict that every rank helps gather.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lords.errors import ConfigError

STRATEGIES = ("auto", "ddp", "fsdp")


def device_count(accelerator: str, devices) -> int:
    """How many processes ``trainer.devices`` asks for (``-1``: every visible GPU)."""
    if isinstance(devices, int) and devices > 0:
        return devices
    if devices in (-1, "-1", "auto") and accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.device_count()
    if devices in (-1, "-1", "auto"):
        return 1
    raise ConfigError(f"trainer.devices={devices!r} must be a positive count, -1 or 'auto'")


def strategy_for(name: str, accelerator: str, devices, frozen_buffers: bool = False):
    """What ``lightning.Trainer(strategy=...)`` gets for ``trainer.strategy``: the string itself, or for ``fsdp``
    a ``ModelParallelStrategy`` (FSDP2, data parallel over all processes, one checkpoint file assembled on rank 0).
    ``frozen_buffers`` (QAT, PEFT: the packed codes and grids are buffers no step writes): ``ddp`` does not broadcast
    them from rank 0 before every forward (the codes of a 1.1B model at 3 bits are 0.4 GB a step); the stages'
    module broadcasts them once at fit start instead (``lit_train.CausalLMModule.on_fit_start``)."""
    if name == "ddp" and frozen_buffers:
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(broadcast_buffers=False)
    if name != "fsdp":
        return name
    from lightning.pytorch.strategies import ModelParallelStrategy

    return ModelParallelStrategy(
        data_parallel_size=device_count(accelerator, devices), tensor_parallel_size=1, save_distributed_checkpoint=False
    )


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks of a causal LM: the elements of its longest ``ModuleList`` (``model.layers``)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def shard(model: nn.Module, mesh) -> nn.Module:
    """FSDP2 in place: each decoder block a unit, then the root (embeddings, norm, head) over ``mesh``'s
    data-parallel dimension. Parameters become ``DTensor`` shards; buffers stay whole."""
    from torch.distributed.fsdp import fully_shard

    dp = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    for p in model.parameters():
        if not p.is_contiguous():  # FSDP2 shards contiguous tensors only (the SVD init leaves B transposed)
            p.data = p.data.contiguous()
    for block in decoder_blocks(model):
        fully_shard(block, mesh=dp)
    fully_shard(model, mesh=dp)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def structure_of(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and persistent buffers are empty meta tensors (same names, shapes,
    dtypes, ``requires_grad``, ties); non-persistent buffers (rotary tables) are real copies."""
    memo: dict[int, object] = {}
    for t in model.state_dict(keep_vars=True).values():  # parameters and persistent buffers, ties once
        if id(t) not in memo:
            empty = torch.empty_like(t, device="meta")
            memo[id(t)] = nn.Parameter(empty, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else empty
    return copy.deepcopy(model, memo)


def trained_model(trainer, model: nn.Module, skeleton: nn.Module | None, prefix: str = "model.") -> nn.Module | None:
    """The trained ``model`` as a plain module on rank zero, on the device it trained on (None on the other ranks).

    Unsharded strategies return ``model`` itself. Under FSDP every rank takes part in gathering the full state
    dict (collective), and rank zero loads it into ``skeleton`` (:func:`structure_of` taken before training) on the CPU.
    """
    if not is_sharded(model):
        # Lightning's teardown leaves the module on the CPU after fit: evaluate and save where it trained.
        return model.to(trainer.strategy.root_device) if trainer.is_global_zero else None
    if skeleton is None:
        raise ConfigError("trainer.strategy=fsdp: the model's structure must be kept before training (structure_of)")
    state = trainer.strategy.lightning_module_state_dict()  # full tensors on rank 0, empty elsewhere
    if not trainer.is_global_zero:
        return None
    state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    result = skeleton.load_state_dict(state, strict=False, assign=True)
    tied = getattr(getattr(skeleton, "config", None), "tie_word_embeddings", False)
    missing = [k for k in result.missing_keys if not (tied and k == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"gathered state does not fit the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    if tied and hasattr(skeleton, "tie_weights"):
        skeleton.tie_weights()
    return skeleton.to(trainer.strategy.root_device).eval()
