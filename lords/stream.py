"""Streamed PTQ: quantize a model that does not fit in memory, one decoder block at a time (GPTQ's order).

Only the embeddings, the final norm and head, and ONE decoder block are ever in memory in float, beside the
calibration activations ``(windows, T, hidden)``. The block's weights are read from the safetensors shards; its
linears are calibrated on the hidden states that reach it, quantized by ``config`` (any config ``quantize_`` takes,
mixed precision included), written to a per-layer journal as they finish (a rerun resumes after the last finished
block), and the block is run again to produce the next block's inputs.

``inputs`` says where those inputs come from:
- ``"quantized"`` (default, GPTQ's choice): the block sees the activations of the already-quantized prefix, as it
  will at inference, so each block's refinement can compensate for the error upstream;
- ``"float"``: the float prefix; then the result equals ``quantize_`` on the whole model in memory (which collects
  every statistic from the float model first) — the test of this module.

Model-agnostic: the decoder blocks' call arguments (attention mask, rotary embeddings, ...) are captured from the
model's own forward by a stand-in first block, so nothing here knows an architecture's signature.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from .calibration import stats_over
from .config import QuantConfig
from .distribute import Ranks, assign_linears, block_range
from .errors import CheckpointError, ConfigError
from .handlers import handler_for
from .quantize import check_token_ids, plan
from .report import QuantizeReport
from .resume import LayerJournal, tokens_digest
from .shards import (  # noqa: F401
    _LAYER,
    ShardReader,
    _block,
    _Captured,
    _Catcher,
    _construct,
    _layers_prefix,
    _no_init_weights,
    _on,
    _run_block,
    _shell,
)


@torch.no_grad()
def quantize_streamed(
    model_dir: str | os.PathLike,
    config: QuantConfig,
    journal_dir: str | os.PathLike,
    calib_ids: torch.Tensor,
    inputs: str = "quantized",
    window: int = 2048,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    ranks: Ranks | None = None,
    restart: bool = False,
) -> QuantizeReport:
    """Quantize the causal LM saved in ``model_dir`` (transformers config + safetensors) block by block.

    ``calib_ids (1, T)``: calibration tokens (windows of ``window``), used for the blocks' inputs whatever the
    objective. Each finished linear lands in ``journal_dir`` (``lords.resume.LayerJournal``); a rerun with the same
    config and inputs resumes there. The journal is bound to the config, the checkpoint's weights, the calibration
    tokens, ``inputs``, ``window``, the device type and ``dtype``: one made for others is refused by name, or emptied
    with ``restart=True``. :func:`load_streamed` builds the quantized model from it. Peak memory: the model's
    non-block tensors, one float block, and ``T × hidden`` activations twice (inputs and outputs of a block).

    ``ranks``: this process's share of the work (default: the initialized ``torch.distributed`` group, else all
    of it); every rank passes the same arguments and a journal on a shared disk, and the journal equals the one
    process's bit for bit (``lords.distribute`` says how the work is split for each ``inputs``). Each rank
    quantizes on its own ``device``. Under ``inputs="float"`` ranks given by hand need no process group (the
    report then lists the layers finished so far); ``inputs="quantized"`` needs one (a barrier per block).
    """
    from transformers import AutoConfig  # transformers: kept out of import lords

    t0 = time.perf_counter()
    if inputs not in ("quantized", "float"):
        raise ConfigError(f"inputs={inputs!r} is not one of ('quantized', 'float')")
    ranks = Ranks.current() if ranks is None else ranks
    if inputs == "quantized" and not ranks.synchronized:
        raise ConfigError(
            f"inputs='quantized' on {ranks.world} ranks needs an initialized torch.distributed group "
            "of that size (block i waits for the quantized block i-1); inputs='float' does not"
        )
    hf_config = AutoConfig.from_pretrained(model_dir)
    reader = ShardReader(model_dir)
    prefix, num_layers = _layers_prefix(reader.names())
    if num_layers != hf_config.num_hidden_layers:
        raise CheckpointError(
            f"{model_dir}: {num_layers} blocks in the shards, config says {hf_config.num_hidden_layers}"
        )
    check_token_ids(calib_ids, vocab=getattr(hf_config, "vocab_size", None))
    calib_ids = calib_ids[:, : config.calibration[0]]
    shell = _shell(hf_config, prefix, reader, dtype).to(device)
    stack = shell.get_submodule(prefix)
    block_cls = type(stack[0])
    catcher = _Catcher()
    stack[0] = catcher
    for start in range(0, calib_ids.shape[1], window):
        try:
            shell(calib_ids[:, start : start + window].to(device), use_cache=False)
        except _Captured:
            pass
    calls = catcher.calls
    lengths = [c[0].shape[1] for c in calls]
    hf_config._attn_implementation = shell.config._attn_implementation  # what the blocks were called with
    del shell, stack, catcher
    journal = LayerJournal(
        journal_dir,
        config,
        _inputs(reader, calib_ids, inputs, window, device, dtype),
        restart=restart and ranks.rank == 0,
    )
    setup = time.perf_counter() - t0
    holder = nn.Module()  # gives the block its full module names (model.layers.7.mlp.up_proj) for the plan
    holder.config = hf_config
    mine = block_range(num_layers, ranks) if inputs == "float" else range(num_layers)
    last = mine[-1] if len(mine) else -1  # float inputs: nothing to do after this rank's last block
    order: list[str] = []
    bar = range(num_layers)
    if progress:
        from tqdm.auto import tqdm  # optional dependency: only a progress bar needs it

        rank = f" rank {ranks.rank}/{ranks.world}" if ranks.world > 1 else ""
        bar = tqdm(bar, desc=f"streamed {config.method}{rank}", unit="block")
    for i in bar:
        path = f"{prefix}.{i}"
        if i > last:  # planned only (the report names every layer): a block without weights
            _attach(holder, path, _block(hf_config, block_cls, i, None, dtype))
            order.extend(plan(holder, config))
            _attach(holder, path, None)
            continue
        block = _block(
            hf_config,
            block_cls,
            i,
            reader.read([n for n in reader.names() if n.startswith(f"{path}.")], strip=f"{path}."),
            dtype,
        ).to(device)
        _attach(holder, path, block)
        chosen = plan(holder, config)
        order.extend(chosen)
        if inputs == "float":
            owner = dict.fromkeys(chosen, ranks.rank if i in mine else -1)
        else:
            owner = assign_linears({n: m.weight.numel() for n, (m, _) in chosen.items()}, ranks.world)
        calibrated = {n: m for n, (m, leaf) in chosen.items() if leaf.needs_calibration and owner[n] == ranks.rank}
        stats, float_outs = None, []
        if inputs == "float" or calibrated:  # one float pass: the statistics and, for inputs="float", the outputs
            stats = stats_over(
                lambda c, b=block: float_outs.append(_run_block(b, c)),
                calls,
                lengths,
                calibrated,
                *config.calibration[1:],
                gram=any(getattr(leaf, "needs_gram", False) for _, leaf in chosen.values()),
            )
        for name, (module, leaf) in chosen.items():
            if owner[name] != ranks.rank:
                continue
            done = journal.load(name, module)
            if done is None:
                torch.manual_seed(leaf.seed)
                done = handler_for(leaf)(name, module, leaf, None if stats is None else stats.get(name))
                journal.save(name, *done)
            holder.set_submodule(name, done[0].to(device))
        if inputs == "quantized":
            ranks.barrier()  # the other ranks' linears of this block are in the journal now
            for name, (module, _) in chosen.items():
                if owner[name] != ranks.rank:
                    holder.set_submodule(name, _journaled(journal, name, module)[0])
        next_hidden = float_outs if inputs == "float" else [_run_block(block, c) for c in calls]
        calls = [(h, args, kwargs) for h, (_, args, kwargs) in zip(next_hidden, calls)]
        _attach(holder, path, None)
        del block
    blocks = time.perf_counter() - t0 - setup
    ranks.barrier()
    report = QuantizeReport(seconds={"setup": setup, "blocks": blocks})
    report.layers = [r for r in (journal.report(n) for n in order) if r is not None]
    return report


def _inputs(reader: ShardReader, calib_ids: torch.Tensor, inputs: str, window: int, device, dtype) -> dict:
    """What a streamed journal's layers depend on besides the config (``lords.resume.LayerJournal``)."""
    return {
        "model_weights": reader.fingerprint(),
        "calibration_tokens": tokens_digest(calib_ids),
        "block_inputs": inputs,
        "calibration_window": window,
        "device_type": torch.device(device).type,
        "dtype": str(dtype),
    }


def _journaled(journal: LayerJournal, name: str, module: nn.Module):
    done = journal.load(name, module)
    if done is None:
        raise CheckpointError(f"layer {name} is not in the journal after the barrier (another rank failed?)")
    return done


def _attach(holder: nn.Module, path: str, block: nn.Module | None) -> None:
    """Put ``block`` at ``path`` (``model.layers.7``) inside ``holder``, or take it out (None)."""
    parts = path.split(".")
    node = holder
    for p in parts[:-1]:
        if not hasattr(node, p):
            node.add_module(p, nn.Module())
        node = getattr(node, p)
    if block is None:
        delattr(node, parts[-1])
    else:
        node.add_module(parts[-1], block)


def load_streamed(
    model_dir: str | os.PathLike,
    config: QuantConfig,
    journal_dir: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """The quantized model of a finished :func:`quantize_streamed`: float tensors from ``model_dir``, quantized
    linears from the journal; no float copy of a quantized weight is kept."""
    from transformers import AutoConfig, AutoModelForCausalLM  # transformers: kept out of import lords

    hf_config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    reader = ShardReader(model_dir)
    journal = LayerJournal(journal_dir, config, {"model_weights": reader.fingerprint()})
    for name, (module, _) in plan(model, config).items():
        done = journal.load(name, module)
        if done is None:
            raise CheckpointError(f"{journal_dir}: layer {name} was not quantized yet (rerun quantize_streamed)")
        model.set_submodule(name, done[0])
    quantized = {n for n, m in model.named_modules() if hasattr(m, "qweight")}
    wanted = [n for n in reader.names() if n.rpartition(".")[0] not in quantized]
    state = reader.read(wanted)
    model.load_state_dict(state, strict=False, assign=True)
    if getattr(hf_config, "tie_word_embeddings", False):
        model.tie_weights()
    for name, module in list(model.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)):
            # Non-persistent buffers (rotary inv_freq) are not in checkpoints: rebuild the module that owns them.
            try:
                model.set_submodule(name, type(module)(config=hf_config))
            except TypeError as e:
                raise CheckpointError(
                    f"{name}: buffers not in the checkpoint and {type(module).__name__}(config=...) "
                    f"cannot rebuild them ({e})"
                ) from None
    left = [n for n, t in model.state_dict().items() if t.is_meta]
    if left:
        raise CheckpointError(f"{model_dir}: tensors missing from the checkpoint: {left[:5]}")
    return model.eval()
