"""Which process quantizes what, when streamed PTQ runs on several ranks (one process per GPU).

``torch.distributed`` supplies the ranks and a barrier; nothing here starts processes or picks a backend (the
launcher does: ``torchrun``, or ``torch.multiprocessing`` with gloo in tests). Work is split so that the result
does not depend on the number of ranks: each layer is quantized by exactly one rank with the seed it has in one
process, on the same inputs, and written to the shared journal that every rank reads.

- ``inputs="float"``: a block's inputs are the FLOAT prefix's activations, which every rank computes by itself
  (a float forward per block is cheap beside T refinement steps), so blocks are independent: rank ``r`` quantizes
  a contiguous run of blocks (:func:`block_range`) and no rank waits for another until the end.
- ``inputs="quantized"`` (GPTQ's order): block ``i`` needs the QUANTIZED blocks ``0 … i−1``, so blocks are
  sequential; only the linears inside one block are independent (they share the block's inputs). They are spread
  over the ranks by size (:func:`assign_linears`), and a barrier per block lets every rank read the others'
  linears from the journal before running the quantized block to feed the next one.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Ranks:
    """This process's ``rank`` among ``world`` processes; ``barrier()`` waits for all of them."""

    rank: int = 0
    world: int = 1
    """Number of processes sharing the work."""

    def __post_init__(self):
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ConfigError(f"rank={self.rank} must lie in [0, world={self.world})")

    @classmethod
    def current(cls) -> Ranks:
        """The default ``torch.distributed`` group when one is initialized, else a single process."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def synchronized(self) -> bool:
        """True when the ranks can wait for one another (an initialized process group of this size)."""
        import torch.distributed as dist

        return self.world == 1 or (
            dist.is_available() and dist.is_initialized() and dist.get_world_size() == self.world
        )

    def barrier(self) -> None:
        if self.world > 1 and self.synchronized:
            import torch.distributed as dist

            dist.barrier()


def block_range(num_blocks: int, ranks: Ranks) -> range:
    """The contiguous blocks that ``ranks.rank`` quantizes under ``inputs="float"`` (sizes differ by at most one)."""
    base, extra = divmod(num_blocks, ranks.world)
    start = ranks.rank * base + min(ranks.rank, extra)
    return range(start, start + base + (ranks.rank < extra))


def assign_linears(sizes: dict[str, int], world: int) -> dict[str, int]:
    """``{layer name: rank}``: largest layer first to the least-loaded rank (ties: lower rank), by ``sizes``
    (weight elements: one refinement step costs about that much). Deterministic: the same on every rank."""
    load = [0] * world
    owner = {}
    for name in sorted(sizes, key=lambda n: (-sizes[n], list(sizes).index(n))):
        r = min(range(world), key=lambda i: (load[i], i))
        owner[name] = r
        load[r] += sizes[name]
    return {name: owner[name] for name in sizes}
