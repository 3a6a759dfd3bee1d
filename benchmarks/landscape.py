"""A cheap, deterministic synthetic fitness landscape over the NAS-FPN search space.

Training a detector per trial is far too slow to compare search strategies over many seeds,
so the search benchmark scores architectures with this stand-in. It is a function of the
*decoded* spec (``NasFpnSpace().decode(params)``), so two param sets that decode to the same
network score the same, and it is built like an NK landscape: a mean of random table
entries, each looked up by a small group of interacting decisions, so a decision's worth
depends on its neighbours in the cell graph and not on itself alone.

Terms (every table entry is uniform in [0, 1), drawn from a hash of the landscape seed
and the entry's key, so nothing is stored and every process agrees):

* **resample** ``(k, level_k, level(src))`` for each of the two inputs of cell ``k``: how
  well cell ``k``'s output level goes with the level of the node it reads (pyramid input
  or earlier cell) - couples a cell's level with its inputs' levels.
* **op** ``(k, op_k, level_k, |level(src_i) - level(src_j)|)``: which op suits the cell
  given its level and how far apart its inputs are.
* **edge** ``(level_m, op_m, level_k, op_k)`` for every input of cell ``k`` that is an
  earlier cell ``m``: a pairwise interaction along the graph (NK's epistasis).
* **source kinds** ``(k, kind_i, kind_j)``: reading pyramid inputs versus cell outputs.
* **output** ``(L, k, depth)`` for the output cell ``k`` producing level ``L`` at graph
  depth ``depth``: which cell produces which level (the permutation) matters.
* **reuse**: a bonus ``0.5 * (#intermediate/output cells consumed by a later cell) /
  #cells`` so that deeper, connected graphs are favoured on average.

The score is the mean of all terms (weights 1) plus the reuse bonus, about 0.5 for a random
spec; nothing about its scale means AP. Evaluation takes ~100 microseconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from evo_fpn.arch.space import NasFpnSpace
from evo_fpn.arch.spec import ArchSpec


class Landscape:
    """``Landscape(seed)(params) -> float``; higher is better. Deterministic per ``seed``."""

    def __init__(self, seed: int = 0, space: NasFpnSpace | None = None) -> None:
        self.seed = int(seed)
        self.space = space or NasFpnSpace()
        self._cache: dict[tuple[Any, ...], float] = {}

    def _u(self, *key: Any) -> float:
        k = (self.seed, *key)
        v = self._cache.get(k)
        if v is None:
            digest = hashlib.blake2b(repr(k).encode(), digest_size=8).digest()
            v = int.from_bytes(digest, "little") / 2.0**64
            self._cache[k] = v
        return v

    def score_spec(self, spec: ArchSpec) -> float:
        n_in = spec.max_level - spec.min_level + 1
        node_level = list(spec.levels) + [c.level for c in spec.cells]
        depth = [0] * n_in + [0] * len(spec.cells)
        terms: list[float] = []
        consumed: set[int] = set()
        for k, cell in enumerate(spec.cells):
            a, b = cell.inputs
            depth[n_in + k] = 1 + max(depth[a], depth[b])
            for src in (a, b):
                terms.append(self._u("resample", k, cell.level, node_level[src]))
                if src >= n_in:
                    m = src - n_in
                    consumed.add(m)
                    terms.append(self._u("edge", node_level[src], spec.cells[m].op, cell.level, cell.op))
            terms.append(self._u("op", k, cell.op, cell.level, abs(node_level[a] - node_level[b])))
            terms.append(self._u("kinds", k, a >= n_in, b >= n_in))
            if cell.is_output:
                terms.append(self._u("output", cell.level, k, depth[n_in + k]))
        reuse = 0.5 * len(consumed) / len(spec.cells)
        return sum(terms) / len(terms) + reuse

    def __call__(self, params: Mapping[str, Any]) -> float:
        return self.score_spec(self.space.decode(params))


def main() -> None:
    """Print a few reference points: published NAS-FPN, FPN-like, and random specs."""
    import random
    import statistics

    from evo_fpn.arch.spec import FPN_LIKE, PUBLISHED_NASFPN

    land = Landscape(0)
    rng = random.Random(0)
    randoms = [land.score_spec(land.space.sample(rng)) for _ in range(2000)]
    print(f"published NAS-FPN {land.score_spec(PUBLISHED_NASFPN):.4f}  FPN-like {land.score_spec(FPN_LIKE):.4f}")
    print(
        f"random: mean {statistics.fmean(randoms):.4f} sd {statistics.pstdev(randoms):.4f} "
        f"max of 2000 {max(randoms):.4f}"
    )


if __name__ == "__main__":
    main()
