"""Read what an offline wandb run recorded (``<out_dir>/wandb/offline-run-*/run-*.wandb``) without syncing it.

    python -m lords_pipelines.stages.wandb_offline outputs/sweeps/ptq/<time>/0/wandb

The file is wandb's record log (LevelDB log format: 32 KiB blocks, 7-byte record headers, protobuf
``Record`` payloads). Used by the tests to check the group, config, history and summary that land there.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7  # crc32 (4), length (2), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    pos, chunks = 7, []  # the file starts with ':W&B', magic (2) and version (1)
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        body = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield body
        elif kind == FIRST:
            chunks = [body]
        elif kind == MIDDLE:
            chunks.append(body)
        elif kind == LAST:
            chunks.append(body)
            yield b"".join(chunks)


def _value(item) -> Any:
    try:
        return json.loads(item.value_json)
    except ValueError:
        return item.value_json


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(path: str | Path) -> dict[str, Any]:
    """``{project, group, job_type, config, history: [{key: value}], summary}`` of one offline run
    (``path``: the run's ``.wandb`` file, its folder, or a ``wandb`` folder holding one run)."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb")) or sorted(path.glob("offline-run-*/run-*.wandb"))
        if len(files) != 1:
            raise FileNotFoundError(f"{path}: expected one offline run file, found {len(files)}")
        path = files[0]
    out: dict[str, Any] = {"config": {}, "history": [], "summary": {}}
    for payload in _payloads(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(
                project=record.run.project,
                group=record.run.run_group,
                job_type=record.run.job_type,
                name=record.run.display_name,
            )
            out["config"].update({_key(u): _value(u) for u in record.run.config.update})
        elif kind == "config":
            out["config"].update({_key(u): _value(u) for u in record.config.update})
        elif kind == "history":
            out["history"].append({_key(i): _value(i) for i in record.history.item})
        elif kind == "summary":
            out["summary"].update({_key(u): _value(u) for u in record.summary.update})
    out["config"].pop("_wandb", None)
    return out


if __name__ == "__main__":
    run = read_offline_run(sys.argv[1])
    keys = sorted({k for h in run["history"] for k in h if not k.startswith("_")})
    print(
        json.dumps(
            {
                "project": run.get("project"),
                "group": run.get("group"),
                "job_type": run.get("job_type"),
                "config_keys": len(run["config"]),
                "history_keys": keys,
                "summary": run["summary"],
            },
            indent=1,
            default=str,
        )
    )
