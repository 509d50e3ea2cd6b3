"""Which runs a PEFT table makes and which learning rate it keeps: a ``before`` run, the lr grid at the first seed,
then the chosen lr at every seed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Run:
    task: str
    method: str
    lr: float | None
    """None: the ``before`` run (no training)."""
    seed: int

    @property
    def key(self) -> str:
        return f"{self.task}_{self.method}_" + ("before" if self.lr is None else f"lr{self.lr:g}_s{self.seed}")


def grid_runs(spec, task: str, method: str) -> list[Run]:
    """The ``before`` run and the lr grid at the first seed."""
    return [Run(task, method, None, spec.seeds[0])] + [Run(task, method, float(lr), spec.seeds[0]) for lr in spec.lrs]


def choose_lr(records: dict[str, dict], spec, task: str, method: str) -> float:
    """The grid's lr with the best validation score (higher is better), the smaller lr on a tie."""
    scored = [(records[r.key]["val_score"], -r.lr, r.lr) for r in grid_runs(spec, task, method)[1:]]
    return max(scored)[2]


def seed_runs(spec, task: str, method: str, lr: float) -> list[Run]:
    return [Run(task, method, lr, s) for s in spec.seeds]
