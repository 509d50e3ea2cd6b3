"""The ``lords`` command: quantize a model to a folder, then eval, inspect or time that folder.

    lords quantize smollm2-135m --bits 3 --block-size 64 --out smollm2-lords-3bit
    lords quantize smollm2-135m --bits 3 --calib pydoc --out smollm2-lords-3bit-cal   # calibrated Algorithm 1
    lords info smollm2-lords-3bit
    lords eval smollm2-lords-3bit --tasks lords_cloze --limit 20
    lords bench smollm2-lords-3bit
    lords lm-eval run --model hf --model_args pretrained=smollm2-lords-3bit --tasks lords_cloze   # lm-eval's own CLI

A lords folder is a transformers model folder: ``AutoModelForCausalLM.from_pretrained(folder)`` opens it after
``import lords``. Bad input (a missing folder, a bad value, a corrupt checkpoint) exits with status 2 and one line.
Heavy packages (transformers, lm-eval) are imported only by the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lords.errors import LordsError
from lords_pipelines.cli_checks import (  # noqa: F401
    BadInput,
    _calibration,
    _context,
    _device,
    _folder,
    _numel,
    _positive,
    _size,
    _writable,
    table,
)

EPILOG = """examples:
  lords quantize smollm2-135m --bits 3 --block-size 64 --out smollm2-lords-3bit
  lords quantize smollm2-135m --bits 3 --calib pydoc --out smollm2-lords-3bit-cal
  lords info smollm2-lords-3bit
  lords eval smollm2-lords-3bit --tasks lords_cloze --limit 20
  lords bench smollm2-lords-3bit

Each subcommand has its own --help. A lords folder opens in transformers after `import lords`."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2 (argparse's own prints the whole usage first)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def cmd_quantize(a) -> dict:
    import lords
    from lords_pipelines.data.texts import tokenize
    from lords_pipelines.models import load_model

    _positive("--steps", a.steps, minimum=0)
    steps = a.steps if a.steps is not None else (50 if a.calib else 0)
    text = _calibration(a.calib)
    refine = lords.RefineConfig(steps=steps, lr=a.lr, objective="act_diag" if text else "weight") if steps else None
    kind = lords.LordsConfig if a.method == "lords" else lords.BlockwiseConfig
    config = kind(bits=a.bits, block_size=a.block_size, refine=refine)
    out = Path(a.out)
    if out.is_dir() and any(out.iterdir()) and not a.overwrite:
        raise BadInput(f"--out {a.out} exists and is not empty (add --overwrite to replace it)")
    _writable(out)
    t0 = time.time()
    model, tok = load_model(a.model)
    calib_ids = tokenize(tok, text, config.calib_tokens) if text else None
    report = lords.quantize_(model, config, calib_ids=calib_ids, progress=True)
    lords.save_quantized(model, out, report.config, tokenizer=tok)  # the folder appears whole, tokenizer included
    bits = lords.storage_bits(model)
    return {
        "model": a.model,
        "method": a.method,
        "bits": a.bits,
        "block size": a.block_size,
        "refinement": f"{refine.objective} x {refine.steps}" if refine else "none (data-free init)",
        "layers quantized": len(report.layers),
        "weight rel. error": f"{report.rel_error:.4f}",
        "scale floats": f"{report.float_params:,}",
        "bits per weight": f"{bits['bits_per_weight']:.3f}",
        "folder": f"{out} ({_size(sum(f.stat().st_size for f in out.iterdir()))})",
        "time": f"{time.time() - t0:.1f} s",
    }


def cmd_info(a) -> dict:
    import torch

    from lords.checkpoint import check_layout, read_quantization_config
    from lords.integrity import shard_files, tensor_specs
    from lords.layouts import module_from_meta

    path = _folder(a.dir)
    qc = read_quantization_config(path)  # the whole quantization_config, as every loader checks it
    files = shard_files(path)
    specs = tensor_specs(files)
    check_layout(qc["modules"], specs)
    stored = {name: shape for name, (shape, _) in specs.items()}
    modules = qc["modules"]
    weights = codes = scale_bits = scale_floats = 0
    quantized_tensors = set()
    for name, meta in modules.items():
        n, m = meta["out_features"], meta["in_features"]
        weights += n * m
        codes += meta["bits"] * n * m
        with torch.device("meta"):  # the layout's empty module: its tensors and stored floats, as storage_bits counts
            empty = module_from_meta(meta, name)
        quantized_tensors.update(f"{name}.{suffix}" for suffix in empty.state_dict())
        floats = empty.float_params()  # scales, and what a method stores beside them (LoftQ's correction)
        scale_floats += floats
        scale_bits += floats * torch.finfo(empty.scale_dtype).bits
    float_params = sum(_numel(s) for k, s in stored.items() if k not in quantized_tensors)
    on_disk = sum(f.stat().st_size for f in files)
    cfg = qc["config"]
    return {
        "folder": str(path),
        "method": cfg.get("method"),
        "config": ", ".join(f"{k}={v}" for k, v in cfg.items() if k not in ("method", "version")),
        "quantized modules": f"{len(modules)} ({', '.join(sorted({m['kind'] for m in modules.values()}))})",
        "quantized weights": f"{weights:,}",
        "code bits": f"{codes / max(weights, 1):.3f}",
        "bits per weight (with scales)": f"{(codes + scale_bits) / max(weights, 1):.3f}",
        "scale floats": f"{scale_floats:,}",
        "float params (not quantized)": f"{float_params:,}",
        "shards": f"{len(files)} ({_size(on_disk)})",
        "float16 copy would be": _size(2 * (weights + float_params)),
    }


def _load(folder: Path, device: str, tokenizer: str | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import lords  # noqa: F401  (registers quant_method "lords")

    model = AutoModelForCausalLM.from_pretrained(folder, device_map=device)
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer or folder)
    except (OSError, ValueError) as e:
        where = (
            f"--tokenizer {tokenizer}: no tokenizer there" if tokenizer else f"{folder}: no tokenizer beside the model"
        )
        raise BadInput(
            f"{where} (pass --tokenizer FOLDER with the base model's, or save one into the folder: "
            "tokenizer.save_pretrained(folder); lords quantize does)"
        ) from e
    return model.eval(), tok


def cmd_eval(a) -> dict:
    import torch

    from lords.linear import cached_weights
    from lords_pipelines.data.texts import eval_text, tokenize
    from lords_pipelines.evaluation.perplexity import perplexity

    if a.text is not None and not Path(a.text).is_file():
        raise BadInput(f"--text {a.text}: no such file")
    _positive("--tokens", a.tokens, minimum=2)  # perplexity scores tokens after the first; 0 would mean "all"
    _positive("--window", a.window, minimum=2)
    _positive("--limit", a.limit)
    folder, device = _folder(a.dir), _device(a.device)
    try:
        text = Path(a.text).read_text(encoding="utf-8") if a.text else None
    except UnicodeDecodeError as e:
        raise BadInput(f"--text {a.text}: not UTF-8 text (byte {e.start})") from None
    if text is not None and not text.strip():
        raise BadInput(f"--text {a.text}: the file holds no text")
    model, tok = _load(folder, device, a.tokenizer)
    if a.adapter:
        from lords_pipelines.adapters import load_adapter

        model = load_adapter(model, a.adapter)
    ids = tokenize(tok, text if text is not None else eval_text(), a.tokens)
    with torch.no_grad(), cached_weights(model):
        ppl, n = perplexity(model, ids, a.window, progress="perplexity")
    out = {"folder": a.dir, "text": a.text or "shipped licence texts", "tokens scored": n, "perplexity": f"{ppl:.3f}"}
    if a.tasks:
        from lords_pipelines.evaluation.scores import lm_eval_accuracy

        out.update({k: f"{v:.4f}" for k, v in lm_eval_accuracy(model, tok, a.tasks, a.limit).items()})
    return out


def cmd_bench(a) -> dict:
    import torch

    from lords.linear import cached_weights
    from lords_pipelines.stages.common import apply_backend

    _positive("--tokens", a.tokens, minimum=2)  # decode speed is timed over the tokens after the first
    _positive("--prompt", a.prompt)
    _positive("--batch", a.batch)
    folder, device = _folder(a.dir), _device(a.device)
    context = _context(folder)
    if context is not None and a.prompt + a.tokens > context:
        raise BadInput(f"--prompt {a.prompt} + --tokens {a.tokens} exceed the model's context of {context} positions")
    model, tok = _load(folder, device, a.tokenizer)
    apply_backend(model, "auto")
    prompt = torch.randint(0, model.config.vocab_size, (a.batch, a.prompt), generator=torch.Generator().manual_seed(0))
    prompt = prompt.to(device)
    kwargs = dict(max_new_tokens=a.tokens, min_new_tokens=a.tokens, do_sample=False, pad_token_id=0)

    def timed(n):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(prompt, **{**kwargs, "max_new_tokens": n, "min_new_tokens": n})
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t

    with torch.no_grad(), cached_weights(model):
        timed(2)  # warm-up
        prefill = timed(1)
        total = timed(a.tokens)
    decode = max(total - prefill, 1e-9)
    steps_per_s = (a.tokens - 1) / decode
    stored = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return {
        "folder": a.dir,
        "device": device,
        "torch threads": torch.get_num_threads(),
        "batch": a.batch,
        "prompt tokens": a.prompt,
        "prefill": f"{prefill * 1e3:.1f} ms",
        "new tokens": a.tokens,
        "decode tokens/s": f"{a.batch * steps_per_s:.1f}",
        # every decode step reads the stored model once (the dequantized-weight cache aside on the CPU path)
        "stored model": _size(stored),
        "stored bytes read/s": f"{stored * steps_per_s / 1e9:.2f} GB/s",
    }


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="lords",
        description="LoRDS quantization: W ≈ Q ⊙ (B·A). Quantize a causal LM to a folder "
        "that transformers opens, then evaluate, inspect or time it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(
        dest="command", required=True, metavar="{quantize,eval,info,bench,lm-eval}", parser_class=_Parser
    )
    q = sub.add_parser(
        "quantize",
        help="quantize a model and save it as a lords folder",
        description="Quantize MODEL (an embedded alias such as smollm2-135m, a local folder, a .gguf "
        "file or a hub id) and save it with its tokenizer to --out.",
    )
    q.add_argument("model", help="smollm2-135m, a model folder, a .gguf path or a hub id")
    q.add_argument("--bits", type=int, default=4, choices=(2, 3, 4), help="bits per weight code (default 4)")
    q.add_argument("--block-size", type=int, default=64, help="block size; for LoRDS it sets the float budget (64)")
    q.add_argument(
        "--method", choices=("lords", "nf"), default="lords", help="low-rank scales (lords) or block-wise NF"
    )
    q.add_argument("--calib", metavar="TEXT", help="calibration text file, or 'pydoc': refine on its activations")
    q.add_argument("--steps", type=int, help="Algorithm 1 steps (default 50 with --calib, else 0: data-free init)")
    q.add_argument("--lr", type=float, default=1e-2, help="refinement learning rate (default 1e-2)")
    q.add_argument("--out", required=True, metavar="DIR", help="output folder")
    q.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    q.set_defaults(fn=cmd_quantize)
    e = sub.add_parser(
        "eval",
        help="perplexity and lm-eval tasks of a lords folder",
        description="Perplexity on a text (default: the shipped licence texts) and, with --tasks, "
        "lm-eval accuracy (shipped offline tasks: lords_cloze, lords_unicode; standard "
        "names such as arc_easy need the hub).",
    )
    e.add_argument("dir", help="a lords folder")
    e.add_argument("--tasks", nargs="+", default=[], help="lm-eval task names")
    e.add_argument("--limit", type=int, help="items per task (default: all)")
    e.add_argument("--adapter", metavar="DIR", help="an adapter folder trained on this base (LoRDS B, A or LoRA)")
    e.add_argument("--text", metavar="FILE", help="text file for perplexity")
    e.add_argument("--tokens", type=int, default=2048, help="tokens of the text to score, at least 2 (default 2048)")
    e.add_argument("--window", type=int, default=None, help="perplexity window (default: min(2048, context))")
    e.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    e.add_argument("--tokenizer", metavar="DIR", help="a tokenizer folder or id when DIR holds none")
    e.set_defaults(fn=cmd_eval)
    i = sub.add_parser(
        "info",
        help="config, bits per weight, float params and sizes of a lords folder",
        description="Reads config.json and the shard headers only: no model is built.",
    )
    i.add_argument("dir", help="a lords folder")
    i.set_defaults(fn=cmd_info)
    b = sub.add_parser("bench", help="greedy decode tokens/s of a lords folder on this device")
    b.add_argument("dir", help="a lords folder")
    b.add_argument("--tokens", type=int, default=32, help="new tokens per timed run, at least 2 (default 32)")
    b.add_argument("--prompt", type=int, default=16, help="prompt tokens (default 16)")
    b.add_argument("--batch", type=int, default=1, help="sequences per batch (default 1)")
    b.add_argument("--device", help="cpu, cuda ... (default: cuda if available)")
    b.add_argument("--tokenizer", metavar="DIR", help="a tokenizer folder or id when DIR holds none")
    b.set_defaults(fn=cmd_bench)
    sub.add_parser(
        "lm-eval",
        help="lm-eval's own command line on lords folders, the shipped offline tasks on its path",
        add_help=False,
    ).add_argument("args", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lm-eval"]:  # every lm-eval option as lm-eval documents it, so no parsing here
        from lords_pipelines.evaluation.lm_eval_cli import main as lm_eval_main

        lm_eval_main(argv[1:])
        return 0
    args = parser().parse_args(argv)
    try:
        result = args.fn(args)
    except (BadInput, LordsError, OSError, ValueError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"lords {args.command}: error: {message}", file=sys.stderr)
        return 2
    print(table(list(result.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
