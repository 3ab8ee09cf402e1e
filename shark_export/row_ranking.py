"""The rows of several tables ranked by priority, held sparsely: memory follows the rows calibration saw.

Mixed precision and byte budgets give each row a tier by its rank among the rows of all their tables: highest
priority first, ties in (table, row) order (a stable sort of the concatenated priorities). Calibration sees few
of a big table's rows, so every other row has priority 0, and they are ranked in a block, in position order,
between the positive and the negative priorities. That block is never listed: the k-th row of priority 0 is
found from the sorted positions of the others, and tiers are filled by position ranges. A ranking costs
O(rows seen) memory; the tiers it yields, one byte per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SparseRows:
    """Priorities of one table's rows: `values[k]` is row `ids[k]`'s (ids sorted and distinct); any other row's is 0."""

    num_rows: int
    ids: np.ndarray  # int64
    values: np.ndarray  # float32

    @classmethod
    def of(cls, priority, num_rows: int) -> "SparseRows":
        """A SparseRows as it is, or one from a dense array of `num_rows` priorities."""
        if isinstance(priority, SparseRows):
            return priority
        dense = np.asarray(priority)
        if dense.shape != (num_rows,):
            raise ValueError(f"row priorities must have one value per row ({num_rows}), got shape {dense.shape}")
        ids = np.flatnonzero(dense)
        return cls(num_rows, ids.astype(np.int64), dense[ids].astype(np.float32))

    def dense(self) -> np.ndarray:
        out = np.zeros(self.num_rows, dtype=np.float32)
        out[self.ids] = self.values
        return out


class RowRanking:
    """Ranks over the rows of `tables` (name → SparseRows, in the given order: their rows are numbered one table
    after the other). Rank 0 is the highest priority; positive rows take ranks [0, P), rows of priority 0 the
    next Z, negative rows the last."""

    def __init__(self, tables: dict[str, SparseRows]):
        self.names = list(tables)
        self.rows = np.array([tables[n].num_rows for n in self.names], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.rows)]).astype(np.int64)
        self.total = int(self.offsets[-1])
        listed = [(tables[n].ids, tables[n].values) for n in self.names]
        position = np.concatenate([ids + off for (ids, _), off in zip(listed, self.offsets)] or [np.zeros(0, np.int64)])
        value = np.concatenate([v.astype(np.float64) for _, v in listed] or [np.zeros(0)])
        nonzero = value != 0
        position, value = position[nonzero], value[nonzero]
        self._nonzero_sorted = np.sort(position)
        self._gaps = self._nonzero_sorted - np.arange(self._nonzero_sorted.shape[0])  # zero rows before each
        positive, negative = value > 0, value < 0
        self.positive = position[positive][np.lexsort((position[positive], -value[positive]))]  # in rank order
        self.negative = position[negative][np.lexsort((position[negative], -value[negative]))]
        self.zeros = self.total - self.positive.shape[0] - self.negative.shape[0]
        self.nonzero_per_table = np.diff(np.searchsorted(self._nonzero_sorted, self.offsets))
        self.positive_per_table = np.diff(np.searchsorted(np.sort(self.positive), self.offsets))

    @property
    def positives(self) -> int:
        return int(self.positive.shape[0])

    def table_of(self, positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, positions, side="right") - 1

    def zero_position(self, k: int) -> int:
        """Position of the k-th row of priority 0 (0-based); `total` for k >= the number of such rows."""
        if k >= self.zeros:
            return self.total
        return int(k + np.searchsorted(self._gaps, k, side="right"))

    def tiers(self, bounds: list[int], tiers: list[int]) -> dict[str, np.ndarray]:
        """uint8 tier per row of every table: rank r gets `tiers[i]` for the first i with r < bounds[i]
        (bounds ascending, the last >= total)."""
        out = {n: np.empty(int(r), dtype=np.uint8) for n, r in zip(self.names, self.rows)}
        start = 0  # rows of priority 0, by position ranges
        for bound, tier in zip(bounds, tiers):
            k = min(max(int(bound) - self.positives, 0), self.zeros)
            end = self.zero_position(k)
            self._fill(out, start, end, tier)
            start = max(start, end)
        table_tiers = np.asarray(tiers, dtype=np.uint8)
        ranks = np.concatenate([np.arange(self.positives),
                                self.positives + self.zeros + np.arange(self.negative.shape[0])])
        positions = np.concatenate([self.positive, self.negative])
        at = table_tiers[np.minimum(np.searchsorted(np.asarray(bounds), ranks, side="right"), len(tiers) - 1)]
        which = self.table_of(positions)
        for t, name in enumerate(self.names):
            mine = which == t
            out[name][positions[mine] - self.offsets[t]] = at[mine]
        return out

    def _fill(self, out: dict[str, np.ndarray], start: int, end: int, tier: int) -> None:
        for t, name in enumerate(self.names):
            a, b = max(start, self.offsets[t]), min(end, self.offsets[t + 1])
            if a < b:
                out[name][a - self.offsets[t]: b - self.offsets[t]] = tier

    def prefix_within(self, delta: np.ndarray, room: float, zeros_and_negatives: bool = True) -> int:
        """How many rows, in rank order, fit in `room` bytes when each row of table t costs `delta[t]` (>= 0):
        the largest n with the cost of ranks [0, n) <= room. `zeros_and_negatives=False`: only positive rows
        are in the order."""
        delta = np.asarray(delta, dtype=np.int64)
        cost = np.cumsum(delta[self.table_of(self.positive)])
        if cost.shape[0] and cost[-1] > room:
            return int(np.searchsorted(cost, room, side="right"))
        used, count = (int(cost[-1]) if cost.shape[0] else 0), self.positives
        if not zeros_and_negatives:
            return count
        for t in range(len(self.names)):  # rows of priority 0: table by table, each at its table's cost
            zeros = int(self.rows[t] - self.nonzero_per_table[t])
            d = int(delta[t])
            if zeros == 0:
                continue
            if used + zeros * d <= room:
                used += zeros * d
                count += zeros
                continue
            fit = int((room - used) // d)
            while fit > 0 and used + fit * d > room:
                fit -= 1
            while fit + 1 < zeros and used + (fit + 1) * d <= room:
                fit += 1
            return count + fit
        cost = used + np.cumsum(delta[self.table_of(self.negative)])
        return count + int(np.searchsorted(cost, room, side="right"))
