"""Which tier each embedding row gets: presets, per-table overrides, and a byte budget over row priorities."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import SharkExportError
from .format import Tier, row_bytes, row_stride

PRESETS = ("fp32", "fp16", "int8", "int4", "mixed")
_SINGLE = {"fp32": Tier.FP32, "fp16": Tier.FP16, "int8": Tier.INT8, "int4": Tier.INT4}
# int2 and dropped (the row reads the table's default row: the mean of its dropped rows) may be budget
# rungs, not whole-table presets. Listed from the cheapest to the most precise.
_RUNGS = {"dropped": Tier.DROPPED, "int2": Tier.INT2, "int4": Tier.INT4, "int8": Tier.INT8, "fp16": Tier.FP16,
          "fp32": Tier.FP32}


class QuantConfigError(SharkExportError, ValueError):
    """An invalid quantization configuration (unknown preset, table, impossible budget)."""


@dataclass
class QuantConfig:
    """How to store each table.

    - `preset`: tier of every table without an override: "fp32", "fp16", "int8", "int4", or "mixed"
      (by row priority, ranked over the rows of all mixed tables together: the top `mixed_fractions[0]` of
      rows fp16, the next `mixed_fractions[1]` int8, the rest int4; without calibration data every row
      gets int8).
    - `overrides`: table name (parameter name, e.g. "emb.user.weight") or module path → preset.
    - `target_ratio`: byte budget as a fraction of the fp32 bytes of the tables without an override. Rows
      start at `ladder[0]`; then, in priority order, rows are promoted one rung at a time (all the rows that
      fit to the second rung, then to the third, …) while the budget lasts. The default ladder starts at
      dropped rows (they read the table's default row, the mean of its dropped rows) and int2, so any budget
      down to the row metadata (0.5 B/row) can be met; above the int4 floor it gives what a ladder starting
      at int4 gives. Needs calibration data.
    - `ladder`: the rungs, cheapest first, from "dropped", "int2", "int4", "int8", "fp16", "fp32".
    - `drop_unseen`: rows never seen in the calibration data are dropped: they read as one shared default
      vector (the mean of the dropped rows) and cost no bytes.
    - `clip`: "none" (min/max) or "l2" (per-row clipping search minimizing the L2 error).
    - `output_dtype`: "float32" or "float16" lookup outputs.
    """

    preset: str = "int8"
    overrides: dict[str, str] = field(default_factory=dict)
    target_ratio: float | None = None
    ladder: tuple[str, ...] = ("dropped", "int2", "int4", "int8", "fp16", "fp32")
    mixed_fractions: tuple[float, float] = (0.02, 0.20)
    drop_unseen: bool = False
    clip: str = "none"
    output_dtype: str = "float32"

    def __post_init__(self) -> None:
        for name, preset in [("preset", self.preset), *((f"override {k!r}", v) for k, v in self.overrides.items())]:
            if preset not in PRESETS:
                raise QuantConfigError(f"{name}: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        if self.target_ratio is not None and not 0.0 < self.target_ratio <= 1.0:
            raise QuantConfigError(f"target_ratio must be in (0, 1], got {self.target_ratio}")
        for rung in self.ladder:
            if rung not in _RUNGS:
                raise QuantConfigError(f"ladder rung {rung!r} must be one of {', '.join(_RUNGS)}")
        order = list(_RUNGS)
        if not self.ladder or [order.index(r) for r in self.ladder] != sorted({order.index(r) for r in self.ladder}):
            raise QuantConfigError(f"ladder {tuple(self.ladder)} must list distinct rungs from the cheapest up "
                                   f"(in the order {', '.join(_RUNGS)})")
        hot, warm = self.mixed_fractions
        if not (0 <= hot and 0 <= warm and hot + warm <= 1):
            raise QuantConfigError(f"mixed_fractions {self.mixed_fractions} must be ≥ 0 and sum to ≤ 1")
        if self.clip not in ("none", "l2"):
            raise QuantConfigError(f"clip must be 'none' or 'l2', got {self.clip!r}")
        if self.output_dtype not in ("float32", "float16"):
            raise QuantConfigError(f"output_dtype must be 'float32' or 'float16', got {self.output_dtype!r}")

    @staticmethod
    def of(quant: "str | QuantConfig") -> "QuantConfig":
        if isinstance(quant, QuantConfig):
            return quant
        if isinstance(quant, str):
            return QuantConfig(preset=quant)
        raise QuantConfigError(f"quant must be a preset name or a QuantConfig, got {type(quant).__name__}")

    @property
    def output_onnx_dtype(self) -> int:
        return 1 if self.output_dtype == "float32" else 10

    @property
    def needs_priorities(self) -> bool:
        presets = {self.preset, *self.overrides.values()}
        return "mixed" in presets or self.target_ratio is not None or self.drop_unseen

    def preset_of(self, table: str, module_paths: tuple[str, ...] = ()) -> str | None:
        """The override for the table, or None when it follows the preset (or the budget)."""
        for key in (table, *module_paths):
            if key in self.overrides:
                return self.overrides[key]
        return None

    def check_tables(self, tables: dict) -> None:
        known = set(tables) | {p for t in tables.values() for p in t.module_paths}
        unknown = sorted(set(self.overrides) - known)
        if unknown:
            raise QuantConfigError(f"overrides name unknown table(s) {unknown}; the tables are: {sorted(tables)}")


def _mixed_tiers(priority: np.ndarray, fractions: tuple[float, float]) -> np.ndarray:
    rows = priority.shape[0]
    order = np.argsort(-priority, kind="stable")
    n_hot = int(round(fractions[0] * rows))
    n_warm = int(round(fractions[1] * rows))
    tiers = np.full(rows, Tier.INT4, dtype=np.uint8)
    tiers[order[:n_hot]] = Tier.FP16
    tiers[order[n_hot : n_hot + n_warm]] = Tier.INT8
    return tiers


def _mixed_tiers_by_rank(priorities: dict[str, np.ndarray], fractions: tuple[float, float]) -> dict[str, np.ndarray]:
    """The mixed split over the rows of all the given tables at once: a row's precision follows how often it is
    read, whatever its table (a position table read by every sample keeps its precision; a per-table split
    would put most of it in int4)."""
    names = list(priorities)
    tiers = _mixed_tiers(np.concatenate([priorities[n].astype(np.float64) for n in names]), fractions)
    bounds = np.cumsum([0] + [priorities[n].shape[0] for n in names])
    return {n: tiers[bounds[i] : bounds[i + 1]] for i, n in enumerate(names)}


def promote_rows(priority: np.ndarray, dims: np.ndarray, ladder: list[Tier], tiers: np.ndarray, budget: float) -> np.ndarray:
    """The budget greedy: rows at `ladder[k]` move up to `ladder[k + 1]`, rung by rung, in descending priority
    (ties in row order), while the stored bytes stay within `budget`; a rung that does not fit whole ends
    the climb. `tiers` (one per row, each a rung or DROPPED) is updated in place and returned. `dims`: each
    row's dimension."""
    unique_dims, dim_index = np.unique(dims, return_inverse=True)

    def cost(tier: Tier) -> np.ndarray:
        return np.array([row_stride(tier, int(d)) for d in unique_dims], dtype=np.int64)[dim_index]

    spent = stored_bytes(tiers, dims)
    order = np.argsort(-priority, kind="stable")
    for low, high in zip(ladder, ladder[1:]):
        candidates = order[tiers[order] == low]
        delta = (cost(high) - cost(low))[candidates]
        fits = int(np.searchsorted(np.cumsum(delta), budget - spent, side="right"))
        tiers[candidates[:fits]] = high
        spent += float(delta[:fits].sum())
        if fits < candidates.shape[0]:
            break
    return tiers


def stored_bytes(tiers: np.ndarray, dims: np.ndarray) -> float:
    """Payload bytes of rows stored at `tiers` (one per row) with dimensions `dims` (dropped rows: none)."""
    pairs, counts = np.unique(np.stack([tiers.astype(np.int64), dims.astype(np.int64)]), axis=1, return_counts=True)
    return float(sum(row_stride(Tier(int(t)), int(d)) * int(n) for t, d, n in zip(pairs[0], pairs[1], counts)))


def _budget_tiers(config: QuantConfig, shapes: dict[str, tuple[int, int]], priorities: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Promote rows rung by rung in global priority order while the byte budget lasts."""
    names = list(shapes)
    fp32_bytes = sum(rows * dim * 4 for rows, dim in shapes.values())
    # row_meta of a mixed table (32 bytes per block of 64 rows) and the default row, per FORMAT.md
    metadata = sum(-(-rows // 64) * 32 + dim * 4 for rows, dim in shapes.values())
    budget = config.target_ratio * fp32_bytes - metadata
    priority = np.concatenate([priorities[n].astype(np.float64) for n in names])
    dims = np.concatenate([np.full(shapes[n][0], shapes[n][1], dtype=np.int64) for n in names])
    ladder = [_RUNGS[r] for r in config.ladder]
    tiers = np.full(priority.shape[0], ladder[0], dtype=np.uint8)
    # drop_unseen: rows never seen stay dropped, whatever the budget (they take no part in the climb)
    climbing = priority > 0 if config.drop_unseen else np.ones(priority.shape[0], dtype=bool)
    tiers[~climbing] = Tier.DROPPED
    floor = stored_bytes(tiers, dims)
    if floor > budget:
        raise QuantConfigError(
            f"target_ratio {config.target_ratio} is too small: the lowest rung {config.ladder[0]} alone needs "
            f"{(floor + metadata) / fp32_bytes:.4f} of the fp32 bytes"
        )
    tiers[climbing] = promote_rows(priority[climbing], dims[climbing], ladder, tiers[climbing], budget)
    bounds = np.cumsum([0] + [shapes[n][0] for n in names])
    return {n: tiers[bounds[i] : bounds[i + 1]] for i, n in enumerate(names)}


def assign_tiers(config: QuantConfig, tables: dict, priorities: dict[str, np.ndarray] | None) -> dict[str, np.ndarray | Tier]:
    """Tier per row (uint8 [R]) or one Tier per table, for the given tables (name → fields.Table)."""
    config.check_tables(tables)
    if priorities is None and (config.target_ratio is not None or config.drop_unseen):
        raise QuantConfigError("target_ratio and drop_unseen assign tiers by row priority: give calibration data")
    result: dict[str, np.ndarray | Tier] = {}
    budgeted = {}
    ranked = {}  # mixed-preset tables with priorities: ranked together below
    for name, table in tables.items():
        preset = config.preset_of(name, table.module_paths)
        if preset is None and config.target_ratio is not None:
            budgeted[name] = (table.num_rows, table.dim)
            continue
        preset = preset or config.preset
        # A table no module call reads (F.embedding on a parameter) has no row priorities.
        priority = priorities.get(name) if priorities is not None else None
        if preset == "mixed" and priority is not None:
            ranked[name] = priority
            continue
        if preset == "mixed":
            tiers = Tier.INT8
        else:
            tiers = _SINGLE[preset]
        if config.drop_unseen and priority is not None:
            tiers = np.full(table.num_rows, tiers, dtype=np.uint8) if isinstance(tiers, Tier) else tiers
            tiers[priority <= 0] = Tier.DROPPED
        result[name] = tiers
    if ranked:
        for name, tiers in _mixed_tiers_by_rank(ranked, config.mixed_fractions).items():
            if config.drop_unseen:
                tiers[ranked[name] <= 0] = Tier.DROPPED
            result[name] = tiers
    if budgeted:
        filled = {n: priorities[n] if n in priorities else np.zeros(budgeted[n][0], np.float32) for n in budgeted}
        result.update(_budget_tiers(config, budgeted, filled))
    return result


# --- storage: the cheapest tier that is at least as precise, and uniform vs mixed ------------------------

_BY_PRECISION = (Tier.FP32, Tier.FP16, Tier.INT8, Tier.INT4, Tier.INT2)  # most precise first
_META_BLOCK_BYTES = 32  # one row_meta block (64 rows)


def cheapest_tier(tier: Tier, dim: int) -> Tier:
    """The tier with the fewest row bytes among `tier` and the tiers more precise than it (ties go to the more
    precise one): at D = 1 an int8 row (5 B) becomes fp16 (2 B); at D = 4 int8 (8 B) becomes fp16 (8 B)."""
    tier = Tier(tier)
    if tier is Tier.DROPPED:
        return tier
    candidates = _BY_PRECISION[: _BY_PRECISION.index(tier) + 1]
    return min(candidates, key=lambda t: (row_bytes(t, dim), _BY_PRECISION.index(t)))


def _table_bytes(counts: dict[Tier, int], rows: int, dim: int) -> int:
    stored = sum(n * row_bytes(t, dim) for t, n in counts.items())
    present = [t for t, n in counts.items() if n]
    meta = 0 if len(present) <= 1 else _META_BLOCK_BYTES * -(-rows // 64)
    return stored + meta + (4 * dim if counts.get(Tier.DROPPED) else 0)


def plan_storage(tiers: "np.ndarray | Tier", rows: int, dim: int) -> tuple["np.ndarray | Tier", str]:
    """Tiers as stored, decided from the real row bytes, and a note saying what changed and why.

    1. Every row takes the cheapest tier at least as precise as the one it was given (`cheapest_tier`).
    2. A mixed table becomes uniform at its most precise tier when that costs no more than the mixed
       layout (the block index is 32 bytes per 64 rows, the default row 4·D bytes when rows are dropped):
       tiny tables are never made bigger by per-table overhead.
    """
    notes = []
    if isinstance(tiers, (Tier, int, np.integer)):
        given = Tier(int(tiers))
        stored = cheapest_tier(given, dim)
        if stored is not given:
            notes.append(f"{given}→{stored} ({row_bytes(stored, dim)} B/row ≤ {row_bytes(given, dim)} B/row)")
        return stored, "; ".join(notes)
    codes = np.asarray(tiers, dtype=np.uint8).copy()
    lut = np.array([cheapest_tier(Tier(c), dim) if c <= 5 else c for c in range(8)], dtype=np.uint8)
    for code in np.unique(codes):
        if lut[code] != code:
            notes.append(f"{Tier(int(code))}→{Tier(int(lut[code]))} ({row_bytes(Tier(int(lut[code])), dim)} B/row ≤ "
                         f"{row_bytes(Tier(int(code)), dim)} B/row)")
    codes = lut[codes]
    present = np.unique(codes)
    if present.shape[0] == 1:
        return Tier(int(present[0])), "; ".join(notes)
    counts = {Tier(int(t)): int(n) for t, n in zip(*np.unique(codes, return_counts=True))}
    stored_tiers = [t for t in _BY_PRECISION if counts.get(t)]
    if stored_tiers:
        top = stored_tiers[0]
        mixed_bytes = _table_bytes(counts, rows, dim)
        uniform_bytes = rows * row_bytes(top, dim)
        if uniform_bytes <= mixed_bytes:
            notes.append(f"uniform {top}: {uniform_bytes} B ≤ {mixed_bytes} B mixed")
            return top, "; ".join(notes)
    return codes, "; ".join(notes)
